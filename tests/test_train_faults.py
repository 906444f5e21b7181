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
@pytest.mark.slow
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


@pytest.mark.slow  # bounds a wall-clock time (the default suite has none) and starts torchrun
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
    pytest.param(signal.SIGTERM, 143, False, marks=pytest.mark.slow),
    # A terminal's Ctrl-C signals the whole process group: the loader workers too, which must
    # leave the stop to the main process.
    pytest.param(signal.SIGINT, 130, True, marks=pytest.mark.slow),
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


# --- divergence, resume changes, leftovers ---------------------------------------------------------------
#: Plain SGD at an absurd rate: the weights blow up within the first steps of the debug job.
DIVERGE = dict(QUICK, optimizer="sgd", lr_per_256=1e9)


def finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


def test_a_diverged_run_keeps_no_nan_state_and_resumes_with_a_lower_lr(tmp_path):
    """The reported fault: the kept "last good" state.pt held inf BatchNorm statistics, the NaN epoch
    became best.safetensors, and --resume refused the --lr that the message advised."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="diverged") as e:
        train(resolve_config("debug", **DIVERGE, save_every_steps=1, out=str(run)))
    assert not (run / "best.safetensors").exists() and not (run / "last.safetensors").exists()
    if (run / "state.pt").exists():
        assert "last good checkpoint is kept" in str(e.value) and "--lr" in str(e.value)
        assert finite(torch.load(run / "state.pt", weights_only=True)["model"])
        # The advice can be followed: a resumed run may change the learning rate.
        result = train(resolve_config(), resume=run, resume_changes={"lr_per_256": 0.01})
        assert result.epochs == 1 and (run / "best.safetensors").is_file()
    else:
        assert "nothing to resume" in str(e.value)


def test_nan_before_the_first_checkpoint_claims_nothing_and_leaves_no_half_run(tmp_path):
    """It said "the last good checkpoint is kept" in a folder holding only config.yaml, and the
    next run into the folder was told to --resume, which failed with "no state.pt"."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="diverged") as e:
        train(resolve_config("debug", **DIVERGE, out=str(run)))
    assert "nothing to resume" in str(e.value) and "kept" not in str(e.value)
    assert not (run / "config.yaml").exists() and not (run / "state.pt").exists()
    assert train(resolve_config("debug", **QUICK, out=str(run))).epochs == 1  # no --overwrite, no --resume


def test_a_folder_with_only_config_is_not_sent_to_resume(tmp_path):
    """A run killed before its first checkpoint (config.yaml alone, as kill -9 leaves it)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(resolve_config("debug", **QUICK).to_yaml())
    with pytest.raises(ValueError, match="before its first checkpoint.*--overwrite") as e:
        train(resolve_config("debug", **QUICK, out=str(run)))
    assert "--resume" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint.*--overwrite"):
        train(resolve_config(), resume=run)


def test_resume_changes_only_lr_and_epochs(tmp_path):
    run = tmp_path / "run"
    train(resolve_config("debug", **QUICK, out=str(run)))
    with pytest.raises(ValueError, match="only lr_per_256, epochs"):
        train(resolve_config(), resume=run, resume_changes={"seed": 3})
    with pytest.raises(ValueError, match="already completed 1 epoch"):
        train(resolve_config(), resume=run, resume_changes={"epochs": 1})
    result = train(resolve_config(), resume=run, resume_changes={"epochs": 2, "lr_per_256": 0.01})
    assert result.epochs == 2 and epochs_in(run) == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["lr_per_256"] == 0.01


def test_resume_removes_the_temporary_files_a_killed_checkpoint_left(tmp_path):
    run = tmp_path / "run"
    train(resolve_config("debug", **QUICK, out=str(run)))
    stale = [run / ".state.pt.k1ll3d.tmp", run / ".last.safetensors.x.tmp", run / ".state.prev.pt.link"]
    for f in stale:
        f.write_bytes(b"half a checkpoint")
    (run / "notes.txt").write_text("mine")
    train(resolve_config(), resume=run, resume_changes={"epochs": 2})
    assert not any(f.exists() for f in stale)
    assert (run / "notes.txt").read_text() == "mine"


def test_a_step_whose_batches_were_all_skipped_leaves_the_fp16_scaler_alone():
    """GradScaler.step asserts ("did not use scaler.scale") when no micro-batch of the step ran a
    backward (every one dropped as unreadable or too small)."""
    from types import SimpleNamespace

    from effnet.train.loop import optimizer_step
    from effnet.train.rundir import Position

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = resolve_config("debug", grad_clip=1.0)
    run = SimpleNamespace(cfg=cfg, optimizer=opt, model=model, ema=None, pos=Position(),
                          scaler=torch.amp.GradScaler("cpu", enabled=True),
                          schedule=SimpleNamespace(lr=lambda cfg, step: 0.1))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer_step(run)  # no backward since the last step
    assert run.pos.step == 1 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # With a scaled backward the step happens as usual.
    run.scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    optimizer_step(run)
    assert run.pos.step == 2 and not torch.equal(before[0], model.weight)


def test_gradient_accumulation_under_ddp_all_reduces_once_per_step(tmp_path):
    """Each micro-batch's backward all-reduced the gradients; only the last of a step needs to."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from effnet.train.distributed import gradient_sync

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(torch.nn.Linear(4, 2))
        calls = []

        def hook(state, bucket):  # DDP's communication hook: called once per bucket all-reduce
            calls.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, hook)
        accum = 4
        for i in range(accum):
            with gradient_sync(ddp, sync=(i + 1) % accum == 0):
                ddp(torch.randn(3, 4)).sum().backward()
        assert len(calls) == 1
    finally:
        dist.destroy_process_group()
