"""Atomic file writes, shared by weights, checkpoints, specs, metrics and plots."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterable
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
    Errors name ``path`` (not the temporary file); a writer that fails on a full disk with a
    message of its own (torch, safetensors) is reported as the full disk it is.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    os.close(fd)
    try:
        write(tmp)
        commit(tmp, path)
    except OSError as e:
        raise _naming(e, path) from e
    except Exception as e:
        if disk_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` about ``path`` rather than the temporary file beside it."""
    if e.errno is None:
        return e
    return type(e)(e.errno, e.strerror, str(path))


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Less than ``margin`` bytes left where ``folder`` lives (checked while the failed temporary
    file still holds its space)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def check_output(path: str | Path, *, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 option: str = "--overwrite") -> Path:
    """The one rule for every file a command writes, checked before any work is done:

    - never onto one of the command's ``inputs`` (the same path or the same file through a link);
    - never over an existing file unless ``overwrite`` (the user's ``option``);
    - never onto a folder, nor under a path whose parent is a file.

    Returns ``path``; raises ValueError / FileExistsError / IsADirectoryError naming the path.
    """
    out = Path(path)
    for src in inputs:
        src = Path(src)
        same = os.path.abspath(out) == os.path.abspath(src)
        if not same and out.exists() and src.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, src)
        if same:
            raise ValueError(f"output {out} is also an input ({src}): writing it would destroy the input; "
                             "choose another output path")
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{out} is a folder; expected a file path for the output", str(out))
    if out.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, f"{out} already exists: pass {option} to replace it, or choose "
                              "another path", str(out))
    writable_parent(out)
    return out


def writable_parent(out: Path) -> Path:
    """The nearest existing folder above ``out``, where ``out`` (a file or a folder) would be
    created; refused when that is a file or not writable."""
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"cannot write {out}: {parent} is a file, not a folder",
                                         str(out))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, f"cannot write {out}: folder {parent} is not writable",
                                      str(out))
            return parent
    return Path(out.anchor or ".")
