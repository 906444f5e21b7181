"""Training configuration: one typed dataclass, and the named recipes as small presets over it.

A recipe is a dict of field overrides; ``effnet train --recipe NAME`` (or a YAML file with the
same fields) picks one, and command-line options override it. The resolved config is written to
the run folder as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range
from effnet.specs.base import check_fields


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults are the EfficientNet (V1) paper recipe (section 4 of
    PAPER.md): RMSProp 0.9/0.9 eps 1e-3, lr 0.016 per 256 images, 5 warm-up epochs then x0.97
    every 2.4 epochs, wd 1e-5 (not on BN/bias), label smoothing 0.1, EMA 0.9999, AutoAugment,
    stochastic depth 0.2, 350 epochs."""

    # --- data
    data: str = "digits"
    val_fraction: float = 0.2
    train_subset: int | None = None  # use only the first N training images (smoke tests)
    workers: int | None = None  # loader processes; None: 0 for digits, else min(cpus, 8)
    # --- model
    model: str = "efficientnet_b0"
    spec: str | None = None  # a spec file (YAML/JSON); overrides ``model``
    width: float = 1.0  # extra width/depth multipliers applied to the spec (effnet.scaling.scale)
    depth: float = 1.0
    weights: str | None = None  # initial weights (fine-tuning): a converted or trained file
    freeze_backbone: bool = False
    dropout: float | None = None  # None: the spec's value
    drop_path_rate: float | None = None
    bn_momentum: float | None = None
    # --- input
    image_size: int | None = None  # training size; None: the spec's train resolution
    eval_size: int | None = None  # None: the final training size
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    # None: the initial weights' recorded input normalisation (a Keras or TF-ported file may
    # expect other scaling than ImageNet's), else ImageNet mean/std on pixels / 255.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # --- augmentation
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    autoaugment: bool = True
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    progressive: ProgressiveSpec | None = None
    # --- optimisation
    epochs: int = 350
    batch_size: int = 128
    accum_steps: int = 1
    optimizer: str = "rmsprop_tf"  # rmsprop_tf | sgd | adamw
    lr_per_256: float = 0.016
    momentum: float = 0.9
    rmsprop_rho: float = 0.9
    rmsprop_eps: float = 1e-3
    weight_decay: float = 1e-5
    schedule: str = "exponential"  # exponential | cosine | constant
    warmup_epochs: float = 5.0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float = 0.9999
    grad_clip: float | None = None
    # --- execution
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA if supported, else off) | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    threads: int | None = None  # torch CPU threads; None: the idle cores (see loop.auto_threads)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact comparisons; slower)
    # --- distributed (torchrun; batch_size is per process, the global batch is x world size)
    sync_bn: bool = False  # BatchNorm statistics over the global batch, not each process's share
    dist_timeout_minutes: float = 30.0  # a collective waiting longer than this fails the job
    # --- run folder
    out: str | None = None
    save_every_steps: int = 0  # also checkpoint mid-epoch every N optimiser steps (0: off)
    log_steps: bool = False  # write steps.csv: the loss of every optimiser step (global average)
    recipe: str = "paper_v1"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.progressive, dict):
            p = dict(self.progressive)
            for k in ("image_size", "dropout", "randaugment", "mixup"):
                if isinstance(p.get(k), (dict, list, tuple)):
                    v = p[k]
                    p[k] = Range(**v) if isinstance(v, dict) else Range(*v)
            self.progressive = ProgressiveSpec(**p)
        self.mean = None if self.mean is None else tuple(self.mean)
        self.std = None if self.std is None else tuple(self.std)
        self.crop_scale = tuple(self.crop_scale)  # type: ignore[assignment]
        checks = [
            (self.epochs >= 1, f"epochs: expected >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size: expected >= 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps: expected >= 1, got {self.accum_steps}"),
            (self.optimizer in ("rmsprop_tf", "sgd", "adamw"),
             f"optimizer: expected rmsprop_tf, sgd or adamw, got {self.optimizer!r}"),
            (self.amp in ("auto", "bf16", "fp16", "off"), f"amp: expected auto, bf16, fp16 or off, got {self.amp!r}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing: expected [0, 1), got {self.label_smoothing}"),
            (0 < self.crop_pct <= 1, f"crop_pct: expected (0, 1], got {self.crop_pct}"),
            (self.dist_timeout_minutes > 0, f"dist_timeout_minutes: expected > 0, got {self.dist_timeout_minutes}"),
        ]
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
    model="efficientnetv2_s", autoaugment=False, randaugment_magnitude=15.0,
    progressive=V2_PRESETS["efficientnetv2_s"], epochs=350,
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


def resolve_config(recipe: str | None = None, data: str | None = None, **overrides: Any) -> TrainConfig:
    """A recipe (name or YAML file; default ``digits`` for the digits data, else ``paper_v1``)
    with ``overrides`` (``None`` values ignored) applied on top."""
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
    return TrainConfig.from_dict({**base, **overrides})
