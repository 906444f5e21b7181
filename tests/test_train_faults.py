"""Faults met by a user of `effnet train`: two runs in one folder, an earlier run in the folder,
Ctrl-C / SIGTERM, a damaged resume state, a folder of unreadable images."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from effnet.data import load_splits
from effnet.train import evaluate, resolve_config, train
from effnet.weights import save_weights
from test_train_ddp import env, free_port

#: A debug run of a few seconds.
QUICK = dict(threads=1, epochs=1, train_subset=64, batch_size=32)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "effnet", "train", *args]


def epochs_in(run: Path) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


# --- one run per folder ------------------------------------------------------------------------------
def test_two_runs_started_together_do_not_share_a_folder(tmp_path):
    """The reported fault: both exited 0 and wrote over each other. Now one trains, the other
    stops with a message naming the folder (in use, or holding the first's finished run)."""
    out = tmp_path / "same"
    args = cli("--recipe", "debug", "--epochs", "2", "--subset", "128", "--threads", "1", "--out", str(out))
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
             for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    refused = next(err for code, err in results if code != 0)
    assert str(out) in refused and ("is in use" in refused or "already holds a run" in refused), refused
    assert epochs_in(out) == [1, 2]


def test_a_folder_in_use_is_refused_at_once(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    # As if a run in another process held it.
    with FileLock(out / "run.lock"), pytest.raises(RuntimeError, match=f"run folder {re.escape(str(out))} is in use"):
        train(resolve_config("debug", **QUICK, out=str(out)))
    assert not (out / "config.yaml").exists()  # the refused run wrote nothing
    train(resolve_config("debug", **QUICK, out=str(out)))  # free again


def test_under_torchrun_rank_0_holds_the_lock_and_every_rank_stops(tmp_path):
    """The refusal reaches rank 1 too (instead of leaving it waiting for rank 0 until the
    collective timeout)."""
    out = tmp_path / "busy"
    out.mkdir()
    start = time.time()
    with FileLock(out / "run.lock"):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
             "-m", "effnet", "train", "--recipe", "debug", "--epochs", "1", "--subset", "64", "--threads", "1",
             "--out", str(out)], capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode != 0
    assert proc.stderr.count(f"run folder {out} is in use") >= 2, proc.stderr[-3000:]  # both ranks say why
    assert time.time() - start < 60


def test_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    train(resolve_config("debug", **QUICK, out=str(out)))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"already holds a run .*--resume .*--overwrite"):
        train(resolve_config("debug", **QUICK, seed=1, out=str(out)))
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 0  # untouched
    # A run killed before its first checkpoint left only config.yaml: still a run.
    only_config = tmp_path / "early"
    only_config.mkdir()
    shutil.copy(out / "config.yaml", only_config / "config.yaml")
    with pytest.raises(ValueError, match="already holds a run"):
        train(resolve_config("debug", **QUICK, out=str(only_config)))
    # --overwrite clears the earlier run's files (and only those) first.
    result = train(resolve_config("debug", **QUICK, seed=1, overwrite=True, out=str(out)))
    assert result.epochs == 1 and epochs_in(out) == [1]
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 1
    assert not (out / "state.prev.pt").exists()  # the old run's previous state went with it
    assert (out / "notes.txt").read_text() == "mine"


# --- SIGINT / SIGTERM ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code, group", [
    (signal.SIGINT, 130, False),
    (signal.SIGTERM, 143, False),
    # A terminal's Ctrl-C signals the whole process group: the loader workers too, which must
    # leave the stop to the main process.
    (signal.SIGINT, 130, True),
], ids=["SIGINT", "SIGTERM", "SIGINT-group-with-workers"])
def test_a_signal_stops_at_a_safe_point_and_the_run_resumes(tmp_path, sig, code, group):
    run = tmp_path / "run"
    workers = ["--workers", "2"] if group else []
    proc = subprocess.Popen(
        cli("--recipe", "debug", "--epochs", "2", "--subset", "320", "--batch-size", "32", "--threads", "1",
            "--log-steps", *workers, "--out", str(run)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True)
    deadline = time.time() + 60
    steps = run / "steps.csv"
    # The first optimiser step is logged: the signal lands inside the training loop.
    while time.time() < deadline and proc.poll() is None and not (
            steps.is_file() and len(steps.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    output = stdout + stderr
    assert proc.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"effnet train --resume {run}" in output
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] >= 1 and state["epoch"] < 2  # the position of the stop, not a finished run
    result = train(resolve_config(), resume=run)
    assert result.epochs == 2 and epochs_in(run) == [1, 2]


def test_signal_handlers_are_restored_after_a_run(tmp_path):
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    train(resolve_config("debug", **QUICK, out=str(tmp_path / "run")))
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


# --- a damaged resume state ------------------------------------------------------------------------------
def test_a_damaged_state_names_the_file_what_is_intact_and_the_previous_state(tmp_path):
    run = tmp_path / "run"
    train(resolve_config("debug", **{**QUICK, "epochs": 2}, out=str(run)))
    prev = torch.load(run / "state.prev.pt", weights_only=True)
    assert prev["epoch"] == 1 and prev["batch_in_epoch"] == 0  # the checkpoint before the last
    state = run / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated, as by a full disk
    with pytest.raises(RuntimeError) as e:
        train(resolve_config(), resume=run)
    message = str(e.value)
    assert f"{state} is damaged" in message
    assert "last.safetensors is intact (weights after epoch 2" in message
    assert "best.safetensors is intact" in message
    assert "state.prev.pt holds the checkpoint before it (after epoch 1" in message
    command = re.search(r"to resume from there: (cp .*)$", message).group(1)  # type: ignore[union-attr]
    # Following the advice: epoch 2 is trained again from the state after epoch 1.
    subprocess.run(command.split(" && ")[0], shell=True, check=True)
    result = train(resolve_config(), resume=run)
    assert result.epochs == 2 and epochs_in(run) == [1, 2]
    assert result.metrics[0] == prev["metrics"][0]


def test_a_missing_state_is_named(tmp_path):
    run = tmp_path / "run"
    train(resolve_config("debug", **QUICK, out=str(run)))
    (run / "state.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no state.pt in"):
        train(resolve_config(), resume=run)


# --- unreadable images ------------------------------------------------------------------------------------
def unreadable_folder(root: Path, per_class: int = 4) -> Path:
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(b"not an image " + bytes([i]))
    return root


def test_a_folder_of_unreadable_images_says_how_many_where_and_why(tmp_path):
    data = unreadable_folder(tmp_path / "imgs")
    train_split, _ = load_splits(str(data), 0.25, 0)
    with pytest.raises(ValueError) as e:
        train(resolve_config("debug", data=str(data), val_fraction=0.25, threads=1, epochs=1, batch_size=2,
                             out=str(tmp_path / "run")))
    message = str(e.value)
    assert f"{len(train_split)} unreadable image(s) under {data}" in message
    assert "cannot identify image file" in message  # PIL's own reason
    # evaluate() on the same folder: every file of the split, and why.
    import effnet

    weights = save_weights(effnet.create_model("efficientnet_b0", num_classes=2), tmp_path / "w.safetensors")
    with pytest.raises(ValueError) as e:
        evaluate(weights, data)
    message = str(e.value)
    assert message.startswith("evaluation: no readable image in the split: 8 unreadable image(s) under")
    assert str(data) in message and re.search(r"(cats|dogs)/\d\.jpg: UnidentifiedImageError", message)
