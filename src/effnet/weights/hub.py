"""Published pretrained weights: where they live, how to check them, and a local cache.

``fetch_pretrained(name)`` downloads the canonical file for an effnet model name, verifies its
checksum, converts it and keeps only the converted, self-describing file under the cache
directory (``$EFFNET_CACHE`` or ``~/.cache/effnet``). Later calls are offline. A cache
directory that cannot be created or written is refused with a :class:`CacheDirError` that names
the variable and the path.

Checksums are recorded as published, which is not always a full SHA-256:

- torchvision and timm name their files ``<name>-<first 8 hex digits of the SHA-256>.pth``
  (the ``torch.hub`` convention): only that prefix is known, and only it is checked.
- Keras publishes MD5 digests (``WEIGHTS_HASHES`` in ``keras.applications``), checked in full.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from effnet.files import atomic_write

log = logging.getLogger(__name__)

CACHE_ENV = "EFFNET_CACHE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """A published digest: ``algorithm`` is ``sha256`` or ``md5``; ``prefix`` marks a digest of
    which only the leading hex digits are known (e.g. the 8 in a torch.hub file name)."""

    algorithm: str
    hexdigest: str
    prefix: bool = False

    def matches(self, digest: str) -> bool:
        return digest.startswith(self.hexdigest) if self.prefix else digest == self.hexdigest

    def describe(self) -> str:
        kind = f"first {len(self.hexdigest)} hex digits of the" if self.prefix else "full"
        return f"{kind} {self.algorithm.upper()} {self.hexdigest}"


@dataclass(frozen=True)
class PretrainedSource:
    """The canonical published file for one effnet model name."""

    url: str
    source: str      # converter: torchvision | timm | keras
    model: str       # the peer's model name
    checksum: Checksum

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _tv(name: str, file: str) -> PretrainedSource:
    return PretrainedSource(f"https://download.pytorch.org/models/{file}", "torchvision", name,
                            Checksum("sha256", file.rsplit("-", 1)[1].split(".")[0], prefix=True))


def _timm(name: str, release: str, file: str) -> PretrainedSource:
    url = f"https://github.com/rwightman/pytorch-image-models/releases/download/{release}/{file}"
    return PretrainedSource(url, "timm", name,
                            Checksum("sha256", file.rsplit("-", 1)[1].split(".")[0], prefix=True))


def _keras(name: str, url: str, md5: str) -> PretrainedSource:
    return PretrainedSource(url, "keras", name, Checksum("md5", md5))


_KERAS_V2 = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"

#: effnet name -> canonical published ImageNet-1k weights (with classifier). torchvision where
#: it has the model; timm's TF ports for B8 / L2 / V2-XL; Keras for V2-B0..B3.
PRETRAINED: dict[str, PretrainedSource] = {
    "efficientnet_b0": _tv("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth"),
    "efficientnet_b1": _tv("efficientnet_b1", "efficientnet_b1_rwightman-bac287d4.pth"),
    "efficientnet_b2": _tv("efficientnet_b2", "efficientnet_b2_rwightman-c35c1473.pth"),
    "efficientnet_b3": _tv("efficientnet_b3", "efficientnet_b3_rwightman-b3899882.pth"),
    "efficientnet_b4": _tv("efficientnet_b4", "efficientnet_b4_rwightman-23ab8bcd.pth"),
    "efficientnet_b5": _tv("efficientnet_b5", "efficientnet_b5_lukemelas-1a07897c.pth"),
    "efficientnet_b6": _tv("efficientnet_b6", "efficientnet_b6_lukemelas-24a108a5.pth"),
    "efficientnet_b7": _tv("efficientnet_b7", "efficientnet_b7_lukemelas-c5b4e57e.pth"),
    "efficientnet_b8": _timm("tf_efficientnet_b8", "v0.1-weights", "tf_efficientnet_b8_ra-572d5dd9.pth"),
    "efficientnet_l2": _timm("tf_efficientnet_l2", "v0.1-weights", "tf_efficientnet_l2_ns-df73bb44.pth"),
    "efficientnetv2_s": _tv("efficientnet_v2_s", "efficientnet_v2_s-dd5fe13b.pth"),
    "efficientnetv2_m": _tv("efficientnet_v2_m", "efficientnet_v2_m-dc08266a.pth"),
    "efficientnetv2_l": _tv("efficientnet_v2_l", "efficientnet_v2_l-59c71312.pth"),
    "efficientnetv2_xl": _timm("tf_efficientnetv2_xl", "v0.1-effv2-weights",
                               "tf_efficientnetv2_xl_in21ft1k-06c35c48.pth"),
    "efficientnetv2_b0": _keras("EfficientNetV2B0", _KERAS_V2 + "efficientnetv2-b0.h5",
                                "21ecbf6da12460d5c40bb2f29ceb2188"),
    "efficientnetv2_b1": _keras("EfficientNetV2B1", _KERAS_V2 + "efficientnetv2-b1.h5",
                                "069f0534ff22adf035c89e2d9547a9dc"),
    "efficientnetv2_b2": _keras("EfficientNetV2B2", _KERAS_V2 + "efficientnetv2-b2.h5",
                                "424e49f28180edbde1e94797771950a7"),
    "efficientnetv2_b3": _keras("EfficientNetV2B3", _KERAS_V2 + "efficientnetv2-b3.h5",
                                "1f1fc43bd98a6e4fd8fdfd551e02c7a0"),
}


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


def cached_path(name: str, entry: PretrainedSource) -> Path:
    """Where the converted weights of ``name`` live in the cache."""
    return cache_dir() / f"{name}.{entry.source}.safetensors"


def download(url: str, dest: Path, checksum: Checksum, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, verifying ``checksum``; atomic (``effnet.files``): the
    bytes go to a temp file beside ``dest`` that is renamed onto it only when complete and
    verified, so an interrupted or tampered download never leaves a file at ``dest``."""

    def fetch(tmp: str) -> None:
        digest = hashlib.new(checksum.algorithm)
        received = 0
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise OSError(f"connection closed after {received} of {expected} bytes")
        if not checksum.matches(digest.hexdigest()):
            raise ValueError(
                f"checksum mismatch for {url}: expected the {checksum.describe()}, got "
                f"{digest.hexdigest()}; the file was discarded (corrupt or tampered download)"
            )

    return atomic_write(dest, fetch)


def fetch_pretrained(name: str, table: dict[str, PretrainedSource] | None = None) -> Path:
    """The converted, cached weight file for effnet model ``name`` (downloading it once).

    Offline with no cached copy, the error names the URL to fetch by other means and the
    ``effnet convert`` command that puts the result where this function looks.
    """
    table = PRETRAINED if table is None else table
    if name not in table:
        raise ValueError(
            f"no published weights known for {name!r}: expected one of {sorted(table)}; convert "
            f"a checkpoint yourself with `effnet convert` and pass weights=PATH"
        )
    entry = table[name]
    path = cached_path(name, entry)
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
        log.info("waiting for another process downloading %s (lock %s)", name, lock.lock_file)
        lock.acquire()
    try:
        if path.is_file():
            return path
        return _download_and_convert(name, entry, path)
    finally:
        lock.release()


def _download_and_convert(name: str, entry: PretrainedSource, path: Path) -> Path:
    # Local: the converters load only when a file is converted (here: downloaded).
    from effnet.weights.converters import convert

    log.info("downloading %s (%s)", entry.url, entry.checksum.describe())
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=path.parent))
    try:
        try:
            raw = download(entry.url, work / entry.filename, entry.checksum)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise RuntimeError(
                f"could not download the pretrained weights for {name} from {entry.url} ({e}). "
                f"Fetch that file by other means and convert it into the cache: effnet convert "
                f"FILE {path} --source {entry.source} --model {entry.model}"
            ) from e
        convert(raw, path, entry.source, entry.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the converted file is kept
    return path
