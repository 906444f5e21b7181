"""Measurement: parameters, multiply-adds, activation memory and CPU latency.

FLOPs follow the papers' convention: *multiply-adds* (EfficientNet-B0 = 0.39B at 224 px).
They are counted by ``torch.utils.flop_counter`` (which reports 2 FLOPs per multiply-add for
convolutions and matmuls), on the meta device so that even L2 at 800 px costs no compute.
The registered models' counts are also stored (:mod:`effnet.profile.counts`), so listing them
needs no torch.
"""

from __future__ import annotations

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): the stored counts (effnet.profile.counts) are read by
# `effnet list` / `effnet table`, which must answer without loading torch.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.profile.measure", ("Profile", "activation_memory", "count_flops", "count_params", "latency",
                                "profile_model", "saved_activation_bytes", "step_time")),
    ("effnet.profile.counts", ("Counts", "stored_counts")),
) for name in names}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
