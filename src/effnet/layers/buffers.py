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
what one step's BN outputs hold at their peak, which the step holds anyway, and their pages
are not faulted in again each step (except those given back, below).

A buffer is handed out only while nothing but the pool refers to it: no Python object (a hook
that kept a gradient, a ``saved_tensors_hooks`` pack), no C++ reference (autograd's saved
tensors and gradient buffers, a view's base) and no other tensor on its storage. Those three
counts are read from PyTorch (``sys.getrefcount``, ``Tensor._use_count``,
``torch._C._storage_Use_Count``); where this PyTorch lacks them the pool allocates afresh every
time, as if it were not there.

Keeping a buffer resident from its last use in one step to its first use in the next costs
memory exactly where a step peaks: in the backward of the first, largest layers, every later
layer's buffer sits idle. So once the backward has passed the first layer that asked for a
shape, the pages of that shape's idle buffers are given back to the kernel
(``madvise(MADV_DONTNEED)``: the buffer stays allocated, its pages read as zeros) and are
faulted in again when the next forward writes them. The buffers that the backward uses last
(the first layers') stay resident for the next forward, which uses them first. This is done on
Linux where the pages are huge (2 MiB; ``effnet.hostmem.huge_pages_in_effect``), since faulting in 4 KiB pages
again costs five times as much. B0 at 224 px, batch 32, 2 threads (``benchmarks/train_step.py
effnet effnet:keeppages --resolution 224 --isolated``): peak over a run 1884-1968 -> 1266-1344
MiB, first step 1671-1683 -> 1040-1138 MiB, for 973 MiB faulted in again each step (about 80 ms,
~5%, at the measured 0.08 ms per MiB; the VM's noise hid it: step medians -5% to +19%).
``pool.gives_back_pages = False`` keeps every page.

One pool serves one model (:class:`effnet.model.ConvNet` makes it); ``model.eval()`` empties it,
and a copy of the model gets an empty pool of its own.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading
from typing import Any

import torch

from effnet.hostmem import huge_pages_in_effect

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


def _madvise() -> Any:
    """libc's ``madvise`` on Linux (where MADV_DONTNEED frees a private page at once and a later
    touch maps a zeroed one), else None: the pool then keeps every page."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (AttributeError, OSError):  # pragma: no cover - a libc without it
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux
_PAGE = mmap.PAGESIZE  # 4 KiB on x86-64; 16 or 64 KiB on some arm64 / ppc64le kernels


def _give_back_pages(t: torch.Tensor) -> int:
    """Give the whole pages inside ``t``'s memory back to the kernel (its contents become zeros);
    returns the bytes given back. Only for a buffer nothing else holds."""
    start = -(-t.data_ptr() // _PAGE) * _PAGE
    end = (t.data_ptr() + t.nbytes) // _PAGE * _PAGE
    if _MADVISE is None or end <= start or _MADVISE(start, end - start, _MADV_DONTNEED) != 0:
        return 0
    return end - start


class BufferPool:
    """CPU tensors by (shape, strides, dtype), each handed out again once nothing else refers to it.

    :meth:`empty_like` is ``torch.empty_like`` (contents undefined) that may return a buffer this
    pool made before. :meth:`next_step` (called by the model at each training forward) drops the
    shapes the previous step did not use (a new resolution or a smaller last batch would
    otherwise keep the old ones); :meth:`clear` drops everything."""

    #: Give idle buffers' pages back during the backward (module docstring): on Linux, where the
    #: pages are huge (``effnet.hostmem.huge_pages_in_effect``, read at import). Giving pages back
    #: pays only then: writing 1.5 GB of given-back buffers again cost 0.08 ms per MiB with huge
    #: pages and 0.41 with 4 KiB pages, against 0.04 resident (one thread, the development VM).
    #: Settable; False keeps them all.
    gives_back_pages = _MADVISE is not None and huge_pages_in_effect()

    def __init__(self) -> None:
        self._buckets: dict[_Key, list[torch.Tensor]] = {}
        self._last_used: dict[_Key, int] = {}
        self._step = 0
        self._lock = threading.Lock()  # two threads must never be handed the same free buffer
        # Each asking layer's place in the forward order (by id, numbered as first seen), the
        # first place that asked for each shape, the place each kept buffer was last handed to
        # (by data pointer), and the kept buffers whose pages are given back and not yet reused.
        # Kept across steps: a backward whose graph came from an earlier forward (two forwards
        # before one backward, a no-grad forward in between) still knows its places.
        self._places: dict[int, int] = {}
        self._first_place: dict[_Key, int] = {}
        self._handed: dict[int, int] = {}
        self._given: set[int] = set()
        self.pages_given_back = 0  # bytes, since the pool was made

    def empty_like(self, like: torch.Tensor, keep: bool = True, layer: object | None = None) -> torch.Tensor:
        """A CPU tensor of ``like``'s shape, strides and dtype; one of the pool's when one is free.
        Else a new one, which the pool keeps for later steps only with ``keep`` (a short-lived
        buffer, e.g. a gradient, would otherwise stay allocated into the next step's peak).

        ``layer``: any object that stands for the asking layer in a forward (its BN weight); the
        pool numbers layers in the order they first ask (a checkpointed block's second forward
        keeps their numbers). A ``like`` that is itself a kept buffer handed to a layer is a
        backward's request (that BN output's gradient or recomputation): the backward has reached
        that layer, so no layer after it is left to run (:meth:`_give_back`)."""
        if _UNHELD is None or like.device.type != "cpu":
            return torch.empty_like(like)
        key = (tuple(like.shape), like.stride(), like.dtype)
        with self._lock:
            self._last_used[key] = self._step
            place = None
            if layer is not None:
                place = self._places.setdefault(id(layer), len(self._places))
                self._first_place[key] = min(place, self._first_place.get(key, place))
            reached = self._handed.get(like.data_ptr())
            if reached is not None and self.gives_back_pages:
                self._give_back(reached)
            bucket = self._buckets.setdefault(key, [])
            for i in range(len(bucket)):  # by index: a loop variable would be one more reference
                if _holders(bucket[i]) == _UNHELD:
                    self._hand(bucket[i], place)
                    return bucket[i]
            t = torch.empty_like(like)
            if keep:
                bucket.append(t)
                self._hand(t, place)
            return t

    def _hand(self, t: torch.Tensor, place: int | None) -> None:
        self._given.discard(t.data_ptr())  # in use again: its pages come back as it is written
        if place is not None:
            self._handed[t.data_ptr()] = place
        else:
            self._handed.pop(t.data_ptr(), None)  # a backward's gradient or recomputation: no layer's output

    def _give_back(self, reached: int) -> None:
        """The pages of the idle buffers of every shape first asked for by a layer after layer
        ``reached``: the backward runs the layers in reverse, so none of them asks again for it
        in this step. A buffer still in use (the gradient the running backward reads, another
        graph's output) is tried again at the next request."""
        for key, first in self._first_place.items():
            if first <= reached:
                continue
            bucket = self._buckets.get(key, [])
            for i in range(len(bucket)):
                if bucket[i].data_ptr() not in self._given and _holders(bucket[i]) == _UNHELD:
                    self._given.add(bucket[i].data_ptr())
                    self.pages_given_back += _give_back_pages(bucket[i])

    def next_step(self) -> None:
        """A training step begins: forget the shapes the previous step did not ask for."""
        with self._lock:
            self._step += 1
            for key in [k for k, used in self._last_used.items() if used < self._step - 1]:
                for t in self._buckets.pop(key, []):
                    self._handed.pop(t.data_ptr(), None)
                    self._given.discard(t.data_ptr())
                del self._last_used[key]
                self._first_place.pop(key, None)

    def clear(self) -> None:
        """Drop every buffer (those still in use live on with their users)."""
        with self._lock:
            self._buckets.clear()
            self._last_used.clear()
            self._places.clear()
            self._first_place.clear()
            self._handed.clear()
            self._given.clear()

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
