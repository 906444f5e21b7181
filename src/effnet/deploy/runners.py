"""How each runtime runs an ONNX file: a function of a float32 (N, C, H, W) tensor that returns the
outputs as a tensor. :mod:`effnet.deploy.runtime` builds its sessions on these; this module knows
nothing of exports, caches or checks.

ONNX Runtime and OpenVINO are optional (``pip install 'effnet[runtime]'``), so each is imported
inside the function that uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["MICRO_BATCH", "RUNNERS", "keep_signal_stack", "openvino_runner", "ort_runner"]


def ort_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime's CPU provider on ``path``: ``threads`` intra-op threads, one call at a time, every
    graph optimisation on."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name_in, name_out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        (y,) = sess.run([name_out], {name_in: np.ascontiguousarray(x.detach().float().cpu().numpy())})
        return torch.from_numpy(np.asarray(y))

    return run


class SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2) on Linux (x86-64 and arm64 alike)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Give the calling thread back the alternate signal stack it had, should the block change it.

    OpenVINO's CPU plugin (2026.4 checked) installs an alternate signal stack of its own on the
    thread that first compiles a model for a new ``ov.Core`` and, when that core goes, puts back
    the stack it found. With two cores on one thread freed oldest first, the second puts back the
    first's stack, already unmapped: every later signal with a Python handler (Python installs
    them all SA_ONSTACK) writes its frame into that memory, by then reused by the Python heap,
    and the process crashes at random (a SIGCHLD handler + a subprocess was enough; faulthandler,
    on the same stack, printed nothing). Restoring the thread's own stack after each call keeps
    the plugin's stack out of use, so freeing it is harmless; the plugin then also skips its
    restore (it restores only a stack that is still its own). Signals are then handled on the
    stack the thread had before OpenVINO (faulthandler's 16 KiB under pytest, or none: the
    thread's own stack), as in a process that never loaded it."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = SignalStack()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = SignalStack()
        libc.sigaltstack(None, ctypes.byref(now))
        if (now.ss_sp, now.ss_size, now.ss_flags) != (before.ss_sp, before.ss_size, before.ss_flags):
            libc.sigaltstack(ctypes.byref(before), None)


def openvino_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """OpenVINO's CPU plugin on ``path`` (an ONNX or IR file): fp32, ``threads`` threads, one model
    compiled per input shape."""
    import numpy as np
    import openvino as ov

    with keep_signal_stack():  # see there: OpenVINO's CPU plugin swaps the thread's signal stack
        core = ov.Core()
    base = core.read_model(str(path))
    # fp32 kept (OpenVINO's CPU plugin runs bf16 where the CPU has it: ~1e-2 off, not 1e-4);
    # one stream, latency hint: one synchronous call uses every thread.
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled: dict[tuple[int, ...], Any] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in compiled:  # a static shape per batch size compiles to faster kernels
            model = base.clone()
            model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
            with keep_signal_stack():
                compiled[shape] = core.compile_model(model, "CPU", config).create_infer_request()
        request = compiled[shape]
        request.infer({0: np.ascontiguousarray(x.detach().float().cpu().numpy())})
        return torch.from_numpy(np.array(request.get_output_tensor(0).data))

    return run


#: Images per runtime call for a larger batch, by (runtime, precision); None: the whole batch in
#: one call. Measured at batch 32, 2 threads, on a 2-core AMD EPYC (2 MiB L2 per core, 32 MiB L3):
#: B0 at 224 px ran in chunks of 4 in 194 ms against 248 ms whole on ONNX Runtime fp32 and in 212
#: against 273 ms on OpenVINO fp32; B3 at 300 px on ONNX Runtime fp32 in 912 (chunks of 4), 910 (8),
#: 937 (2) against 997 ms whole, so the count is kept, not scaled by the input's pixels. OpenVINO int8
#: was fastest in chunks of 8 (B0: 133 against 163 ms); ONNX Runtime int8 whole (190 ms; 218 ms in
#: chunks of 4). A chunk's feature maps stay nearer the caches than a whole batch's.
MICRO_BATCH: dict[tuple[str, str], int | None] = {
    ("onnxruntime", "fp32"): 4, ("openvino", "fp32"): 4, ("openvino", "int8"): 8, ("onnxruntime", "int8"): None}


#: runtime name -> runner.
RUNNERS: dict[str, Callable[[Path, int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "onnxruntime": ort_runner, "openvino": openvino_runner}
