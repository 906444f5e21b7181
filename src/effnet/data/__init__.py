"""Data: image folders, the embedded digits set, transforms (kornia augmentation on the device)
and progressive-learning stages."""

from __future__ import annotations

import importlib
from typing import Any

# Names load on first use (PEP 562): the command line builds its parser from the training config,
# which reads effnet.data.progressive; importing this package must not load torch for that.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.data.datasets", ("DIGITS", "IMAGE_EXTENSIONS", "UNREADABLE", "DecodedDataset", "SkipLog", "Split",
                              "load_digits_split", "load_eval_split", "load_splits", "to_rgb")),
    ("effnet.data.loader", ("EpochSampler", "make_loader")),
    ("effnet.data.progressive", ("V2_PRESETS", "ProgressiveSpec", "Range", "Stage", "plan", "stage_at",
                                 "stage_values")),
    ("effnet.data.transforms", ("AugmentSettings", "LoadTransform", "Targets", "TrainAugment")),
) for name in names}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
