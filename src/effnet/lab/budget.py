"""The equal training budget every candidate of a lab study gets, and one trial under it.

A trial is :func:`effnet.train.run_trial` (STYLE 16: a function from a spec and a budget to
metrics); this module fixes what must be the same for every candidate (data, recipe, epochs,
batch, seed, the base's training size) and turns the result into the numbers a study records.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.registry import get_spec
from effnet.specs.base import MIN_INPUT_SIZE, ModelSpec

#: Trial defaults that differ from the recipe's, and why: an EMA of a few hundred steps is
#: still mostly the initial weights, so a short trial scored on it would rank every candidate
#: near chance.
TRIAL_DEFAULTS: dict[str, Any] = {"ema": False}


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

    @property
    def base_id(self) -> str:
        return spec_id(self.spec)

    @property
    def settings(self) -> dict[str, Any]:
        """The fields a resumed study must share (JSON-able)."""
        return {"data": self.data, "epochs": self.epochs, "image_size": self.image_size,
                "recipe": self.recipe, "overrides": json.loads(json.dumps(self.overrides, default=str))}

    def scaled_size(self, factor: float) -> int:
        return max(MIN_INPUT_SIZE, int(round(self.image_size * factor)))

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "data": self.data, "epochs": self.epochs,
                "image_size": self.image_size, "recipe": self.recipe, "overrides": dict(self.overrides)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialBudget:
        return cls(ModelSpec.from_dict(d["spec"]), d["data"], d["epochs"], d["image_size"], d["recipe"],
                   dict(d["overrides"]))

    def train(self, spec: ModelSpec, image_size: int, trial: Any = None) -> tuple[float, dict[str, Any]]:
        """Train ``spec`` at ``image_size`` under this budget; (final top-1, the attributes a
        study records). With an Optuna ``trial``, each epoch's top-1 is reported to the study's
        pruner, which may stop the trial (``optuna.TrialPruned``, carrying the same
        attributes for the epochs trained)."""
        import time

        import torch

        from effnet.model import build
        from effnet.profile import count_flops
        from effnet.train import run_trial

        started = time.time()
        # Parameters of the architecture with its own (1000-class) head, as the papers and the
        # grid's FLOPs count them; counted before training, so a pruned trial records them too.
        with torch.device("meta"):
            params = sum(p.numel() for p in build(spec).parameters())
        attrs: dict[str, Any] = {"image_size": image_size, "flops_trained": count_flops(spec, image_size),
                                 "epochs_trained": 0, "params": params}
        speeds: list[float] = []
        batch = self.overrides.get("batch_size") or _recipe_batch(self.recipe, self.data)

        def on_epoch(row: dict[str, Any]) -> None:
            speeds.append(float(row.get("img_per_s") or 0.0))
            attrs.update(epochs_trained=int(row["epoch"]), top1=float(row["val_top1"]),
                         seconds=time.time() - started, step_ms=_step_ms(batch, speeds))
            if trial is not None:
                from effnet.lab.store import prune_check

                prune_check(trial, int(row["epoch"]), float(row["val_top1"]), attrs)

        r = run_trial(spec, data=self.data, epochs=self.epochs, image_size=image_size, config=self.recipe,
                      on_epoch=on_epoch, **{**TRIAL_DEFAULTS, **self.overrides})
        attrs.update(top1=r.final_top1, best_top1=r.best_top1, seconds=r.seconds,
                     final_loss=r.final_loss)
        return r.final_top1, attrs


def _recipe_batch(recipe: str | None, data: str) -> int:
    from effnet.train.config import resolve_config

    return resolve_config(recipe, data=data).batch_size


def _step_ms(batch: int, speeds: list[float]) -> float:
    """Training step time from the epochs' measured throughput (median over epochs)."""
    good = [s for s in speeds if s > 0]
    return 1000.0 * batch / statistics.median(good) if good else math.nan


def trial_budget(spec: ModelSpec, *, data: str, epochs: int, image_size: int | None, recipe: str | None,
                 overrides: dict[str, Any]) -> TrialBudget:
    """The budget, with the base's training size defaulted: 32 px for digits (its 8x8 glyphs
    upsampled: larger sizes only cost time), else the base's own training resolution."""
    if image_size is None:
        image_size = 32 if data == "digits" else (spec.train_resolution or spec.resolution)
    if image_size < MIN_INPUT_SIZE:
        raise ValueError(f"image_size: expected >= {MIN_INPUT_SIZE} px (five stride-2 reductions), got {image_size}")
    from effnet.train.config import TrainConfig

    unknown = sorted(set(overrides) - {f for f in TrainConfig.__dataclass_fields__})
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}: expected TrainConfig fields")
    return TrialBudget(spec, data, epochs, image_size, recipe, {k: v for k, v in overrides.items() if v is not None})
