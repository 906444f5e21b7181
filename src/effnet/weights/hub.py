"""The local cache of published pretrained weights.

:func:`pretrained_file` returns the converted, self-describing file of a registry entry's
published weights from the cache directory (``$EFFNET_CACHE`` or ``~/.cache/effnet``). Only on
a cache miss does it call :mod:`effnet.weights.download`, which downloads the checkpoint,
verifies its checksum and converts it: the converters load only then. Later calls are offline.
A cache directory that cannot be created or written is refused with a :class:`CacheDirError`
that names the variable and the path. Where each file comes from is registry data
(:data:`effnet.registry.PRETRAINED`).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from effnet.registry import PRETRAINED, Checksum, Entry, PretrainedSource, get_spec

__all__ = ["CACHE_ENV", "PRETRAINED", "CacheDirError", "Checksum", "PretrainedSource", "cache_dir",
           "cached_path", "fetch_pretrained", "pretrained_file", "usable_cache_dir"]

log = logging.getLogger(__name__)

CACHE_ENV = "EFFNET_CACHE"


class CacheDirError(ValueError):
    """The weights cache directory cannot be created or written (a configuration error: the
    message names ``$EFFNET_CACHE`` and the path, and the CLI prints it as it is)."""


def cache_dir() -> Path:
    """``$EFFNET_CACHE`` if set, else ``~/.cache/effnet``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "effnet"


def usable_cache_dir() -> Path:
    """:func:`cache_dir`, created if needed and checked to be a writable directory."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A directory can exist and still refuse files (read-only mount, another user's folder):
        # find out now rather than halfway through a download.
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise CacheDirError(_cache_problem(directory, e)) from e
    return directory


def _cache_problem(directory: Path, e: OSError) -> str:
    """Say which path is wrong and why, and how to choose another one."""
    # The OS error names only the path it failed on; find the component that is in the way.
    blocker = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
    if blocker == directory:
        why = "is a file, not a directory"
    elif blocker is not None:
        why = f"lies under {blocker}, which is a file, not a directory"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "cannot be written (no permission, or a read-only file system)"
    else:
        why = f"cannot be used ({e.strerror or e})"
    env = os.environ.get(CACHE_ENV)
    chosen = f"{CACHE_ENV}={env}" if env else f"the default cache ({CACHE_ENV} is not set)"
    return (f"weights cache {directory} {why}; it was chosen by {chosen}. Set {CACHE_ENV} to a "
            f"writable directory (it is created if missing)")


def cached_path(name: str, source: PretrainedSource) -> Path:
    """Where the converted weights of ``name`` live in the cache."""
    return cache_dir() / f"{name}.{source.source}.safetensors"


def pretrained_file(entry: Entry) -> Path:
    """The converted, cached weight file of a registry entry's published weights; on a cache
    miss they are downloaded and converted (:mod:`effnet.weights.download`), once per machine.

    Offline with no cached copy, the error names the URL to fetch by other means and the
    ``effnet convert`` command that puts the result where this function looks.
    """
    if entry.pretrained is None:
        raise _unpublished(entry.name, PRETRAINED)
    path = cached_path(entry.name, entry.pretrained)
    if path.is_file():
        return path
    # One download per machine: under torchrun every process asks at once. The first takes the
    # lock and fetches; the others wait on it and then find the file in the cache. filelock
    # rather than fcntl.flock: it also works on Windows and falls back to a lock file where the
    # file system has no flock (some NFS mounts).
    lock = FileLock(usable_cache_dir() / f".{path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process downloading %s (lock %s)", entry.name, lock.lock_file)
        lock.acquire()
    try:
        if path.is_file():
            return path
        # Local: the download step loads the converters, which a cache hit never needs.
        from effnet.weights.download import download_and_convert

        return download_and_convert(entry, path)
    finally:
        lock.release()


def fetch_pretrained(name: str, table: dict[str, PretrainedSource] | None = None) -> Path:
    """:func:`pretrained_file` of registered model ``name`` (``effnet pretrained NAME``);
    ``table`` stands in for the registry's :data:`~effnet.registry.PRETRAINED`."""
    table = PRETRAINED if table is None else table
    if name not in table:
        raise _unpublished(name, table)
    return pretrained_file(Entry(name, get_spec(name), table[name]))


def _unpublished(name: str, table: dict[str, PretrainedSource]) -> ValueError:
    return ValueError(f"no published weights known for {name!r}: expected one of {sorted(table)}; convert "
                      f"a checkpoint yourself with `effnet convert` and pass weights=PATH")
