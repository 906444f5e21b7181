"""Data: image folders, the embedded digits set, transforms (kornia augmentation on the device)
and progressive-learning stages."""

from effnet.data.datasets import (
    DIGITS,
    IMAGE_EXTENSIONS,
    UNREADABLE,
    DecodedDataset,
    SkipLog,
    Split,
    load_digits_split,
    load_eval_split,
    load_splits,
    to_rgb,
)
from effnet.data.loader import EpochSampler, make_loader
from effnet.data.progressive import V2_PRESETS, ProgressiveSpec, Range, Stage, plan, stage_at, stage_values
from effnet.data.transforms import (
    AugmentSettings,
    LoadTransform,
    Targets,
    TrainAugment,
)

__all__ = [
    "DIGITS", "IMAGE_EXTENSIONS", "UNREADABLE", "V2_PRESETS", "AugmentSettings", "DecodedDataset",
    "EpochSampler", "LoadTransform", "ProgressiveSpec", "Range",
    "SkipLog", "Split", "Stage", "Targets", "TrainAugment", "load_digits_split", "load_eval_split",
    "load_splits", "make_loader", "plan", "stage_at", "stage_values", "to_rgb",
]
