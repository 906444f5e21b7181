"""Download a published checkpoint and convert it into the weights cache.

The one step of ``create_model(name, pretrained=True)`` that loads the converters:
:func:`effnet.weights.hub.pretrained_file` calls it only on a cache miss.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from effnet.files import atomic_write
from effnet.registry import Checksum, Entry
from effnet.weights.converters import convert

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


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


def download_and_convert(entry: Entry, path: Path) -> Path:
    """Download the checkpoint of ``entry``'s published weights (checked against its checksum)
    into a work folder beside ``path``, convert it to ``path`` and keep only the converted file.
    A failed download names the URL and the ``effnet convert`` command that does the same from a
    file fetched by hand."""
    name, source = entry.name, entry.pretrained
    if source is None:
        raise ValueError(f"{name}: no published weights to download")
    log.info("downloading %s (%s)", source.url, source.checksum.describe())
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=path.parent))
    try:
        try:
            raw = download(source.url, work / source.filename, source.checksum)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise RuntimeError(
                f"could not download the pretrained weights for {name} from {source.url} ({e}). "
                f"Fetch that file by other means and convert it into the cache: effnet convert "
                f"FILE {path} --source {source.source} --model {source.model}"
            ) from e
        convert(raw, path, source.source, source.model)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only the converted file is kept
    return path
