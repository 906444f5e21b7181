"""Where OpenVINO's CPU plugin spends a B0 batch, fp32 against effnet's int8 (the OpenVINO QDQ
layout), from its per-layer counters (``PERF_COUNT``), summed by layer type and kernel:

    python benchmarks/openvino_profile.py            # needs openvino and onnxruntime (the quantiser)

Random weights and calibration, 224 px, batch 8 (the int8 session's micro-batch), 2 threads.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's effnet

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import torch  # noqa: E402

import effnet  # noqa: E402
from effnet.deploy.export import export  # noqa: E402
from effnet.deploy.quantize import quantize_onnx  # noqa: E402

torch.manual_seed(0)
folder = Path(tempfile.mkdtemp(prefix="effnet-ov-profile-"))
m = effnet.create_model("efficientnet_b0").eval()
export(m, folder / "fp32.onnx", "onnx", resolution=224, dynamic_batch=True, fast=True, overwrite=True)
calib = [torch.randn(8, 3, 224, 224) for _ in range(4)]
quantize_onnx(folder / "fp32.onnx", folder / "int8.onnx", calib, target="openvino")
core = ov.Core()
x = np.random.randn(8, 3, 224, 224).astype(np.float32)
for name in ("fp32", "int8"):
    model = core.read_model(str(folder / f"{name}.onnx"))
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([8, 3, 224, 224])})
    cm = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32",
                                           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "PERF_COUNT": True})
    rq = cm.create_infer_request()
    for _ in range(3):  # warm-up
        rq.infer({0: x})
    agg: dict[tuple[str, str], float] = collections.defaultdict(float)
    calls = []
    for _ in range(10):
        t = time.perf_counter()
        rq.infer({0: x})
        calls.append(time.perf_counter() - t)
        for p in rq.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                agg[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1000 / 10
    print(f"== {name}: median call {sorted(calls)[5] * 1000:.1f} ms (batch 8), summed layer time {sum(agg.values()):.1f} ms")
    for (nt, et), ms in sorted(agg.items(), key=lambda kv: -kv[1])[:14]:
        print(f"   {nt:22s} {et:40s} {ms:7.2f} ms")
