"""One training trial as a library function (what the scaling and architecture searches call)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from effnet.model import build
from effnet.registry import get_spec
from effnet.scaling import scale
from effnet.specs.base import ModelSpec
from effnet.train import Interrupted, run_trial, train
from effnet.train.config import resolve_config

BUDGET = dict(train_subset=96, batch_size=32, threads=1)


@pytest.fixture
def candidate() -> ModelSpec:
    """A small scaled B0 with its own resolution, as a grid search would produce it."""
    return scale(get_spec("efficientnet_b0"), width=0.5, depth=0.25).replace(resolution=40)


def test_a_trial_trains_a_spec_object_and_returns_its_metrics_without_files(candidate, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    r = run_trial(candidate, epochs=2, **BUDGET)
    assert list(tmp_path.iterdir()) == []  # no run folder, no runs/<timestamp>
    assert r.run_dir is None and r.epochs == 2 and len(r.metrics) == 2
    last = r.metrics[-1]
    assert (r.final_top1, r.final_top5, r.final_loss) == (last["val_top1"], last["val_top5"], last["val_loss"])
    assert r.best_top1 == max(m["val_top1"] for m in r.metrics)
    assert r.seconds > sum(m["seconds"] for m in r.metrics) > 0 and r.img_per_s == last["img_per_s"] > 0
    # The candidate as given (not the digits recipe's half width/depth), at its own resolution.
    assert r.params == sum(p.numel() for p in build(candidate.replace(num_classes=10)).parameters())
    assert [m["image_size"] for m in r.metrics] == [40, 40]
    assert torch.get_num_threads() == threads  # the process's setting is put back


def test_a_trial_by_name_with_a_budget_and_overrides():
    r = run_trial("efficientnet_b0", epochs=1, image_size=32, width=0.5, depth=0.25, **BUDGET)
    assert r.epochs == 1 and r.metrics[0]["image_size"] == 32
    assert r.params == sum(p.numel() for p in build(
        scale(get_spec("efficientnet_b0"), width=0.5, depth=0.25).replace(num_classes=10)).parameters())


def test_on_epoch_reports_every_epoch_and_can_stop_the_trial(candidate):
    class Pruned(Exception):
        pass

    seen = []

    def report(row):
        seen.append(row["epoch"])
        if row["epoch"] == 2:
            raise Pruned

    with pytest.raises(Pruned):
        run_trial(candidate, epochs=4, on_epoch=report, **BUDGET)
    assert seen == [1, 2]


def test_a_trial_with_a_folder_records_its_spec_and_resumes(candidate, tmp_path):
    out = tmp_path / "trial"
    run_trial(candidate, epochs=1, out=out, **BUDGET)
    assert ModelSpec.load(out / "spec.yaml") == candidate
    # config.yaml is a complete recipe: the same candidate trains again from it.
    cfg = resolve_config(str(out / "config.yaml"))
    assert cfg.spec == str(out / "spec.yaml") and (cfg.width, cfg.depth) == (1.0, 1.0)
    state = torch.load(out / "state.pt", weights_only=True)
    state["config"]["epochs"] = 2  # a larger budget for the same trial
    torch.save(state, out / "state.pt")
    r = train(cfg, resume=out)
    assert r.epochs == 2 and [m["epoch"] for m in r.metrics] == [1, 2]


def test_a_signal_stops_a_trial_with_interrupted(candidate):
    """In-process: the handler only records the signal; the loop stops after the epoch and raises
    Interrupted (a KeyboardInterrupt, so `except Exception` in a search does not swallow it)."""
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c(row):
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as e:
        run_trial(candidate, epochs=3, on_epoch=ctrl_c, **BUDGET)
    assert e.value.signum == signal.SIGINT and e.value.exit_code == 130 and e.value.run_dir is None
    assert not isinstance(e.value, Exception)
    assert "after epoch 1" in str(e.value)
    assert signal.getsignal(signal.SIGINT) is before
