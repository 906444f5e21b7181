"""Download-and-cache of published weights, against a loopback HTTP server (never the network).

The served file is the timm ``tf_efficientnet_b0`` reference checkpoint (tests/fixtures: timm's
exact keys and shapes, seeded weights), saved as the ``.pth`` timm publishes, so a fetched model
is checked against timm's own logits.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import effnet
from effnet.weights import hub
from effnet.weights.hub import Checksum, PretrainedSource, fetch_pretrained
from fixtures.references import peer_state_dict, reference_io

NAME = "efficientnet_b0"
#: As timm names its release files: ``<model>-<first 8 hex digits of the SHA-256>.pth``.
FILE = "tf_efficientnet_b0-0123abcd.pth"


class _Server:
    """Serves ``files`` on 127.0.0.1; ``truncate`` sends half the body, then hangs up."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate = False
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.hits += 1
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The reference timm checkpoint as the bytes of a torch.save'd state dict."""
    path = tmp_path_factory.mktemp("ckpt") / FILE
    torch.save(peer_state_dict("timm_tf_efficientnet_b0"), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def timm_io() -> dict[str, torch.Tensor]:
    """timm's input batch and logits for the served checkpoint."""
    return reference_io("timm_tf_efficientnet_b0")


@pytest.fixture
def server(checkpoint: bytes) -> Iterator[_Server]:
    s = _Server()
    s.files[FILE] = checkpoint
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(server: _Server, checkpoint: bytes, digest: str | None = None) -> PretrainedSource:
    return PretrainedSource(f"{server.url}/{FILE}", "timm", "tf_efficientnet_b0",
                            Checksum("sha256", digest or hashlib.sha256(checkpoint).hexdigest()))


def _files(cache: Path) -> list[str]:
    """Files in the cache, less the empty per-model lock files that serialise downloads."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def test_download_verify_convert_then_offline(server: _Server, checkpoint: bytes, cache: Path,
                                              timm_io: dict[str, torch.Tensor],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hub.PRETRAINED, NAME, _entry(server, checkpoint))
    model = effnet.create_model(NAME, pretrained=True).eval()
    assert model.spec.padding == "same" and server.hits == 1
    with torch.no_grad():  # the fetched model is timm's (tolerance: see test_weights_convert)
        torch.testing.assert_close(model(timm_io["input"]), timm_io["logits"], rtol=0, atol=1e-5)
    assert _files(cache) == [f"{NAME}.timm.safetensors"]  # only the converted file is kept
    server.close()  # offline from here on: the cache answers
    again = effnet.create_model(NAME, pretrained=True, num_classes=10)
    assert again.classifier.out_features == 10
    assert torch.equal(again.state_dict()["stem.conv.weight"], model.state_dict()["stem.conv.weight"])


def test_prefix_checksum(server: _Server, checkpoint: bytes, cache: Path) -> None:
    prefix = hashlib.sha256(checkpoint).hexdigest()[:8]
    entry = PretrainedSource(f"{server.url}/{FILE}", "timm", "tf_efficientnet_b0",
                             Checksum("sha256", prefix, prefix=True))
    assert fetch_pretrained(NAME, table={NAME: entry}).is_file()


def test_wrong_sha256_is_refused_and_nothing_cached(server: _Server, checkpoint: bytes, cache: Path) -> None:
    table = {NAME: _entry(server, checkpoint, digest="0" * 64)}
    with pytest.raises(ValueError, match="checksum mismatch"):
        fetch_pretrained(NAME, table=table)
    assert _files(cache) == []


def test_interrupted_download_leaves_nothing(server: _Server, checkpoint: bytes, cache: Path) -> None:
    server.truncate = True
    with pytest.raises(RuntimeError, match="could not download"):
        fetch_pretrained(NAME, table={NAME: _entry(server, checkpoint)})
    assert _files(cache) == []


def test_offline_error_names_url_and_convert_command(cache: Path) -> None:
    entry = PretrainedSource("http://127.0.0.1:9/efficientnet_b0_rwightman-7f5810bc.pth", "torchvision",
                             "efficientnet_b0", Checksum("sha256", "7f5810bc", prefix=True))
    with pytest.raises(RuntimeError) as err:
        fetch_pretrained("efficientnet_b0", table={"efficientnet_b0": entry})
    msg = str(err.value)
    assert entry.url in msg
    assert "effnet convert FILE" in msg and "--source torchvision --model efficientnet_b0" in msg
    assert str(cache / "efficientnet_b0.torchvision.safetensors") in msg


def test_file_url_and_unknown_name(checkpoint: bytes, cache: Path, tmp_path: Path) -> None:
    src = tmp_path / FILE
    src.write_bytes(checkpoint)
    entry = PretrainedSource(src.as_uri(), "timm", "tf_efficientnet_b0",
                             Checksum("sha256", hashlib.sha256(checkpoint).hexdigest()))
    assert fetch_pretrained(NAME, table={NAME: entry}).is_file()
    with pytest.raises(ValueError, match="no published weights known"):
        fetch_pretrained("efficientnet_b9", table={})


def test_published_table_is_well_formed() -> None:
    for name, entry in hub.PRETRAINED.items():
        assert name in effnet.REGISTRY
        assert entry.url.startswith("https://")
        hex_len = {"sha256": 64, "md5": 32}[entry.checksum.algorithm]
        assert len(entry.checksum.hexdigest) == (8 if entry.checksum.prefix else hex_len), name


def test_train_cli_pretrained_fine_tunes_from_the_cache(checkpoint: bytes, cache: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from effnet.cli import main

    src = tmp_path / FILE
    src.write_bytes(checkpoint)
    monkeypatch.setitem(hub.PRETRAINED, NAME, PretrainedSource(
        src.as_uri(), "timm", "tf_efficientnet_b0", Checksum("sha256", hashlib.sha256(checkpoint).hexdigest())))
    assert main(["train", "--pretrained"]) == 1  # needs --model
    out = tmp_path / "run"
    code = main(["train", "--model", NAME, "--pretrained", "--epochs", "1", "--subset", "64", "--threads", "1",
                 "--out", str(out)])
    assert code == 0 and _files(cache) == [f"{NAME}.timm.safetensors"]
    trained = effnet.load_model(out / "last.safetensors")
    assert trained.spec.padding == "same" and trained.classifier.out_features == 10  # TF file, new head


def test_concurrent_fetches_download_once(server: _Server, checkpoint: bytes, cache: Path) -> None:
    """As under torchrun: several processes ask for the same weights at once."""
    from concurrent.futures import ThreadPoolExecutor

    table = {NAME: _entry(server, checkpoint)}
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: fetch_pretrained(NAME, table=table), range(4)))
    assert len(set(paths)) == 1 and server.hits == 1
    assert _files(cache) == [f"{NAME}.timm.safetensors"]


# --- an unusable cache directory ------------------------------------------------------------------
#: Never contacted: the cache is checked before anything is downloaded.
_UNREACHABLE = PretrainedSource("http://127.0.0.1:9/tf_efficientnet_b0-0123abcd.pth", "timm",
                                "tf_efficientnet_b0", Checksum("sha256", "0123abcd", prefix=True))


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_unusable_cache_names_the_variable_and_path(where: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """EFFNET_CACHE under (or at) a regular file used to end in a bare "[Errno 20] Not a
    directory" (or a FileExistsError traceback) that did not say where the path came from."""
    from effnet.cli import main

    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    bad = blocker / "cache" if where == "under a file" else blocker
    monkeypatch.setenv(hub.CACHE_ENV, str(bad))
    with pytest.raises(ValueError) as err:
        fetch_pretrained(NAME, table={NAME: _UNREACHABLE})
    msg = str(err.value)
    assert f"{hub.CACHE_ENV}={bad}" in msg and str(blocker) in msg and "writable directory" in msg
    # The command line shows the same message as a one-line error, not a traceback.
    monkeypatch.setitem(hub.PRETRAINED, NAME, _UNREACHABLE)
    assert main(["pretrained", NAME]) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("effnet pretrained: error: weights cache") and f"{hub.CACHE_ENV}={bad}" in stderr
    assert blocker.read_text() == "a file, not a folder"


def test_read_only_cache_names_the_variable_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder that exists but refuses files. Permission bits do not stop root (these
    tests may run as root), so the refusal is injected where the cache is probed."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(hub.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError, match=f"{tmp_path} cannot be written.*{hub.CACHE_ENV}={tmp_path}"):
        fetch_pretrained(NAME, table={NAME: _UNREACHABLE})
