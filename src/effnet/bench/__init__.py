"""Side-by-side benchmark: effnet next to torchvision, timm, Keras 3 and efficientnet_pytorch.

``effnet.bench.run(models, ...)`` measures inference latency (batch 1), throughput (batch 32),
training throughput and peak training memory of each library's network in its best
configuration, interleaved across libraries, and returns a JSON-ready dict with the ratios
effnet cost / peer cost. ``effnet bench`` is its command line; ``benchmarks/run.sh`` runs it
under a Python where every peer is importable. Peers are optional: one that is missing is
listed as skipped, with the reason.
"""

from __future__ import annotations

from effnet.lazy import lazy_attributes

# Names load on first use (PEP 562): `effnet bench --help` reads only effnet.bench.names and must
# not load torch and the peer libraries.
_LAZY: dict[str, str] = {name: module for module, names in (
    ("effnet.bench.measure", ("interleaved", "peak_memory_bytes", "rotation", "saved_activation_bytes")),
    ("effnet.bench.names", ("LIBRARIES",)),
    ("effnet.bench.peers", ("Runner", "Unavailable", "build_runner", "peer_name", "use_keras_torch_backend")),
    ("effnet.bench.report", ("ratios", "reference_of", "table", "write_json")),
    ("effnet.bench.runner", ("DEFAULT_MODELS", "ENTRY_FIELDS", "MODEL_FIELDS", "RESULT_FIELDS", "make_config", "run")),
) for name in names}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
