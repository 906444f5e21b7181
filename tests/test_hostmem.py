"""effnet.hostmem: the huge-page switch for torch's allocator and glibc heap reuse, checked against
what the kernel file says and what glibc's own accounting (mallinfo2) reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from effnet import hostmem
from effnet.hostmem import HUGE_PAGES_ENV, enable_huge_pages, huge_pages_mode


def test_huge_pages_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert huge_pages_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert huge_pages_mode(f) == "always"
    f.write_text("garbage\n")
    assert huge_pages_mode(f) is None
    assert huge_pages_mode(tmp_path / "missing") is None


@pytest.mark.parametrize(("mode", "before", "after", "returned"), [
    ("madvise", None, "1", True),
    ("always", None, "1", True),
    ("never", None, None, False),  # the kernel would ignore the advice
    (None, None, None, False),  # not Linux / no THP
    ("madvise", "0", "0", False),  # the user's choice is kept
    ("never", "1", "1", True),
])
def test_enable_huge_pages_sets_the_variable_only_where_it_can_apply(mode, before, after, returned, monkeypatch):
    monkeypatch.setattr(hostmem, "huge_pages_mode", lambda path=None: mode)  # what the kernel file says
    env = {} if before is None else {HUGE_PAGES_ENV: before}
    assert enable_huge_pages(env) is returned
    assert env.get(HUGE_PAGES_ENV) == after


def _python(code: str, env_drop: tuple[str, ...] = ()) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_the_command_line_sets_it_before_torch_is_imported():
    # torch reads the variable once, at its first allocation: effnet's entry point must set it
    # before any command imports torch. The kernel's mode is stubbed to 'madvise' (CI machines vary).
    code = """
import os, sys
import effnet.hostmem as h
h.huge_pages_mode = lambda path=None: "madvise"
from effnet import cli
try:
    cli.main(["--version"])
except SystemExit:
    pass
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), "torch" in sys.modules)
"""
    assert _python(code, env_drop=(HUGE_PAGES_ENV,)) == "1 False"


def test_after_torch_is_imported_the_variable_is_left_alone(monkeypatch):
    # This process has imported torch (the conftest): setting it now would claim an effect it has not.
    assert "torch" in sys.modules
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    monkeypatch.setattr(hostmem, "huge_pages_mode", lambda path=None: "madvise")
    assert enable_huge_pages() is False
    assert HUGE_PAGES_ENV not in __import__("os").environ


_MALLINFO = """
import ctypes, json
import effnet.hostmem as h
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def probe():
    p = libc.malloc(64 << 20)
    mapped = libc.mallinfo2().hblkhd  # bytes in mmap-ed blocks while the 64 MiB block is alive
    libc.free(p)
    return mapped, libc.mallinfo2().arena  # heap bytes kept after freeing it
before = probe()
ok = h.reuse_freed_memory()
print(json.dumps({"before": before, "ok": ok, "after": probe()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_reuse_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    out = json.loads(_python(_MALLINFO, env_drop=("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")))
    mib = 1 << 20
    # Default glibc: a 64 MiB block is mmap-ed (above the 32 MiB adaptive ceiling) and unmapped on free.
    assert out["before"][0] >= 64 * mib and out["before"][1] < 64 * mib
    assert out["ok"] is True
    # Now: the block is not mmap-ed (what is, is older and small), and the freed 64 MiB stays in the heap for the next allocation.
    assert out["after"][0] < 64 * mib and out["after"][1] >= 64 * mib


def test_reuse_freed_memory_keeps_a_users_setting_and_checks_its_argument(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert hostmem.reuse_freed_memory() is False
    with pytest.raises(ValueError, match="limit_bytes"):
        hostmem.reuse_freed_memory(2**31)


def test_training_asks_for_it_on_the_cpu_when_configured(monkeypatch):
    from effnet.train import pipeline, run_trial

    calls = []
    monkeypatch.setattr(pipeline, "reuse_freed_memory", lambda: calls.append(1) or True)
    run_trial("efficientnet_b0", epochs=1, image_size=32, width=0.25, depth=0.25, train_subset=32, batch_size=32,
              threads=1, reuse_host_memory=True)
    assert calls == [1]
    run_trial("efficientnet_b0", epochs=1, image_size=32, width=0.25, depth=0.25, train_subset=32, batch_size=32,
              threads=1)
    assert calls == [1]  # off by default


_HOLES = """
import gc, json
import effnet.hostmem as h
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
big, keep = [], []
for _ in range(2000):  # 100 KiB blocks (heap, under the mmap threshold), each pinned in place by a 1 KiB one
    big.append(bytearray(100 << 10))
    keep.append(bytearray(1 << 10))
del big
gc.collect()
before = rss()
ok = h.return_freed_memory()
print(json.dumps({"ok": ok, "returned": before - rss()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_return_freed_memory_gives_the_heaps_free_pages_back():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    # ~195 MiB freed between live blocks stay resident (free() trims only the heap's top);
    # malloc_trim hands most of them back, so a peak measured next starts from memory in use.
    out = json.loads(_python(_HOLES, env_drop=("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")))
    assert out["ok"] is True and out["returned"] >= 150 << 20


def test_available_memory_is_memavailable_from_the_kernel():
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    # Read twice a moment apart: the kernel's figure moves a little between the two reads.
    assert abs(hostmem.available_memory_bytes() - kib * 1024) < 256 * 2**20


def test_check_memory_refuses_only_what_cannot_fit(monkeypatch):
    hostmem.check_memory(2**30, "job", "use less", available=2**30)  # exactly fits
    monkeypatch.setattr(hostmem, "available_memory_bytes", lambda: None)
    hostmem.check_memory(2**50, "job", "use less")  # the free memory is unknown: no refusal
    with pytest.raises(ValueError, match=r"job needs at least 2.0 GiB of memory for activations, 1.0 GiB is "
                                         r"available: use less"):
        hostmem.check_memory(2**31, "job", "use less", available=2**30)


def test_training_too_large_for_this_machine_is_refused_before_it_starts(tmp_path, capsys):
    # B0 at 20,000 px: even the activations of one block exceed any machine this runs on.
    from effnet.cli import main

    rc = main(["train", "--image-size", "20000", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc != 0 and "needs at least" in err and "pass a smaller --image-size or --batch-size" in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
