"""DistributedDataParallel on CPU: 2 Gloo processes launched the way users launch them
(``torchrun``, here ``python -m torch.distributed.run``) against a single process."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from effnet.data import EpochSampler
from effnet.weights import load_model, read_weights

#: Nothing random between the data and the loss: no crop (scale 1, 1), flip, AutoAugment,
#: dropout or drop-path; deterministic kernels; BatchNorm over the global batch.
EXACT = dict(
    data="digits", model="efficientnet_b0", width=0.5, depth=0.25, image_size=32, crop_pct=1.0,
    interpolation="bilinear", crop_scale=[1.0, 1.0], hflip=False, autoaugment=False, dropout=0.0,
    drop_path_rate=0.0, bn_momentum=0.1, optimizer="adamw", lr_per_256=0.016, weight_decay=0.01,
    schedule="cosine", warmup_epochs=0.5, ema_decay=0.99, deterministic=True, sync_bn=True, log_steps=True,
    threads=1, epochs=1, train_subset=96,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "effnet", "train", *args]


def single(*args: str) -> list[str]:
    return [sys.executable, "-m", "effnet", "train", *args]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_ok(cmd: list[str], timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(**extra))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_sampler_shards_make_the_single_process_batches():
    """Batch k of every rank together holds the images of a double-size single-process batch k."""
    full = EpochSampler(22, seed=3)
    ranks = [EpochSampler(22, seed=3, rank=r, world=2) for r in range(2)]
    for s in (full, *ranks):
        s.set_epoch(1)
    order, shards = list(full), [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 11
    for k in range(2):  # batch 4 per rank, 8 single
        assert sorted(shards[0][4 * k:4 * k + 4] + shards[1][4 * k:4 * k + 4]) == sorted(order[8 * k:8 * k + 8])
    ranks[1].set_epoch(1, start=4)
    assert list(ranks[1]) == shards[1][4:]  # mid-epoch resume skips within the shard
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(4, 0, rank=2, world=2)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    recipe = tmp_path / "exact.yaml"
    recipe.write_text(yaml.safe_dump(EXACT))
    run_ok(single("--recipe", str(recipe), "--batch-size", "16", "--out", str(tmp_path / "one")))
    proc = run_ok(torchrun("--recipe", str(recipe), "--batch-size", "8", "--out", str(tmp_path / "two")))
    assert "global batch 16 = 8 per process x 2 processes" in proc.stderr
    one, two = csv_rows(tmp_path / "one" / "steps.csv"), csv_rows(tmp_path / "two" / "steps.csv")
    assert len(one) == len(two) == 6  # 96 images / 16
    assert [r["images"] for r in one] == [r["images"] for r in two]
    diffs = [abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(one[:5], two[:5])]
    assert max(diffs) < 1e-4, diffs
    # Every validation image once: both runs score the same 359 images alike.
    m1, m2 = csv_rows(tmp_path / "one" / "metrics.csv"), csv_rows(tmp_path / "two" / "metrics.csv")
    assert len(m2) == 1 and abs(float(m1[0]["val_top1"]) - float(m2[0]["val_top1"])) <= 0.3
    # Rank 0 wrote a checkpoint with the plain model's keys, which load_model reads.
    a, b = read_weights(tmp_path / "one" / "last.safetensors"), read_weights(tmp_path / "two" / "best.safetensors")
    assert sorted(a.state_dict) == sorted(b.state_dict)
    model = load_model(tmp_path / "two" / "last.safetensors")
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


#: Runs `effnet train ARGS` with rank 1's first optimiser step followed by an exception: the
#: fault is injected here, in the test, by wrapping the loop's step function.
CRASHING_LAUNCHER = """
import os, sys
import effnet.train.loop as loop
from effnet.cli import main

if os.environ["RANK"] == "1":
    step = loop.optimizer_step

    def step_then_crash(run):
        step(run)
        raise RuntimeError("rank 1 crashed on purpose")

    loop.optimizer_step = step_then_crash
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # torchrun's own failure handling, seconds of waiting
def test_a_crashing_rank_ends_the_job_with_its_error(tmp_path):
    launcher = tmp_path / "crash_rank_1.py"
    launcher.write_text(CRASHING_LAUNCHER)
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(launcher), "train", "--recipe", "debug", "--epochs", "1", "--subset", "64", "--batch-size", "8",
         "--threads", "1", "--dist-timeout", "1", "--out", str(tmp_path / "crash")],
        capture_output=True, text=True, timeout=120, env=env(),
    )
    seconds = time.time() - start
    assert proc.returncode != 0
    assert "rank 1 crashed on purpose" in proc.stdout + proc.stderr
    assert seconds < 60, seconds


@pytest.mark.slow  # resume is tested in one process (test_train_run); this repeats it under torchrun
def test_two_processes_killed_and_resumed(tmp_path):
    run = tmp_path / "killed"
    args = ["--recipe", "debug", "--epochs", "3", "--subset", "192", "--batch-size", "16", "--threads", "1",
            "--out", str(run)]
    # A new session, so that the kill reaches torchrun and both workers at once.
    proc = subprocess.Popen(torchrun(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env(), start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.csv").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [r["epoch"] for r in torch.load(run / "state.pt", weights_only=True)["metrics"]]
    assert 1 <= len(done) < 3, "the kill should land before the run finished"
    run_ok(torchrun("--resume", str(run)), timeout=180)
    assert [int(r["epoch"]) for r in csv_rows(run / "metrics.csv")] == [1, 2, 3]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["epoch"] == 3 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert load_model(run / "last.safetensors") is not None


def test_cpu_sync_bn_keeps_parameters_and_their_frozen_state():
    import effnet
    from effnet.train.distributed import convert_sync_batchnorm

    model = effnet.create_model("efficientnetv2_b0", num_classes=3)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    before = {n: p for n, p in model.named_parameters()}
    convert_sync_batchnorm(model, torch.device("cpu"))
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert not any(p.requires_grad for n, p in after.items() if not n.startswith("classifier."))
