"""Formatting shared by the command modules (tables and figures as the CLI prints them)."""

from __future__ import annotations

import os
from pathlib import Path

from effnet.files import writable_parent


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def fmt_flops(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def check_device(name: str, option: str = "--device") -> None:
    """``auto``, ``cpu``, ``cuda[:N]`` or ``mps`` that this PyTorch can use, else one line
    saying why (a CPU-only build, no visible GPU, an index out of range)."""
    import torch

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option} {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ValueError(f"{option} {name}: this PyTorch ({torch.__version__}) is a CPU-only build; use "
                             f"--device cpu, or install a CUDA build of PyTorch")
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"{option} {name}: no CUDA device is visible (check the driver and "
                             f"CUDA_VISIBLE_DEVICES); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{option} {name}: only {count} CUDA device(s) are visible (cuda:0 to "
                             f"cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {name}: MPS (Apple GPU) is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{option} {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def check_out_folder(path: str | Path, option: str = "--out") -> Path:
    """A folder a command will write its results into, checked before any training: not an
    existing file, not under a file, and writable where it will be created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file; expected a folder for the results (choose another path)")
    if out.exists():
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{option} {out}: cannot write in {out} (permission denied); choose another folder")
        return out
    parent = writable_parent(out)
    # Some places refuse new folders whatever the permissions say (/proc, a read-only mount):
    # try once, and leave nothing behind.
    try:
        out.mkdir(parents=True)
    except OSError as e:
        raise ValueError(f"{option} {out}: this folder cannot be created ({e.strerror}); choose another "
                         "folder") from None
    for made in [out, *out.parents]:
        if made == parent:
            break
        made.rmdir()
    return out


def check_positive(option: str, value: int | float | None) -> None:
    """Counts and sizes the user typed must be positive (0 used to mean "everything" silently)."""
    if value is not None and value <= 0:
        raise ValueError(f"{option} {value}: expected a positive number")
