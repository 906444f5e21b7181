"""Data: image folders, the embedded digits set, transforms (kornia augmentation on the device)
and progressive-learning stages."""

from __future__ import annotations

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): the command line builds its parser from the training config,
# which reads effnet.data.progressive; importing this package must not load torch for that.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.data.datasets", ("DIGITS", "IMAGE_EXTENSIONS", "UNREADABLE", "DecodedDataset", "SkipLog", "Split",
                              "load_digits_split", "load_eval_split", "load_splits", "to_rgb")),
    ("effnet.data.loader", ("EpochSampler", "default_workers", "make_loader")),
    ("effnet.data.progressive", ("V2_PRESETS", "ProgressiveSpec", "Range", "Stage", "eval_resolution", "plan",
                                 "stage_at")),
    ("effnet.data.transforms", ("AugmentSettings", "LoadTransform", "Targets", "TrainAugment")),
) for name in names}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
