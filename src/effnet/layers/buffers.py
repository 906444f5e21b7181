"""Full-size CPU training buffers kept from one step to the next.

On the CPU a training step's large tensors cost about as much to obtain as to compute: glibc
hands each block above its mmap threshold (at most 32 MiB) out as fresh pages and returns it on
free, so every step the kernel faults in and zeroes them again. For B0 at 224 px, batch 32, that
was 0.4-1.2 s of system time in a 1.5-2.3 s step on a 2-core VM (``effnet bench``'s
``train_bN_kernel_ms``). Keeping every freed block (``effnet.hostmem.reuse_freed_memory``) removes
the cost but fragments the heap: the peak rose by ~30%.

A :class:`BufferPool` keeps only the buffers effnet's own BatchNorm + activation op asks for (the
BN output it saves for backward, and the gradient it computes from it), by shape: a buffer whose
layer's backward is done is handed to the next request of its shape, in the same step (a
gradient takes the BN output its layer no longer needs) or in the next. So the pool holds about
what one step's BN outputs hold at their peak, which the step holds anyway; the pages are
faulted in once.

A buffer is handed out only while nothing but the pool refers to it: no Python object (a hook
that kept a gradient, a ``saved_tensors_hooks`` pack), no C++ reference (autograd's saved
tensors and gradient buffers, a view's base) and no other tensor on its storage. Those three
counts are read from PyTorch (``sys.getrefcount``, ``Tensor._use_count``,
``torch._C._storage_Use_Count``); where this PyTorch lacks them the pool allocates afresh every
time, as if it were not there.

One pool serves one model (:class:`effnet.model.ConvNet` makes it); ``model.eval()`` empties it,
and a copy of the model gets an empty pool of its own.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch

__all__ = ["BufferPool"]

_Key = tuple[tuple[int, ...], tuple[int, ...], torch.dtype]


def _holders(t: torch.Tensor) -> tuple[int, int, int]:
    """(Python references, C++ references to the tensor, references to its storage), each
    counted from the same call path for every tensor, so that a count compares with
    :data:`_UNHELD`: a list's item passed straight in."""
    return sys.getrefcount(t), t._use_count(), torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _calibrate() -> tuple[int, int, int] | None:
    """The counts of a tensor that only a list holds, in this Python and PyTorch; None where
    PyTorch lacks the counters (the pool then never reuses)."""
    try:
        held_by_list = [torch.empty(1)]
        unheld = _holders(held_by_list[0])
        held_by_list.append(held_by_list[0].view(1))  # a second holder must show in the counts
        if _holders(held_by_list[0]) == unheld:
            return None
        return unheld
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - an older or newer PyTorch
        return None


_UNHELD = _calibrate()


class BufferPool:
    """CPU tensors by (shape, strides, dtype), each handed out again once nothing else refers to it.

    :meth:`empty_like` is ``torch.empty_like`` (contents undefined) that may return a buffer this
    pool made before. :meth:`next_step` (called by the model at each training forward) drops the
    shapes the previous step did not use (a new resolution or a smaller last batch would
    otherwise keep the old ones); :meth:`clear` drops everything."""

    def __init__(self) -> None:
        self._buckets: dict[_Key, list[torch.Tensor]] = {}
        self._last_used: dict[_Key, int] = {}
        self._step = 0
        self._lock = threading.Lock()  # two threads must never be handed the same free buffer

    def empty_like(self, like: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """A CPU tensor of ``like``'s shape, strides and dtype; one of the pool's when one is free.
        Else a new one, which the pool keeps for later steps only with ``keep`` (a short-lived
        buffer, e.g. a gradient, would otherwise stay allocated into the next step's peak)."""
        if _UNHELD is None or like.device.type != "cpu":
            return torch.empty_like(like)
        key = (tuple(like.shape), like.stride(), like.dtype)
        with self._lock:
            self._last_used[key] = self._step
            bucket = self._buckets.setdefault(key, [])
            for i in range(len(bucket)):  # by index: a loop variable would be one more reference
                if _holders(bucket[i]) == _UNHELD:
                    return bucket[i]
            t = torch.empty_like(like)
            if keep:
                bucket.append(t)
            return t

    def next_step(self) -> None:
        """A training step begins: forget the shapes the previous step did not ask for."""
        with self._lock:
            self._step += 1
            for key in [k for k, used in self._last_used.items() if used < self._step - 1]:
                del self._buckets[key], self._last_used[key]

    def clear(self) -> None:
        """Drop every buffer (those still in use live on with their users)."""
        with self._lock:
            self._buckets.clear()
            self._last_used.clear()

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds."""
        return sum(t.nbytes for bucket in self._buckets.values() for t in bucket)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    # A model's copy (deepcopy: EMA, torch.save of the module) gets an empty pool of its own.
    def __deepcopy__(self, memo: dict[int, Any]) -> BufferPool:
        return BufferPool()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (BufferPool, ())

    def __repr__(self) -> str:
        return f"BufferPool({len(self)} buffers, {self.nbytes / 2**20:.1f} MiB)"
