"""What the benchmark can measure, as plain names: the command line builds its options from
these without importing torch or any library (`effnet bench --help` must answer at once)."""

from __future__ import annotations

#: Every library the benchmark knows, effnet first.
LIBRARIES = ("effnet", "torchvision", "timm", "keras", "efficientnet_pytorch")
#: effnet's variants and what they are measured for.
EFFNET_INFERENCE = ("plain", "fast", "int8")
EFFNET_TRAINING = ("default", "memory-saving")

__all__ = ["EFFNET_INFERENCE", "EFFNET_TRAINING", "LIBRARIES"]
