"""Atomic file writes, shared by weights, checkpoints, specs, metrics and plots."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The process umask, read once (os.umask can only be read by setting it): mkstemp creates
# files 0600, and a renamed file keeps that mode, so the final mode is restored from it.
_UMASK = os.umask(0)
os.umask(_UMASK)


def commit(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary file onto ``path`` on the same file system: fsync it, give it
    the usual ``0666 & ~umask`` mode (mkstemp/mkdtemp create private files), rename."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: a kill never leaves a torn file.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic), is
    fsynced before the rename, gets the usual ``0666 & ~umask`` mode, and is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
