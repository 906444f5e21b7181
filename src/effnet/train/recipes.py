"""The named training recipes, and how the ``finetune`` recipe sizes itself from the data.

A recipe is a dict of :class:`~effnet.train.config.TrainConfig` field values over its defaults
(the ``digits`` recipe); :func:`effnet.train.config.resolve` applies one, and the command-line
options on top of it.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effnet.data.progressive import ProgressiveSpec, Range
from effnet.registry import get_spec
from effnet.specs.base import ModelSpec

_V2_TRAIN = dict(
    # EfficientNetV2 section 5.1: RMSProp 0.9/0.9, wd 1e-5, batch 4096 warm-up to 0.256 (0.016 per
    # 256) then x0.97 every 2.4 epochs, EMA 0.9999, survival 0.8; RandAugment + mixup, grown by
    # progressive learning in 4 stages (Table 6).
    # progressive="model": the Table 6 ranges of whichever model is trained (resolved after the
    # overrides, so `--recipe paper_v2 --model efficientnetv2_m` grows to 380 px, not V2-S's 300).
    model="efficientnetv2_s", autoaugment=False, randaugment_magnitude=15.0, progressive="model", epochs=350,
)

#: The ``finetune`` recipe's peak learning rate (SGD, any batch up to 256). Measured from Lite0
#: weights on digits (7 epochs at 32 px, crops 0.5-1): 0.01 ended at 98.1% val top-1, 0.03 at
#: 98.6% (99.4% with the digits crops 0.8-1); on the 3 x 20 photo folder both reached 100% in
#: the first epoch.
FINETUNE_LR = 0.03
#: Its learning rate with a frozen backbone. A step on a linear head moves the logits by about
#: lr x |features|^2, and Lite0's 1280 pooled features have |f|^2 of about 1000 on photos: at
#: 0.03 the head overshoots (train loss 2.2 on 3 classes while val loss was 0.0000); at 0.001
#: it converges to the label-smoothing floor (0.33) within 2 epochs.
FINETUNE_FROZEN_LR = 0.001

#: The EfficientNet (V1) paper recipe (section 5.2 and the official code; docs/paper.md section
#: 4): RMSProp 0.9/0.9 eps 1e-3, lr 0.016 per 256 images, 5 warm-up epochs then x0.97 every 2.4
#: epochs, wd 1e-5 (not on BN/bias), label smoothing 0.1, EMA 0.9999, AutoAugment, the spec's
#: dropout and stochastic depth (0.2), 350 epochs. Every field in which it differs from the
#: defaults (the ``digits`` recipe) is listed, so that it is complete on its own; the other
#: recipes except the digits ones, and recipe files, are changes to it.
PAPER_V1: dict[str, Any] = dict(
    width=1.0, depth=1.0, dropout=None, drop_path_rate=None, bn_momentum=None, image_size=None, crop_pct=0.875,
    interpolation="bicubic", crop_scale=(0.08, 1.0), hflip=True, autoaugment=True, epochs=350, batch_size=128,
    optimizer="rmsprop_tf", lr_per_256=0.016, weight_decay=1e-5, schedule="exponential", warmup_epochs=5.0,
    ema_decay=0.9999,
)

#: Named recipes: field values over :class:`TrainConfig`'s defaults (the ``digits`` recipe).
RECIPES: dict[str, dict[str, Any]] = {
    # EfficientNet section 5.2 + official code. Launch: effnet train --recipe paper_v1 --data DIR
    "paper_v1": PAPER_V1,
    # EfficientNetV2 sections 4.2 and 5.1. Launch: effnet train --recipe paper_v2 --data DIR
    "paper_v2": {**PAPER_V1, **_V2_TRAIN},
    # V2 transfer (V2 section 5.2; docs/paper.md section 8): lr 0.001 cosine, no weight decay, short.
    # Launch: effnet train --recipe transfer_v2 --weights W.safetensors --data DIR
    "transfer_v2": PAPER_V1 | dict(
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
    "digits_progressive": PAPER_V1 | dict(
        data="digits", model="efficientnet_b0", width=0.5, depth=0.5, crop_pct=1.0,
        interpolation="bilinear", crop_scale=(0.8, 1.0), hflip=False, autoaugment=False,
        epochs=18, batch_size=32, optimizer="adamw", lr_per_256=0.032, weight_decay=0.01,
        schedule="cosine", warmup_epochs=1.0, bn_momentum=0.1, ema_decay=0.998, drop_path_rate=0.1,
        progressive=ProgressiveSpec(3, Range(32, 64), Range(0.05, 0.2), None, Range(0, 0.2),
                                    size_divisor=8),
    ),
    # Fine-tuning pretrained weights on a small folder (the default with --weights/--pretrained).
    # Batch, epochs, image size and loader processes come from the data (finetune_sizing).
    # SGD with a fixed peak lr (no linear scaling below batch 256, see lr_batch_floor) and a
    # cosine decay, no warm-up: the head starts at zero (model.build_model), so the first steps
    # cannot wreck the pretrained features. BatchNorm momentum 0.1 (PyTorch's default, ten
    # times the TF ports' 0.01): the running statistics the evaluation uses must follow the new
    # data within an epoch (on digits at 32 px, 0.01 left epoch 1 at 22% against 50%). Light augmentation (a mild random-resized crop and
    # flips, no AutoAugment/RandAugment, no mixup) and no EMA: a few hundred steps are too few
    # for an average to leave the initial weights. Early stopping ends the run on a plateau.
    # Launch: effnet train --weights W.safetensors --data DIR
    "finetune": PAPER_V1 | dict(
        optimizer="sgd", momentum=0.9, lr_per_256=FINETUNE_LR, lr_batch_floor=256, weight_decay=1e-4,
        schedule="cosine", warmup_epochs=0.0, label_smoothing=0.1, ema=False, bn_momentum=0.1, autoaugment=False,
        randaugment_magnitude=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, crop_scale=(0.5, 1.0), hflip=True,
        progressive=None, patience=3,
    ),
    # Seconds-long smoke test that still learns: 48 steps (512 images, 3 epochs) reach 58-71%
    # top-1 on digits (seeds 0-2; chance is 10%), where 16 steps (256 images, 2 epochs) stayed at
    # chance. No EMA: over 48 steps it is still mostly the initial weights; BatchNorm momentum 0.3
    # so that the running statistics the evaluation uses catch up within those few steps.
    # Launch: effnet train --recipe debug
    "debug": PAPER_V1 | dict(
        data="digits", model="efficientnet_b0", width=0.5, depth=0.25, image_size=32, crop_pct=1.0,
        interpolation="bilinear", crop_scale=(0.6, 1.0), hflip=False, autoaugment=False,
        epochs=3, batch_size=32, train_subset=512, warmup_epochs=0.5, bn_momentum=0.3,
        optimizer="adamw", lr_per_256=0.032, weight_decay=0.01, schedule="cosine", ema=False,
    ),
}


@dataclass(frozen=True)
class DataFacts:
    """What the ``finetune`` recipe is sized from: the training split and the initial weights."""

    train_images: int
    classes: int
    short_side: int  # median shorter side of (a sample of) the training images, px
    weights_size: int  # the weights' training resolution, px
    cuda: bool  # a CUDA device will train


#: The finetune epoch count aims at about this many optimiser steps (between the epoch bounds).
FINETUNE_STEPS = 300
FINETUNE_EPOCHS = (5, 30)
#: On a CPU the finetune image size stays at or below this: a 224 px epoch of Lite0 costs three
#: times a 128 px one, and pretrained features still transfer at 128 px.
CPU_IMAGE_SIZE = 128
#: Below this many training images the loader decodes in the training process: starting worker
#: processes every epoch costs more than decoding a few hundred images.
IN_PROCESS_IMAGES = 1000


def finetune_sizing(facts: DataFacts) -> dict[str, tuple[Any, str]]:
    """The ``finetune`` recipe's data-dependent values, each with the reason it was chosen."""
    n = facts.train_images
    batch = min(32, max(8, n // 4))
    steps = max(1, n // batch)
    lo, hi = FINETUNE_EPOCHS
    epochs = min(hi, max(lo, math.ceil(FINETUNE_STEPS / steps)))
    # Upsampling small images far beyond their own size adds cost, not detail.
    native = max(32, 32 * math.ceil(4 * facts.short_side / 32))
    size = min(facts.weights_size, native, facts.weights_size if facts.cuda else CPU_IMAGE_SIZE)
    why_size = ("the weights' size" if size == facts.weights_size
                else f"4x the images' {facts.short_side} px" if size == native
                else f"CPU cap (weights: {facts.weights_size} px)")
    return {
        "batch_size": (batch, f"{n} training images / 4, within 8-32"),
        "epochs": (epochs, f"about {FINETUNE_STEPS} steps of {steps} per epoch, within {lo}-{hi}"),
        "image_size": (size, why_size),
        "workers": (0 if n < IN_PROCESS_IMAGES else None,
                    f"{'in-process' if n < IN_PROCESS_IMAGES else 'default'} decoding for {n} images"),
    }


def data_facts(data: str, val_fraction: float, seed: int, weights: str, device: str) -> DataFacts:
    """Count and measure the training split of ``data`` and read the training size of the
    ``weights`` (a weight file, else a spec file or a registered model name)."""
    from PIL import Image

    from effnet.data import load_splits

    quiet = logging.getLogger("effnet.data")  # the run itself logs the data layout, once
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        train, _ = load_splits(data, val_fraction, seed)
    finally:
        quiet.setLevel(level)
    sides = []
    for item in train.items[:: max(1, len(train.items) // 32)][:32]:
        try:
            size = item.size if isinstance(item, Image.Image) else Image.open(item).size
        except OSError:
            continue  # an unreadable file is reported by the run itself
        sides.append(min(size))
    from effnet.weights.format import read_spec

    path = Path(weights)
    spec = (read_spec(path)[0] if path.suffix == ".safetensors" or path.is_dir() else
            ModelSpec.load(path) if path.suffix in (".yaml", ".yml", ".json") else get_spec(weights))
    return DataFacts(len(train), len(train.class_names), int(statistics.median(sides)) if sides else 224,
                     spec.train_resolution or spec.resolution,
                     device.startswith("cuda") or (device == "auto" and _cuda_available()))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
