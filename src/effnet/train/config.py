"""Training configuration: one typed dataclass, and the named recipes as small presets over it.

A recipe is a dict of field overrides; ``effnet train --recipe NAME`` (or a YAML file with the
same fields) picks one, and command-line options override it. The resolved config is written to
the run folder as ``config.yaml``.

Each field carries its help text (and its allowed values, where they are a fixed set) in its
metadata: ``effnet train`` derives one option per field from them (effnet.commands.train), so the list
of training options exists once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range
from effnet.specs.base import check_fields


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
    """Everything a run needs. Defaults are the EfficientNet (V1) paper recipe (section 4 of
    PAPER.md): RMSProp 0.9/0.9 eps 1e-3, lr 0.016 per 256 images, 5 warm-up epochs then x0.97
    every 2.4 epochs, wd 1e-5 (not on BN/bias), label smoothing 0.1, EMA 0.9999, AutoAugment,
    stochastic depth 0.2, 350 epochs.

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
    width: float = option(1.0, "extra width multiplier on the model")
    depth: float = option(1.0, "extra depth multiplier on the model")
    weights: str | None = option(None, "initial weights (fine-tuning; a new head if the class count differs)")
    freeze_backbone: bool = option(False, "train only the classifier")
    dropout: float | None = option(None, "dropout before the classifier (default: the spec's)")
    drop_path_rate: float | None = option(None, "stochastic depth rate of the last block (default: the spec's)")
    bn_momentum: float | None = option(None, "BatchNorm momentum, PyTorch convention (default: the spec's)")
    # --- input
    image_size: int | None = option(None, "training image size (default: the spec's train resolution)")
    # None: the spec's evaluation resolution scaled by final training size / spec train size
    # (train/setup.eval_resolution), so V2-S trained at 300 px is scored at 384 px as published
    # (PAPER.md section 7), not at its training size.
    eval_size: int | None = option(
        None, "evaluation image size (default: the spec's evaluation resolution, scaled with the final "
              "training size)")
    crop_pct: float = option(0.875, "evaluation centre crop: resize to size / crop_pct, crop size")
    interpolation: str = option("bicubic", "resampling filter", choices=("bicubic", "bilinear", "nearest"))
    # None: the initial weights' recorded input normalisation (a Keras or TF-ported file may
    # expect other scaling than ImageNet's), else ImageNet mean/std on pixels / 255.
    mean: tuple[float, ...] | None = option(None, "input mean per channel, on pixels / 255 (default: the "
                                                  "weights' recorded normalisation, else ImageNet's)")
    std: tuple[float, ...] | None = option(None, "input std per channel (default: as --mean)")
    # --- augmentation
    crop_scale: tuple[float, float] = option((0.08, 1.0), "random resized crop area range (1 1: no crop)")
    hflip: bool = option(True, "random horizontal flips")
    autoaugment: bool = option(True, "AutoAugment, ImageNet policy (V1)")
    randaugment_magnitude: float = option(0.0, "RandAugment magnitude 0-30 (0: off; V2 uses 15)")
    mixup_alpha: float = option(0.0, "mixup Beta(alpha, alpha) (0: off)")
    cutmix_alpha: float = option(0.0, "CutMix Beta(alpha, alpha) (0: off)")
    # A ProgressiveSpec, or a word resolved by resolve_progressive: a V2_PRESETS name, "model"
    # (the preset of ``model``), "on" (the recipe's ranges, else ProgressiveSpec()'s) or "off".
    progressive: ProgressiveSpec | str | None = option(
        None, "V2 progressive learning (paper Table 6): 'model' (the preset of --model), a preset "
              f"({', '.join(V2_PRESETS)}), 'on' (the recipe's or default ranges) or 'off'")
    # --- optimisation
    epochs: int = option(350, "training epochs")
    batch_size: int = option(128, "images per process and step (under torchrun the global batch is this "
                                  "x world size)")
    accum_steps: int = option(1, "gradient accumulation micro-batches per step")
    optimizer: str = option("rmsprop_tf", "optimiser", choices=("rmsprop_tf", "sgd", "adamw"))
    lr_per_256: float = option(0.016, "learning rate per 256 images (scaled linearly with the batch size)")
    momentum: float = option(0.9, "optimiser momentum")
    rmsprop_rho: float = option(0.9, "RMSProp decay of the mean square")
    rmsprop_eps: float = option(1e-3, "RMSProp epsilon (inside the square root, TF form)")
    weight_decay: float = option(1e-5, "weight decay (not on BatchNorm and biases)")
    schedule: str = option("exponential", "learning-rate schedule after the warm-up",
                           choices=("exponential", "cosine", "constant"))
    warmup_epochs: float = option(5.0, "linear learning-rate warm-up epochs")
    decay_rate: float = option(0.97, "exponential schedule: factor per --decay-epochs")
    decay_epochs: float = option(2.4, "exponential schedule: epochs per decay")
    min_lr: float = option(0.0, "learning-rate floor")
    label_smoothing: float = option(0.1, "label smoothing")
    ema: bool = option(True, "evaluate and save an exponential moving average of the weights")
    ema_decay: float = option(0.9999, "EMA decay per optimiser step")
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
    # Activation checkpointing (EfficientNet.set_grad_checkpointing); the memory-saving BN+SiLU
    # and SE ops (effnet.layers.activations) are on in every run, they cost no time.
    memory_saving: bool = option(False, "recompute each block's activations in the backward pass instead of "
                                        "keeping them: much less training memory for about one extra forward "
                                        "pass per step")
    threads: int | None = option(None, "torch CPU threads (default: the idle cores)")
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
    recipe: str = option("paper_v1", "a named recipe (RECIPES) or a YAML file of these fields (default: "
                                     "digits for digits data, else paper_v1)")
    extra: dict[str, Any] = option(help="free-form values recorded with the run (KEY=VALUE)",
                                   default_factory=dict)

    def __post_init__(self) -> None:
        self.progressive = resolve_progressive(self.progressive, self.model, self.spec)
        self.mean = None if self.mean is None else tuple(self.mean)
        self.std = None if self.std is None else tuple(self.std)
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        checks = [
            (self.epochs >= 1, f"epochs: expected >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size: expected >= 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps: expected >= 1, got {self.accum_steps}"),
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


_V2_TRAIN = dict(
    # EfficientNetV2 section 5.1: RMSProp 0.9/0.9, wd 1e-5, batch 4096 warm-up to 0.256 (0.016 per
    # 256) then x0.97 every 2.4 epochs, EMA 0.9999, survival 0.8; RandAugment + mixup, grown by
    # progressive learning in 4 stages (Table 6).
    # progressive="model": the Table 6 ranges of whichever model is trained (resolved after the
    # overrides, so `--recipe paper_v2 --model efficientnetv2_m` grows to 380 px, not V2-S's 300).
    model="efficientnetv2_s", autoaugment=False, randaugment_magnitude=15.0, progressive="model", epochs=350,
)

#: Named recipes: field overrides on :class:`TrainConfig` (whose defaults are ``paper_v1``).
RECIPES: dict[str, dict[str, Any]] = {
    # EfficientNet section 5.2 + official code. Launch: effnet train --recipe paper_v1 --data DIR
    "paper_v1": {},
    # EfficientNetV2 sections 4.2 and 5.1. Launch: effnet train --recipe paper_v2 --data DIR
    "paper_v2": _V2_TRAIN,
    # V2 transfer (section 5.2 / PAPER.md section 8): lr 0.001 cosine, no weight decay, short.
    # Launch: effnet train --recipe transfer_v2 --weights W.safetensors --data DIR
    "transfer_v2": dict(
        model="efficientnetv2_s", autoaugment=False, randaugment_magnitude=15.0, progressive=None,
        lr_per_256=0.001 * 256 / 512, schedule="cosine", weight_decay=0.0, warmup_epochs=1.0,
        epochs=20, batch_size=64,
    ),
    # The embedded default job: 8x8 digits upsampled to 32 px on a B0 at half width and depth.
    # From scratch with ~1400 images, AdamW + cosine converges in far fewer steps than the
    # paper's RMSProp schedule (tuned for 350 ImageNet epochs). Launch: effnet train
    "digits": dict(
        data="digits", model="efficientnet_b0", width=0.5, depth=0.5, image_size=32, crop_pct=1.0,
        interpolation="bilinear", crop_scale=(0.8, 1.0), hflip=False, autoaugment=False,
        epochs=20, batch_size=32, optimizer="adamw", lr_per_256=0.032, weight_decay=0.01,
        schedule="cosine", warmup_epochs=1.0, bn_momentum=0.1, ema_decay=0.998, drop_path_rate=0.1,
        dropout=0.1,
    ),
    # V2 progressive learning on digits: 3 stages, 32 -> 64 px, dropout and mixup grown
    # (RandAugment's photometric ops wreck 8x8 glyphs, so it stays off here).
    # Launch: effnet train --recipe digits_progressive
    "digits_progressive": dict(
        data="digits", model="efficientnet_b0", width=0.5, depth=0.5, crop_pct=1.0,
        interpolation="bilinear", crop_scale=(0.8, 1.0), hflip=False, autoaugment=False,
        epochs=18, batch_size=32, optimizer="adamw", lr_per_256=0.032, weight_decay=0.01,
        schedule="cosine", warmup_epochs=1.0, bn_momentum=0.1, ema_decay=0.998, drop_path_rate=0.1,
        progressive=ProgressiveSpec(3, Range(32, 64), Range(0.05, 0.2), None, Range(0, 0.2),
                                    size_divisor=8),
    ),
    # Seconds-long smoke test. Launch: effnet train --recipe debug
    "debug": dict(
        data="digits", model="efficientnet_b0", width=0.5, depth=0.25, image_size=32, crop_pct=1.0,
        interpolation="bilinear", crop_scale=(0.6, 1.0), hflip=False, autoaugment=False,
        epochs=2, batch_size=32, train_subset=256, warmup_epochs=0.5, bn_momentum=0.1,
        optimizer="adamw", lr_per_256=0.032, weight_decay=0.01, schedule="cosine", ema_decay=0.99,
    ),
}


def resolve_progressive(value: ProgressiveSpec | dict | str | None, model: str,
                        spec: str | None = None) -> ProgressiveSpec | None:
    """The progressive ranges ``value`` stands for.

    ``value`` is ranges (a :class:`ProgressiveSpec` or its dict, as in ``config.yaml``), ``None``
    or ``"off"`` (no progressive learning), ``"on"`` (the default ranges, V2-S's), a
    :data:`V2_PRESETS` name, or ``"model"``: the preset of the model being trained (V2 Table 6 has
    ranges for S, M and L only; any other model is refused with what to do instead).
    """
    if value is None or isinstance(value, ProgressiveSpec):
        return value
    if isinstance(value, dict):
        p = dict(value)
        for k in ("image_size", "dropout", "randaugment", "mixup"):
            if isinstance(p.get(k), (dict, list, tuple)):
                v = p[k]
                p[k] = Range(**v) if isinstance(v, dict) else Range(*v)
        return ProgressiveSpec(**p)
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


def resolve_config(recipe: str | None = None, data: str | None = None, **overrides: Any) -> TrainConfig:
    """A recipe (name or YAML file; default ``digits`` for the digits data, else ``paper_v1``)
    with ``overrides`` (``None`` values ignored) applied on top.

    ``progressive`` words are resolved after the overrides are applied: ``"model"`` follows the
    final ``model``, and ``"on"`` keeps the recipe's own ranges if it has some (else the default
    ranges). An override that
    turns progressive learning on also turns AutoAugment off unless ``autoaugment`` is given too:
    V2 grows RandAugment with the image size (V2 section 4.2, Table 6), in place of V1's
    AutoAugment."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if data is not None:
        overrides["data"] = data
    if recipe is None:
        recipe = "digits" if overrides.get("data", "digits") == "digits" else "paper_v1"
    if recipe in RECIPES:
        base = {**RECIPES[recipe], "recipe": recipe}
    elif Path(recipe).suffix in (".yaml", ".yml") and Path(recipe).is_file():
        import yaml

        base = yaml.safe_load(Path(recipe).read_text()) or {}
        base.setdefault("recipe", str(recipe))
    else:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {sorted(RECIPES)} or a .yaml file")
    merged = {**base, **overrides}
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
    return TrainConfig.from_dict(merged)  # __post_init__ resolves "model" against the final model
