"""The pipeline's first step, the training configuration: one typed dataclass, and
:func:`resolve`, the one function that makes a config of a recipe, the data, the options given
and (for a resumed run) the run's recorded config.

A recipe (:data:`~effnet.train.recipes.RECIPES`) is a dict of field overrides; ``effnet train
--recipe NAME`` (or a YAML file with the same fields) picks one, and command-line options override
it. The resolved config is written to the run folder as ``config.yaml``.

Each field carries its help text (and its allowed values, where they are a fixed set) in its
metadata: ``effnet train`` derives one option per field from them (effnet.commands.train), so the list
of training options exists once, here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range
from effnet.specs.base import check_fields
from effnet.train.recipes import FINETUNE_FROZEN_LR, PAPER_V1, RECIPES, data_facts, finetune_sizing

log = logging.getLogger(__name__)


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A :class:`TrainConfig` field with its help text (and allowed values, if a fixed set),
    so that the command line (effnet.commands.train), the validation and the reader share one list."""
    metadata = {"help": help, **({"choices": choices} if choices else {})}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a run needs. The defaults are the ``digits`` recipe, what ``effnet train`` with
    no options and :func:`resolve_config` with no arguments train (one source: ``TrainConfig()``
    equals ``resolve_config()``). The EfficientNet (V1) paper recipe is :data:`PAPER_V1`
    (``--recipe paper_v1``, and the base of the other recipes and of recipe files).

    Each field's help text is the ``effnet train --<field-name>`` help (effnet.commands.train derives
    the options from these fields)."""

    # --- data
    data: str = option("digits", "'digits', DIR/train + DIR/val, or DIR/<class>/* split by seed")
    val_fraction: float = option(0.2, "share of DIR/<class>/* held out for validation")
    train_subset: int | None = option(None, "train on the first N training images only (smoke tests)")
    workers: int | None = option(None, "data loader processes (default: 0 for digits, else min(cpus, 8))")
    # --- model
    model: str = option("efficientnet_b0", "registered model name (effnet list)")
    spec: str | None = option(None, "spec file (YAML/JSON) instead of --model")
    # Extra multipliers applied to the spec (effnet.scaling.scale), on top of the model's own.
    width: float = option(0.5, "extra width multiplier on the model")
    depth: float = option(0.5, "extra depth multiplier on the model")
    weights: str | None = option(None, "initial weights (fine-tuning; a new head if the class count differs)")
    freeze_backbone: bool = option(False, "train only the classifier")
    dropout: float | None = option(0.1, "dropout before the classifier (default: the spec's)")
    drop_path_rate: float | None = option(0.1, "stochastic depth rate of the last block (default: the spec's)")
    bn_momentum: float | None = option(0.1, "BatchNorm momentum, PyTorch convention (default: the spec's)")
    # --- input
    image_size: int | None = option(32, "training image size (default: the spec's train resolution)")
    # None: the spec's evaluation resolution scaled by final training size / spec train size
    # (data.progressive.eval_resolution), so V2-S trained at 300 px is scored at 384 px as published
    # (docs/paper.md section 7), not at its training size.
    eval_size: int | None = option(
        None, "evaluation image size (default: the spec's evaluation resolution, scaled with the final "
              "training size)")
    crop_pct: float = option(1.0, "evaluation centre crop: resize to size / crop_pct, crop size")
    interpolation: str = option("bilinear", "resampling filter", choices=("bicubic", "bilinear", "nearest"))
    # None: the initial weights' recorded input normalisation (a Keras or TF-ported file may
    # expect other scaling than ImageNet's), else ImageNet mean/std on pixels / 255.
    mean: tuple[float, ...] | None = option(None, "input mean per channel, on pixels / 255 (default: the "
                                                  "weights' recorded normalisation, else ImageNet's)")
    std: tuple[float, ...] | None = option(None, "input std per channel (default: as --mean)")
    # --- augmentation
    crop_scale: tuple[float, float] = option((0.8, 1.0), "random resized crop area range (1 1: no crop)")
    hflip: bool = option(False, "random horizontal flips")
    autoaugment: bool = option(False, "AutoAugment, ImageNet policy (V1)")
    randaugment_magnitude: float = option(0.0, "RandAugment magnitude 0-30 (0: off; V2 uses 15)")
    mixup_alpha: float = option(0.0, "mixup Beta(alpha, alpha) (0: off)")
    cutmix_alpha: float = option(0.0, "CutMix Beta(alpha, alpha) (0: off)")
    # A ProgressiveSpec, or a word resolved by resolve_progressive: a V2_PRESETS name, "model"
    # (the preset of ``model``), "on" (the recipe's ranges, else ProgressiveSpec()'s) or "off".
    progressive: ProgressiveSpec | str | None = option(
        None, "V2 progressive learning (paper Table 6): 'model' (the preset of --model), a preset "
              f"({', '.join(V2_PRESETS)}), 'on' (the recipe's or default ranges) or 'off'")
    # --- optimisation
    epochs: int = option(20, "training epochs")
    batch_size: int = option(32, "images per process and step (under torchrun the global batch is this "
                                  "x world size)")
    accum_steps: int = option(1, "gradient accumulation micro-batches per step")
    optimizer: str = option("adamw", "optimiser", choices=("rmsprop_tf", "sgd", "adamw"))
    lr_per_256: float = option(0.032, "learning rate per 256 images (scaled linearly with the batch size)")
    # Linear scaling (Goyal et al. 2017) keeps the lr per image fixed, which at a fine-tuning
    # batch of 8-32 leaves a few hundredths of the per-256 lr: too little to move a new head in
    # a few hundred steps. Below this batch the lr is not scaled down.
    lr_batch_floor: int = option(0, "no linear lr scaling below this global batch: --lr is then the peak lr "
                                    "for any batch up to it (0: scale at every batch)")
    momentum: float = option(0.9, "optimiser momentum")
    rmsprop_rho: float = option(0.9, "RMSProp decay of the mean square")
    rmsprop_eps: float = option(1e-3, "RMSProp epsilon (inside the square root, TF form)")
    weight_decay: float = option(0.01, "weight decay (not on BatchNorm and biases)")
    schedule: str = option("cosine", "learning-rate schedule after the warm-up",
                           choices=("exponential", "cosine", "constant"))
    warmup_epochs: float = option(1.0, "linear learning-rate warm-up epochs")
    decay_rate: float = option(0.97, "exponential schedule: factor per --decay-epochs")
    decay_epochs: float = option(2.4, "exponential schedule: epochs per decay")
    min_lr: float = option(0.0, "learning-rate floor")
    label_smoothing: float = option(0.1, "label smoothing")
    patience: int = option(0, "early stopping: end the run once validation top-1 has not improved for N "
                               "epochs (0: train every epoch)")
    ema: bool = option(True, "evaluate and save an exponential moving average of the weights")
    ema_decay: float = option(0.998, "EMA decay per optimiser step")
    # "average" is the official code's: its ExponentialMovingAverage runs over utils.get_ema_vars,
    # the trainable variables plus BN moving_mean/moving_variance (tensorflow/tpu efficientnet).
    ema_buffers: str = option("average", "BatchNorm running statistics in the EMA: averaged like the "
                                         "weights (official code) or copied from the live model",
                              choices=("average", "copy"))
    grad_clip: float | None = option(None, "clip the gradient norm to this (default: no clipping)")
    # --- execution
    device: str = option("auto", "cpu, cuda, cuda:1 ... (auto: CUDA if available)")
    amp: str = option("auto", "mixed precision (auto: bf16 on CUDA if supported, else off)",
                      choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = option(True, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model")
    # Activation checkpointing (ConvNet.set_grad_checkpointing); the memory-saving BN+SiLU
    # and SE ops (effnet.layers.activations) are on in every run, they cost no time.
    memory_saving: bool = option(False, "recompute each block's activations in the backward pass instead of "
                                        "keeping them: much less training memory for about one extra forward "
                                        "pass per step")
    threads: int | None = option(None, "torch CPU threads (default: the idle cores)")
    # effnet.hostmem: on the CPU, a large freed tensor goes back to the OS and the next one is
    # faulted in afresh; keeping them for reuse makes steps faster at a higher peak.
    reuse_host_memory: bool = option(False, "CPU: keep freed memory in the process heap for reuse (glibc): "
                                            "much faster steps at a higher peak memory (docs/training.md)")
    seed: int = option(0, "random seed (data order, initialisation, augmentation)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (reproducible, slower)")
    # --- distributed (torchrun; batch_size is per process, the global batch is x world size)
    sync_bn: bool = option(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)")
    dist_timeout_minutes: float = option(30.0, "under torchrun: fail a collective that waits longer than this")
    # --- run folder
    out: str | None = option(None, "run folder (default: runs/<timestamp>)")
    overwrite: bool = option(False, "train into an existing run folder, replacing it (else use --resume)")
    save_every_steps: int = option(0, "also checkpoint every N optimiser steps (0: at epoch ends only)")
    log_steps: bool = option(False, "write steps.csv: the loss of every optimiser step")
    recipe: str = option("digits", "a named recipe (RECIPES) or a YAML file of these fields (default: "
                                     "finetune with --weights/--pretrained, digits for digits data, else "
                                     "paper_v1)")
    extra: dict[str, Any] = option(help="free-form values recorded with the run (KEY=VALUE)",
                                   default_factory=dict)

    def __post_init__(self) -> None:
        self.progressive = progressive_ranges(self.progressive)
        self.mean = None if self.mean is None else tuple(self.mean)
        self.std = None if self.std is None else tuple(self.std)
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        checks = [
            (self.epochs >= 1, f"epochs: expected >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size: expected >= 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps: expected >= 1, got {self.accum_steps}"),
            (self.lr_batch_floor >= 0, f"lr_batch_floor: expected >= 0, got {self.lr_batch_floor}"),
            (self.patience >= 0, f"patience: expected >= 0, got {self.patience}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing: expected [0, 1), got {self.label_smoothing}"),
            (0 < self.crop_pct <= 1, f"crop_pct: expected (0, 1], got {self.crop_pct}"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes: expected > 0, got {self.dist_timeout_minutes}"),
        ]
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed:
                value = getattr(self, f.name)
                checks.append((value in allowed, f"{f.name}: expected one of {', '.join(allowed)}, got {value!r}"))
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"training config: {msg}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("mean", "std", "crop_scale"):
            d[k] = None if d[k] is None else list(d[k])
        if self.progressive is not None:
            d["progressive"] = {k: (dataclasses.asdict(v) if isinstance(v, Range) else v)
                                for k, v in self.progressive.__dict__.items()}
        return d

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_fields(cls, d, "training config")
        return cls(**d)


def progressive_ranges(value: ProgressiveSpec | dict | None) -> ProgressiveSpec | None:
    """Progressive ranges as a config holds them: a :class:`ProgressiveSpec`, its dict (as
    ``config.yaml`` records it) or ``None``. A word is refused: :func:`resolve` resolves words."""
    if value is None or isinstance(value, ProgressiveSpec):
        return value
    if isinstance(value, dict):
        p = dict(value)
        for k in ("image_size", "dropout", "randaugment", "mixup"):
            if isinstance(p.get(k), (dict, list, tuple)):
                v = p[k]
                p[k] = Range(**v) if isinstance(v, dict) else Range(*v)
        return ProgressiveSpec(**p)
    raise ValueError(f"progressive: expected ranges (a ProgressiveSpec or its dict) or None, got {value!r}; a word "
                     f"('model', 'on', 'off' or a preset) is resolved by resolve_config(progressive=...)")


def resolve_progressive(value: ProgressiveSpec | dict | str | None, model: str,
                        spec: str | None = None) -> ProgressiveSpec | None:
    """The progressive ranges ``value`` stands for (:func:`resolve` calls it once the model is
    final).

    ``value`` is ranges (a :class:`ProgressiveSpec` or its dict, as in ``config.yaml``), ``None``
    or ``"off"`` (no progressive learning), ``"on"`` (the default ranges, V2-S's), a
    :data:`V2_PRESETS` name, or ``"model"``: the preset of the model being trained (V2 Table 6 has
    ranges for S, M and L only; any other model is refused with what to do instead).
    """
    if not isinstance(value, str):
        return progressive_ranges(value)
    if value == "off":
        return None
    if value == "on":
        return ProgressiveSpec()
    if value in V2_PRESETS:
        return V2_PRESETS[value]
    presets = ", ".join(V2_PRESETS)
    if value == "model":
        if spec is not None:
            raise ValueError(
                f"progressive learning: the recipe takes its ranges from the model's preset (V2 Table 6), "
                f"but a spec file ({spec}) is trained, not a named model; choose the ranges with "
                f"--progressive on (default ranges) or a preset ({presets}), or turn it off with --progressive off")
        if model not in V2_PRESETS:
            raise ValueError(
                f"progressive learning: the recipe takes its ranges from the model's preset (V2 Table 6), "
                f"but there is none for {model!r} (presets exist for {presets}); choose the ranges with "
                f"--progressive on (default ranges) or a preset name, or turn it off with --progressive off")
        return V2_PRESETS[model]
    raise ValueError(f"progressive: expected 'model', 'on', 'off', one of {presets} or ranges, got {value!r}")


@dataclass(frozen=True)
class Resolved:
    """A resolved config, where each field's value came from (``flag``, ``recipe NAME``,
    ``data: why``, ``weights``, ``default``), and the one-line summary of a data-sized recipe."""

    cfg: TrainConfig
    sources: dict[str, str]
    summary: str | None = None


def resolve(recipe: str | None = None, data: str | None = None, *, base: TrainConfig | None = None,
            resumed: dict[str, Any] | None = None, stages: int | None = None, sizes: tuple[int, int] | None = None,
            **overrides: Any) -> Resolved:
    """The one place a training config is resolved, with the origin of every value (``effnet
    train --dry-run`` prints them).

    A recipe (name or YAML file; default ``finetune`` when ``weights`` are given, ``digits`` for
    the digits data, else ``paper_v1``) with ``overrides`` (``None`` values ignored) applied on
    top. The ``finetune`` recipe sizes its batch, epochs, image size and loader processes from
    the data (:func:`~effnet.train.recipes.finetune_sizing`). With ``weights``, ``model`` records
    the weights' own architecture.

    ``progressive`` words are resolved after the overrides are applied: ``"model"`` follows the
    final ``model``, and ``"on"`` keeps the recipe's own ranges if it has some (else the default
    ranges). An override that turns progressive learning on also turns AutoAugment off unless
    ``autoaugment`` is given too: V2 grows RandAugment with the image size (V2 section 4.2,
    Table 6), in place of V1's AutoAugment. ``stages``/``sizes`` then change the number of
    stages and the image-size range of the resolved ranges.

    ``base``: a resolved config to change (a trial's candidate and budget): ``overrides`` replace
    its fields, ``None`` values included (``image_size=None``: the spec's own size).

    ``resumed``: a run's resume state (``state.pt``): its recorded config is used as it is, with
    at most the :data:`RESUME_CHANGES` among ``overrides``.
    """
    if data is not None:
        overrides["data"] = data
    if base is not None:
        check_fields(TrainConfig, overrides, "training config")
        return Resolved(_build({**_fields(base), **overrides}, base.recipe), {})
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if resumed is not None:
        return Resolved(_resumed(resumed, overrides), {})
    recipe, base, sources = _recipe(recipe, overrides)
    summary = None
    if recipe == "finetune":
        base, sized, summary = _size_finetune(base, overrides)
        sources.update(sized)
    merged = {**base, **overrides}
    sources.update({k: "flag" for k in overrides})
    if merged.get("weights") and "model" not in overrides:
        # The weights decide the architecture: record the model that is trained, not the recipe's.
        from effnet.weights.format import read_spec

        merged["model"], sources["model"] = read_spec(merged["weights"])[0].name, "weights"
    if overrides.get("progressive") == "on":
        # "on": the recipe's ranges (its model preset, if it follows the model and one exists),
        # else the default ones.
        own, model = base.get("progressive"), merged.get("model", TrainConfig.model)
        if own == "model":
            merged["progressive"] = "model" if model in V2_PRESETS and not merged.get("spec") else "on"
        elif own not in (None, "off"):
            merged["progressive"] = own
    if overrides.get("progressive") not in (None, "off") and "autoaugment" not in overrides:
        merged["autoaugment"] = False
        sources["autoaugment"] = "flag (--progressive replaces AutoAugment)"
    cfg = _build(merged, recipe)
    if stages is not None or sizes is not None:
        if cfg.progressive is None:
            raise ValueError("--stages/--sizes need progressive learning: add --progressive on (or a preset)")
        changes = {"stages": stages} if stages is not None else {}
        if sizes is not None:
            changes["image_size"] = Range(*sizes)
        cfg.progressive = dataclasses.replace(cfg.progressive, **changes)
        sources["progressive"] = "flag (--stages/--sizes)"
    return Resolved(cfg, {f.name: sources.get(f.name, "default") for f in dataclasses.fields(cfg)}, summary)


def _recipe(recipe: str | None, overrides: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The recipe's name, its field values and their sources (a named recipe or a YAML file)."""
    chosen = "flag"
    if recipe is None:
        recipe = ("finetune" if overrides.get("weights") else
                  "digits" if overrides.get("data", "digits") == "digits" else "paper_v1")
        chosen = ("default with --weights" if recipe == "finetune" else
                  "default for digits" if recipe == "digits" else "default for an image folder")
    if recipe in RECIPES:
        base = {**RECIPES[recipe], "recipe": recipe}
    elif Path(recipe).suffix in (".yaml", ".yml") and Path(recipe).is_file():
        import yaml

        try:
            with open(recipe, encoding="utf-8") as stream:  # a stream: the parser's marks name the file
                own = yaml.safe_load(stream) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            # The parser's own text spans lines: one line, saying which file.
            raise ValueError(f"recipe file {recipe}: not a readable YAML file ({type(e).__name__}: "
                             f"{' '.join(str(e).split())})") from e
        if not isinstance(own, dict):
            raise ValueError(f"recipe file {recipe}: expected a mapping of training fields (epochs: 30 ...), "
                             f"got a {type(own).__name__}")
        # A recipe file states changes to the paper recipe, not to the digits defaults.
        base = {**PAPER_V1, **own}
        base.setdefault("recipe", str(recipe))
    else:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {sorted(RECIPES)} or a .yaml file")
    return recipe, base, {k: f"recipe {recipe}" for k in base} | {"recipe": chosen}


def _fields(cfg: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _build(merged: dict[str, Any], recipe: str) -> TrainConfig:
    """The config of the merged values, its progressive word resolved against the final model;
    a recipe file's value of the wrong type is named."""
    merged = {**merged, "progressive": resolve_progressive(merged.get("progressive"),
                                                           merged.get("model", TrainConfig.model), merged.get("spec"))}
    try:
        return TrainConfig.from_dict(merged)
    except TypeError as e:  # a value of the wrong type in a recipe file ("epochs: ten")
        if recipe in RECIPES:
            raise
        types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
        # Name the field: a word where a number belongs is the common case ("epochs: ten").
        named = [f"{k}: {v!r}" for k, v in merged.items() if isinstance(v, str) and k in types
                 and ("int" in types[k] or "float" in types[k]) and "str" not in types[k]]
        which = f" ({', '.join(named)} should be a number)" if named else f" ({e})"
        raise ValueError(f"recipe file {recipe}: a value has the wrong type{which}; compare the file with the "
                         f"defaults `effnet train --help` shows") from e


#: Options a resumed run may change: the learning rate (the usual cure for a diverged run) and
#: the number of epochs (the schedule is recomputed for the new length from the current step).
RESUME_CHANGES = ("lr_per_256", "epochs")


def _resumed(saved: dict[str, Any], changes: dict[str, Any]) -> TrainConfig:
    """The recorded config of a resumed run with ``changes`` (only :data:`RESUME_CHANGES`)."""
    refused = sorted(set(changes) - set(RESUME_CHANGES))
    if refused:
        raise ValueError(f"a resumed run can change only {', '.join(RESUME_CHANGES)}, not {', '.join(refused)}")
    recorded = dict(saved["config"])
    for k, v in changes.items():
        if recorded.get(k) != v:
            log.warning("resume: %s changed from %s to %s", k, recorded.get(k), v)
    cfg = TrainConfig.from_dict({**recorded, **changes})
    if cfg.epochs <= saved["epoch"] and "epochs" in changes:
        raise ValueError(f"--epochs {cfg.epochs}: the run has already completed {saved['epoch']} epoch(s); "
                         f"give more to go on")
    return cfg


def _size_finetune(base: dict[str, Any], overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str]:
    """The finetune recipe completed from the data: its values, their sources, one summary line."""
    get = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **base, **overrides}
    data = str(get["data"])
    facts = data_facts(data, get["val_fraction"], get["seed"], get["weights"] or get["spec"] or get["model"],
                       get["device"])
    sized = finetune_sizing(facts)
    if data == "digits":
        # 8x8 glyphs: a mirrored digit is another glyph, and the centre crop would cut strokes.
        sized.update(hflip=(False, "digits: a mirrored digit is another glyph"),
                     crop_scale=((0.8, 1.0), "digits: a tighter crop cuts strokes off 8 px glyphs"),
                     crop_pct=(1.0, "digits: no centre crop of 8 px glyphs"))
    values = {k: v for k, (v, _) in sized.items()}
    sources = {k: f"data: {why}" for k, (_, why) in sized.items()}
    if get["freeze_backbone"]:
        values["lr_per_256"] = FINETUNE_FROZEN_LR
        sources["lr_per_256"] = "recipe finetune with --freeze-backbone: a step on a linear head moves it by lr x |f|^2"
    final = {**get, **values, **overrides}
    flagged = [k for k in values if k in overrides]
    summary = (f"finetune recipe for {facts.train_images} training images in {facts.classes} classes: batch "
               f"{final['batch_size']}, lr {final['lr_per_256']:g} ({final['optimizer']}, {final['schedule']}), "
               f"up to {final['epochs']} epochs (early stop after {final['patience']} without a better val "
               f"top-1), {final['image_size']} px, crop scale {final['crop_scale'][0]:g}-{final['crop_scale'][1]:g}"
               f"{', flips' if final['hflip'] else ''}"
               f"{', frozen backbone' if final['freeze_backbone'] else ''}"
               f" ({sized['batch_size'][1]}; {sized['epochs'][1]}; size: {sized['image_size'][1]})"
               + (f"; set by flags: {', '.join(flagged)}" if flagged else ""))
    return {**base, **values}, sources, summary


def resolve_config(recipe: str | None = None, data: str | None = None, **overrides: Any) -> TrainConfig:
    """The config :func:`resolve` makes of a recipe (name or YAML file; default ``finetune`` when
    ``weights`` are given, ``digits`` for the digits data, else ``paper_v1``) with ``overrides``
    (``None`` values ignored) on top; see :func:`resolve` for how each value is chosen."""
    return resolve(recipe, data, **overrides).cfg
