"""Measurement: parameters, multiply-adds, activation memory and CPU latency.

FLOPs follow the papers' convention: *multiply-adds* (EfficientNet-B0 = 0.39B at 224 px).
They are counted by ``torch.utils.flop_counter`` (which reports 2 FLOPs per multiply-add for
convolutions and matmuls), on the meta device so that even L2 at 800 px costs no compute.
The registered models' counts are also stored (:mod:`effnet.profile.counts`), so listing them
needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load on first use (PEP 562): the stored counts (effnet.profile.counts) are read by
# `effnet list` / `effnet table`, which must answer without loading torch.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.profile.measure", ("Profile", "activation_memory", "count_flops", "count_params", "latency",
                                "profile_model", "saved_activation_bytes", "step_time")),
    ("effnet.profile.counts", ("Counts", "stored_counts")),
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
