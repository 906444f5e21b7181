"""Measurement primitives of the side-by-side benchmark: interleaved timing, saved activations
and peak training memory.

Every timing is *interleaved*: the candidates are sampled in rounds, the order rotating each
round, so load from other processes and clock changes fall on all of them alike (a benchmark
that times library A for a minute, then library B, measures the machine as much as the code).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from effnet.profile import saved_activation_bytes  # one counter, shared with effnet profile --memory

MIB = 2**20


def rotation(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order candidates are sampled in each round: round ``r`` starts at ``names[r % n]``.

    >>> rotation(["a", "b", "c"], 4)
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    names = list(names)
    n = len(names)
    return [names[r % n:] + names[:r % n] if n else [] for r in range(rounds)]


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels: CUDA runs asynchronously, so a timer alone would measure the launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[], object]], *, warmup: int, iters: int, rounds: int,
    device: torch.device | str = "cpu", on_call: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function: ``iters`` samples each, spread over ``rounds`` rounds in
    :func:`rotation` order, after ``warmup`` untimed calls of each. ``on_call(name)`` is told of
    every timed call (progress bars; the tests read the order from it)."""
    if iters < 1:
        raise ValueError(f"iters: expected >= 1, got {iters}")
    rounds = max(1, min(rounds, iters))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for order, n in zip(rotation(list(fns), rounds), per_round):
        for name in order:
            for _ in range(n):
                t0 = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                if on_call is not None:
                    on_call(name)
    return times


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


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
