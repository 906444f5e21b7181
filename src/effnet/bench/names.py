"""What the benchmark can measure, as plain names: the command line builds its options from
these without importing torch or any library (`effnet bench --help` must answer at once)."""

from __future__ import annotations

#: Every library the benchmark knows, effnet first. ``onnxruntime``: plain ONNX Runtime (default
#: session options, the run's thread count) on a peer's own ONNX export (torchvision, else timm,
#: else efficientnet_pytorch), the way a user deploys a peer's network.
LIBRARIES = ("effnet", "torchvision", "timm", "keras", "efficientnet_pytorch", "onnxruntime")
#: effnet's variants and what they are measured for: ``ort`` / ``openvino`` are
#: effnet.deploy.runtime sessions on effnet's verified export, ``int8`` torch's FX int8,
#: ``ort-int8`` / ``openvino-int8`` static QDQ int8 on ONNX Runtime / OpenVINO
#: (effnet.deploy.runtime.int8_session).
EFFNET_INFERENCE = ("plain", "fast", "ort", "openvino", "int8", "ort-int8", "openvino-int8")
#: effnet's fp32 inference variants: the best measured one is effnet's side of the ratios.
EFFNET_FP32 = ("fast", "ort", "openvino", "plain")
EFFNET_TRAINING = ("default", "memory-saving")

__all__ = ["EFFNET_FP32", "EFFNET_INFERENCE", "EFFNET_TRAINING", "LIBRARIES"]
