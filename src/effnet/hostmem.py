"""How the process gets large blocks of CPU memory: the cost a CPU training step pays besides its
arithmetic.

A training step of B0 at 224 px, batch 32, allocates activations and gradients of up to 150 MB
each and frees them again. By default glibc serves each such block with a fresh ``mmap`` and
returns it with ``munmap`` on free, so the kernel faults in and zeroes every 4 KiB page on first
touch, every step: filling a fresh 150 MB tensor took 45 ms on the development machine, the same
write into a reused buffer 7 ms. Two switches remove most of that cost; both are process-wide,
and both apply to every library in the process (docs/benchmarks.md has the measurements):

- :func:`enable_huge_pages` asks torch's CPU allocator to back blocks of 2 MiB and more with
  transparent huge pages (``THP_MEM_ALLOC_ENABLE``, which torch reads once, at its first
  allocation): one fault per 2 MiB instead of per 4 KiB. The memory is still returned on free, so
  the peak barely moves. ``effnet`` commands turn it on before they import torch (unless the
  variable is set); from Python, set the variable before ``import torch``.
- :func:`reuse_freed_memory` makes glibc keep freed blocks in the heap and hand them out again
  (``mallopt``): no page faults at all after the first step, at the price of a higher peak
  (freed blocks are not returned, and the heap fragments). ``effnet train --reuse-host-memory``.

Neither changes a number a network computes. :func:`return_freed_memory` is for measuring: it
hands the heap's free pages back before a peak is read. :func:`available_memory_bytes` and
:func:`check_memory` tell a command, before it starts, whether its activations can fit at all.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["HUGE_PAGES_ENV", "available_memory_bytes", "check_memory", "enable_huge_pages", "huge_pages_in_effect",
           "huge_pages_mode", "return_freed_memory", "reuse_freed_memory"]

#: The variable torch's CPU allocator reads (c10 ``alloc_cpu``): 1 = madvise(MADV_HUGEPAGE) on
#: blocks of 2 MiB and more.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from (and go back to) the heap instead of mmap/munmap: above B0's
#: largest training tensor at 224 px (154 MB) with room for batch 64 and V2-S's 384 px.
REUSE_BELOW_BYTES = 1 << 30


def huge_pages_mode(path: Path = _THP_MODE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``; the one in
    brackets in ``path``), or ``None`` where the kernel does not say (not Linux, no THP)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_in_effect() -> bool:
    """Whether torch's large CPU blocks are backed by transparent huge pages now: the kernel gives
    them to every process (``always``), or to the blocks torch marks (``madvise`` with
    ``THP_MEM_ALLOC_ENABLE=1``, as :func:`enable_huge_pages` sets)."""
    mode = huge_pages_mode()
    return mode == "always" or (mode == "madvise" and os.environ.get(HUGE_PAGES_ENV) == "1")


def enable_huge_pages(environ: dict[str, str] | None = None) -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` for torch's allocator in ``environ`` (``os.environ`` by default),
    unless the user set the variable (either way) or the kernel's mode is ``never`` / unknown.
    Returns whether the variable is now ``1``.

    It only takes effect if torch has not allocated yet, i.e. before ``import torch``: called
    after that, it logs so and leaves the variable alone (changing it would then mislead)."""
    env = os.environ if environ is None else environ
    if HUGE_PAGES_ENV in env:
        return env[HUGE_PAGES_ENV] == "1"
    if huge_pages_mode() not in ("always", "madvise"):
        return False
    if environ is None and "torch" in sys.modules:
        log.debug("huge pages: torch is already imported; set %s=1 before importing it", HUGE_PAGES_ENV)
        return False
    env[HUGE_PAGES_ENV] = "1"
    return True


def _glibc() -> ctypes.CDLL | None:
    """glibc, where this process's malloc is glibc's (Linux with glibc), else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL("libc.so.6")


def reuse_freed_memory(limit_bytes: int = REUSE_BELOW_BYTES) -> bool:
    """Keep freed blocks up to ``limit_bytes`` in glibc's heap for reuse, process-wide and for
    the rest of the process (glibc cannot hand back its previous, adaptive setting). Returns
    whether it took effect: ``False`` (with a log line) off glibc, or where the user already
    set ``MALLOC_MMAP_THRESHOLD_`` (theirs is kept)."""
    if not 1 <= limit_bytes < 2**31:  # mallopt takes a C int
        raise ValueError(f"reuse_freed_memory: limit_bytes must be in [1, 2**31), got {limit_bytes}")
    libc = _glibc()
    if libc is None:
        log.info("reuse host memory: only glibc's malloc can be tuned (this is %s %s); left as it is",
                 sys.platform, platform.libc_ver()[0] or "without glibc")
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        log.info("reuse host memory: MALLOC_MMAP_THRESHOLD_ is set; keeping it")
        return False
    # The trim threshold first: with it, freed memory at the top of the heap stays mapped too.
    ok = libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes) == 1
    if ok:
        log.info("reuse host memory: blocks up to %d MiB are kept in the heap for reuse", limit_bytes >> 20)
    else:
        log.warning("reuse host memory: glibc refused mallopt(%d); left as it is", limit_bytes)
    return ok


def return_freed_memory() -> bool:
    """Hand the memory glibc's heap holds free back to the kernel (``malloc_trim(0)``), so that the
    resident size counts only memory in use: a memory measurement that starts after earlier work
    in the process (a ``torch.compile`` step, another network) would otherwise see part of its
    peak served from pages already resident and report too little. Measured on torchvision's B0,
    224 px, batch 32, the peak of a training step made after one earlier step in the same process:
    compiled, 1153 MiB above the resident size without it and 1802 MiB with it; eager, 2035 and
    2889 MiB (a first step in a fresh process: about 2830). Returns whether it could ask glibc
    (``False`` off glibc; glibc's own answer says only whether pages went back)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def available_memory_bytes() -> int | None:
    """Memory a new allocation can use now: ``MemAvailable`` from /proc/meminfo (Linux), else
    free pages from ``os.sysconf``; ``None`` when neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, fix: str, available: int | None = None) -> None:
    """Refuse a job whose memory lower bound ``need`` exceeds what is available (``available``,
    default this machine's free memory), saying both and what to change (``fix``)."""
    have = available_memory_bytes() if available is None else available
    if have is not None and need > have:
        raise ValueError(f"{what} needs at least {_gib(need)} of memory for activations, {_gib(have)} is "
                         f"available: {fix}")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**27 else f"{n / 2**20:,.1f} MiB"
