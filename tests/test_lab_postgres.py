"""The study storage on a real PostgreSQL server: two worker processes share one study.

The test starts its own throw-away server from the PostgreSQL binaries on PATH (Debian's
``postgresql`` package: ``initdb``, ``pg_ctl``), as a non-root user when run as root (the server
refuses root), on a free local port, and stops it afterwards. It is skipped, naming what is
missing, where no server can be started. Slow (a server start and two worker processes):
``python -m pytest -m slow tests/test_lab_postgres.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from effnet.lab import store  # noqa: E402

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import os, sys, time
    from effnet.lab import queue, store

    storage, n, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    candidates = [store.Candidate(f"c{i}", {"x": float(i)}) for i in range(n)]

    def evaluate(trial, cand):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {cand.key}\\n")
        time.sleep(0.3)
        return float(cand.params["x"]), {"pid": os.getpid()}

    queue.work(store.open_study(storage, "pg", {"kind": "test", "n": n}), candidates, evaluate)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own: its storage URL; stopped and removed afterwards."""
    missing = [b for b in ("initdb", "pg_ctl") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"PostgreSQL test: {', '.join(missing)} not on PATH (install Debian's postgresql package)")
    pytest.importorskip("psycopg2", reason="PostgreSQL test: the driver psycopg2 is not installed "
                                           "(pip install psycopg2-binary)")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="effnet-pg-")  # not under pytest's tmp_path: another user must reach it
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip("PostgreSQL test: running as root and no runuser to start the server as 'nobody'")
        os.chmod(root, 0o777)
        as_user = [runuser, "-u", "nobody", "--"]
    data, sock = Path(root) / "data", Path(root) / "sock"
    sock.mkdir()
    os.chmod(sock, 0o777)
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    r = run(shutil.which("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL test: initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    r = run(shutil.which("pg_ctl"), "-D", str(data), "-l", str(Path(root) / "server.log"), "-w", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start")
    if r.returncode != 0:
        log = (Path(root) / "server.log").read_text() if (Path(root) / "server.log").exists() else r.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL test: the server did not start: {log.strip().splitlines()[-1:]}")
    try:
        # SQLAlchemy's plain postgresql:// means psycopg 3; name the driver the test found.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(shutil.which("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(postgres, tmp_path):
    script, log = tmp_path / "worker.py", tmp_path / "log.txt"
    script.write_text(WORKER)
    log.touch()
    n = 8
    workers = [subprocess.Popen([sys.executable, str(script), postgres, str(n), str(log)], stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="pg", storage=postgres)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    keys = sorted(t.user_attrs[store.KEY] for t in done)
    assert keys == sorted(f"c{i}" for i in range(n))  # every candidate trained, once
    trained = [line.split() for line in log.read_text().splitlines()]
    assert sorted(k for _, k in trained) == keys  # no candidate trained twice, even if given up later
    assert len({p for p, _ in trained}) == 2  # both workers took a share
    # A third worker finds the study complete and trains nothing.
    started = time.time()
    third = subprocess.run([sys.executable, str(script), postgres, str(n), str(log)], capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0, third.stderr
    assert len(log.read_text().splitlines()) == n and time.time() - started < 120
