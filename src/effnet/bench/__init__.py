"""Side-by-side benchmark: effnet next to torchvision, timm, Keras 3 and efficientnet_pytorch.

``effnet.bench.run(models, ...)`` measures inference latency (batch 1), throughput (batch 32),
training throughput and peak training memory of each library's network in its best
configuration, interleaved across libraries, and returns a JSON-ready dict with the ratios
effnet cost / peer cost. ``effnet bench`` is its command line; ``benchmarks/run.sh`` runs it
under a Python where every peer is importable. Peers are optional: one that is missing is
listed as skipped, with the reason.
"""

from __future__ import annotations

from effnet.bench.measure import interleaved, peak_memory_bytes, rotation, saved_activation_bytes
from effnet.bench.peers import LIBRARIES, Runner, Unavailable, build_runner, peer_name
from effnet.bench.run import (
    DEFAULT_MODELS,
    ENTRY_FIELDS,
    MODEL_FIELDS,
    RESULT_FIELDS,
    make_config,
    ratios,
    reference_of,
    run,
    table,
    write_json,
)

__all__ = [
    "DEFAULT_MODELS", "ENTRY_FIELDS", "LIBRARIES", "MODEL_FIELDS", "RESULT_FIELDS", "Runner", "Unavailable",
    "build_runner", "interleaved", "make_config", "peak_memory_bytes", "peer_name", "ratios", "reference_of",
    "rotation", "run", "saved_activation_bytes", "table", "write_json",
]
