"""The equal training budget every candidate of a lab study gets, and one trial under it.

A trial is :func:`effnet.train.run_trial` (a function from a spec and a budget to
metrics); this module fixes what must be the same for every candidate (data, recipe, epochs,
batch, seed, the base's training size) and turns the result into the numbers a study records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import effnet.data
import effnet.profile
import effnet.train
from effnet.data.progressive import Range
from effnet.lab.queue import prune_check
from effnet.registry import get_spec
from effnet.specs.base import MIN_INPUT_SIZE, ModelSpec
from effnet.train.config import TrainConfig, resolve_config

# effnet.data, effnet.profile and effnet.train load their torch-backed names on first use
# (PEP 562): the CLI parser imports this module, which must not load torch.

#: Trial defaults that differ from the recipe's, and why: an EMA of a few hundred steps is
#: still mostly the initial weights, so a short trial scored on it would rank every candidate
#: near chance.
TRIAL_DEFAULTS: dict[str, Any] = {"ema": False}
#: Trials are evaluated at the size they train at. A spec whose evaluation size is larger than
#: its training size (EfficientNetV2: 192 -> 224 for V2-B0) scores a 64 px trial at 75 px; that
#: train/test discrepancy pays off only after long training with scale augmentation (Touvron
#: et al. 2019). Measured on digits, V2-B0 at 64 px, 4 epochs: 62% evaluated at 75 px, 98.9% at
#: 64 px; the search's base would otherwise score like a weak candidate.
EVAL_AT_TRIAL_SIZE = True
#: Trials start every residual branch at zero (Goyal et al. 2017, section 5.1; see
#: :func:`effnet.model.zero_init_last`). Measured on digits, 3 epochs at 32 px: B0 at half depth
#: scaled to 4x FLOPs by depth reached 20% with the official initialisation and 94% with this
#: one, the unscaled base 91% either way; so without it a short trial ranks depth scaling by
#: how fast a deep stack of fresh branches stops adding noise, not by what depth buys.
TRIAL_ZERO_INIT = True
#: The base's trial size on digits. Its 8x8 glyphs carry no more detail at 64 px than at 32,
#: but at 32 px EfficientNet's last stages (stride 32) run on 1x1 maps, where depth or width
#: added there has nothing spatial to work on while resolution scaling restores the extent:
#: the proxy itself would favour resolution. At 64 px the stride-32 stage sees 2x2.
DIGITS_TRIAL_SIZE = 64
#: Below this many epochs a trial's curve cannot show whether it stopped improving
#: (:func:`effnet.lab.engine.convergence` compares the last epoch with the best before it, and
#: the first epoch is mostly warm-up: on digits 11-48% where the third reaches 97-99%).
MIN_TRIAL_EPOCHS = 3
#: Smallest stride-32 feature map (px) at which a trial's geometry is not decided by the proxy.
MIN_LAST_MAP = 2
#: Fewest optimiser steps per trial for a ranking worth reading. Measured on digits (B0, batch
#: 32): 16 steps stayed at chance, 48 steps reached 58-71%, 180 steps (4 epochs) 98-99%.
MIN_TRIAL_STEPS = 100


def base_spec(base: str | ModelSpec) -> ModelSpec:
    """A registered name, a spec file (YAML/JSON) or a spec."""
    if isinstance(base, ModelSpec):
        return base
    if Path(base).suffix in (".yaml", ".yml", ".json"):
        return ModelSpec.load(base)
    return get_spec(base)


def spec_id(spec: ModelSpec) -> str:
    """The base's name and a digest of its architecture: a study records which base it
    searched, so that resuming it with another base (same name, other file) is refused."""
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{spec.name}@{digest}"


@dataclass(frozen=True)
class TrialBudget:
    """What every candidate trains with. ``image_size`` is the base's training size; a
    candidate whose resolution grows by a factor trains at ``image_size * factor``."""

    spec: ModelSpec
    data: str
    epochs: int
    image_size: int
    recipe: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    zero_init_last: bool = TRIAL_ZERO_INIT

    @property
    def base_id(self) -> str:
        return spec_id(self.spec)

    @property
    def settings(self) -> dict[str, Any]:
        """The fields a resumed study must share (JSON-able)."""
        return {"data": self.data, "epochs": self.epochs, "image_size": self.image_size,
                "recipe": self.recipe, "overrides": json.loads(json.dumps(self.overrides, default=str)),
                "zero_init_last": self.zero_init_last}

    def protocol(self) -> dict[str, Any]:
        """What every trial was trained with, as results.json records it: the data set, the
        base's trial size, the recipe as resolved, epochs, seed and the trial-only changes."""
        cfg = self.config()
        return {"data": self.data, "image_size": self.image_size, "recipe": cfg.recipe, "epochs": self.epochs,
                "seed": cfg.seed, "batch_size": cfg.batch_size, "train_subset": cfg.train_subset,
                "ema": cfg.ema, "zero_init_last": self.zero_init_last,
                "eval_size": cfg.eval_size or ("trial size" if EVAL_AT_TRIAL_SIZE and cfg.progressive is None
                                               else "the spec's train/eval ratio"),
                "progressive": cfg.progressive is not None, "classes": self.classes(),
                "val_images": len(self._splits()[1]),
                "overrides": json.loads(json.dumps(self.overrides, default=str))}

    def config(self) -> Any:
        """The recipe with this budget's overrides, as every trial resolves it."""
        return resolve_config(self.recipe, data=self.data, **{**TRIAL_DEFAULTS, **self.overrides})

    def longer(self, epochs: int) -> TrialBudget:
        """The same budget with more epochs (the validation of a proxy ranking)."""
        return dataclasses.replace(self, epochs=epochs)

    def scaled_size(self, factor: float) -> int:
        return max(MIN_INPUT_SIZE, int(round(self.image_size * factor)))

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "data": self.data, "epochs": self.epochs,
                "image_size": self.image_size, "recipe": self.recipe, "overrides": dict(self.overrides),
                "zero_init_last": self.zero_init_last}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialBudget:
        return cls(ModelSpec.from_dict(d["spec"]), d["data"], d["epochs"], d["image_size"], d["recipe"],
                   dict(d["overrides"]), bool(d.get("zero_init_last", TRIAL_ZERO_INIT)))

    def warnings(self) -> list[str]:
        """Why this budget may be too small for a fair comparison (empty when none applies)."""
        out = []
        if self.epochs < MIN_TRIAL_EPOCHS:
            out.append(f"{self.epochs} epoch(s) per trial: too few to tell a converged candidate from one still "
                       f"improving (give --epochs >= {MIN_TRIAL_EPOCHS}); rankings at this budget are provisional")
        if self.image_size / 32 < MIN_LAST_MAP:
            out.append(f"trial size {self.image_size} px: the last stages run on {self.image_size // 32 or 1}x"
                       f"{self.image_size // 32 or 1} maps, so depth and width added there see no spatial extent "
                       f"and the proxy favours resolution (give --image-size >= {32 * MIN_LAST_MAP})")
        steps = self.steps()
        if steps < MIN_TRIAL_STEPS:
            out.append(f"{steps} optimiser steps per trial (training images / batch x epochs): too few for a fair "
                       f"ranking (aim for >= {MIN_TRIAL_STEPS}: more epochs, more data or a smaller --batch-size)")
        return out

    def _splits(self) -> Any:
        cfg = self.config()
        return effnet.data.load_splits(self.data, cfg.val_fraction, cfg.seed)

    def _split(self) -> Any:
        return self._splits()[0]

    def steps(self) -> int:
        """Optimiser steps one trial takes: batches per epoch (the training split, or its
        subset) times epochs."""
        cfg = self.config()
        train = self._split()
        n = len(train) if cfg.train_subset is None else min(cfg.train_subset, len(train))
        return math.ceil(n / cfg.batch_size) * self.epochs

    def classes(self) -> int:
        """How many classes the data has (chance top-1 is 100 / classes)."""
        return len(self._split().class_names)

    def train(self, spec: ModelSpec, image_size: int, trial: Any = None) -> tuple[float, dict[str, Any]]:
        """Train ``spec`` at ``image_size`` under this budget; (final top-1, the attributes a
        study records). With an Optuna ``trial``, each epoch's top-1 is reported to the study's
        pruner, which may stop the trial (``optuna.TrialPruned``, carrying the same
        attributes for the epochs trained)."""
        import time

        import torch

        from effnet.model import build  # loads torch: the CLI parser imports this module

        started = time.time()
        # Parameters of the architecture with its own (1000-class) head, as the papers and the
        # grid's FLOPs count them; counted before training, so a pruned trial records them too.
        with torch.device("meta"):
            params = effnet.profile.count_params(build(spec))
        cfg = self.config()
        overrides = dict(self.overrides)
        if cfg.progressive is not None:
            # Progressive learning sets the image size per stage and ignores image_size: scale its
            # size range instead, so that a candidate's resolution still acts.
            overrides["progressive"] = scaled_progressive(cfg.progressive, image_size / self.image_size)
        attrs: dict[str, Any] = {"image_size": image_size,
                                 "flops_trained": effnet.profile.count_flops(spec, image_size),
                                 "flops_nominal": effnet.profile.count_flops(spec, spec.resolution),
                                 "epochs_trained": 0, "params": params, "curve": []}
        speeds: list[float] = []
        batch = cfg.batch_size

        def on_epoch(row: dict[str, Any]) -> None:
            speeds.append(float(row.get("img_per_s") or 0.0))
            attrs["curve"] = [*attrs["curve"], round(float(row["val_top1"]), 4)]
            attrs.update(epochs_trained=int(row["epoch"]), top1=float(row["val_top1"]),
                         seconds=time.time() - started, step_ms=_step_ms(batch, speeds))
            if trial is not None:
                prune_check(trial, int(row["epoch"]), float(row["val_top1"]), attrs)

        if self.zero_init_last:
            from effnet.model import ZERO_INIT_LAST  # loads torch: the CLI parser imports this module

            spec = spec.replace(extra={**spec.extra, ZERO_INIT_LAST: True})
        if EVAL_AT_TRIAL_SIZE and "eval_size" not in overrides and cfg.progressive is None:
            overrides["eval_size"] = image_size
        r = effnet.train.run_trial(spec, data=self.data, epochs=self.epochs, image_size=image_size, config=self.recipe,
                      on_epoch=on_epoch, **{**TRIAL_DEFAULTS, **overrides})
        attrs.update(top1=r.final_top1, best_top1=r.best_top1, seconds=r.seconds,
                     final_loss=r.final_loss)
        return r.final_top1, attrs


def scaled_progressive(prog: Any, factor: float) -> Any:
    """Progressive ranges with the image sizes multiplied by ``factor`` (a grid point's
    gamma^phi): the stages keep their number, regularisation and divisor."""
    if factor == 1:
        return prog
    size = Range(max(MIN_INPUT_SIZE, round(prog.image_size.start * factor)),
                 max(MIN_INPUT_SIZE, round(prog.image_size.end * factor)))
    return dataclasses.replace(prog, image_size=size)


def check_data(data: str) -> None:
    """``digits`` or an existing folder; refused before any trial starts (every trial would
    fail the same way)."""
    if data != "digits" and not Path(data).is_dir():
        raise FileNotFoundError(f"data {data!r}: no such folder; give 'digits' or an image folder "
                                "(DIR/<class>/*.jpg, or DIR/train and DIR/val)")


def _step_ms(batch: int, speeds: list[float]) -> float:
    """Training step time from the epochs' measured throughput (median over epochs)."""
    good = [s for s in speeds if s > 0]
    return 1000.0 * batch / statistics.median(good) if good else math.nan


def trial_budget(spec: ModelSpec, *, data: str, epochs: int, image_size: int | None, recipe: str | None,
                 overrides: dict[str, Any], zero_init_last: bool = TRIAL_ZERO_INIT) -> TrialBudget:
    """The budget, with the base's training size defaulted: :data:`DIGITS_TRIAL_SIZE` for
    digits, else the base's own training resolution. The data, the recipe and the options are
    checked here, before any trial: a bad one would fail every trial alike."""
    check_data(data)
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    if image_size is None:
        image_size = DIGITS_TRIAL_SIZE if data == "digits" else (spec.train_resolution or spec.resolution)
    if image_size < MIN_INPUT_SIZE:
        raise ValueError(f"image_size: expected >= {MIN_INPUT_SIZE} px (five stride-2 reductions), got {image_size}")
    unknown = sorted(set(overrides) - {f for f in TrainConfig.__dataclass_fields__})
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}: expected TrainConfig fields")
    budget = TrialBudget(spec, data, epochs, image_size, recipe, {k: v for k, v in overrides.items() if v is not None},
                         zero_init_last)
    budget.config()  # an unknown recipe or a bad option value is refused now, not by every trial
    return budget
