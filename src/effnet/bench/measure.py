"""Measurement primitives of the side-by-side benchmark: peak training memory and the training
step; the interleaved timing (:func:`effnet.profile.measure.interleaved`) and the saved
activations counter are shared with ``effnet profile`` and the runtime choice."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from effnet.profile.measure import interleaved, median_ms, rotation, saved_activation_bytes, sync

MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: peak RSS needs Linux")


def resident_bytes() -> tuple[int, int]:
    """(resident set size now, its peak since the last reset) of this process, in bytes (Linux:
    ``VmRSS``, ``VmHWM``; :func:`peak_memory_bytes` resets the peak)."""
    return _status_kib("VmRSS") * 1024, _status_kib("VmHWM") * 1024


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak memory ``fn()`` uses above what the process held just before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before. CPU: rise of the
    peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``, Linux >= 4.0)
    above ``VmRSS`` before the call. RSS sees every allocator (ATen, oneDNN, Python), which
    ``tracemalloc`` does not; it is noisy to about +-10% and memory freed earlier in the
    process may be reused, which is why :func:`effnet.bench.run` measures each model in a fresh
    subprocess.
    """
    device = torch.device(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark to the current RSS
    except OSError as e:
        raise RuntimeError(f"cannot reset the peak RSS (/proc/self/clear_refs: {e}); peak memory on CPU "
                           "needs Linux >= 4.0 (pass --no-peak to skip it)") from e
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, autocast: torch.dtype | None = None) -> None:
    """One training step: forward, cross-entropy, backward, optimiser step, gradients freed."""
    device_type = y.device.type
    with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
        loss = nn.functional.cross_entropy(forward(x).float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


__all__ = ["MIB", "interleaved", "median_ms", "peak_memory_bytes", "resident_bytes", "rotation", "saved_activation_bytes",
           "sync", "train_step"]
