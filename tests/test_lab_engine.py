"""The study engine's rules, apart from training: the convergence flag on synthetic curves,
Kendall's tau against a hand count, the choice of candidates to validate, the progressive
recipe under a grid, the trial budget's checks and warnings, and failing trials that stop a
search instead of being retried forever."""

from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

import effnet  # noqa: E402
from effnet.cli import main  # noqa: E402
from effnet.data.progressive import Range  # noqa: E402
from effnet.lab import engine, liveness, queue, store  # noqa: E402
from effnet.lab.budget import trial_budget  # noqa: E402


# --- convergence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("curve, status", [
    # Still climbing: the last epoch (90) beats the best before it (80) by 10 points.
    ([20, 40, 60, 80, 90], "improving"),
    # Plateau with noise: the last epoch (97.5) beats the best before (97.2) by 0.3 <= 1.
    ([60, 90, 97.2, 96.9, 97.5], "converged"),
    # Flat since epoch 3 after a steep start: converged (99 - 99 = 0).
    ([46, 80, 99, 99], "converged"),
    # A dip at the end is not improvement: the last (94) is below the best before (97).
    ([50, 97, 96, 95, 94], "converged"),
    # Exactly one point of gain is within the threshold; 1.5 is not.
    ([10, 50, 50, 51], "converged"),
    ([10, 50, 50, 51.5], "improving"),
    # One epoch cannot show that training stopped improving.
    ([99], "improving"),
    ([], "improving"),
    # A curve stuck at chance has stopped improving: converged (to a bad answer), not improving.
    ([10, 10, 9.7, 10, 10], "converged"),
])
def test_convergence_flag_on_synthetic_curves(curve, status):
    assert engine.convergence(curve) == status


def test_convergence_window_and_gain_are_parameters():
    # Window 1: only the last epoch (55) against the best before it (50): a gain of 5.
    assert engine.convergence([10, 50, 55], window=1, min_gain=4) == "improving"
    assert engine.convergence([10, 50, 55], window=1, min_gain=5) == "converged"
    with pytest.raises(ValueError, match="window"):
        engine.convergence([1, 2, 3], window=0)


# --- rank fidelity -------------------------------------------------------------------------------
def test_kendall_tau_against_a_hand_count():
    # Four candidates; the longer run swaps the proxy's first two. Of the 6 pairs, 5 keep their
    # order and 1 (A, B) is reversed: tau = (5 - 1) / 6 = 2/3.
    proxy = [40.0, 35.0, 30.0, 20.0]
    longer = [90.0, 95.0, 85.0, 80.0]
    assert engine.kendall_tau(proxy, longer) == pytest.approx(2 / 3)
    # Reversed order: every pair discordant, tau = -1; same order: 1.
    assert engine.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert engine.kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1)
    # Five candidates, hand count: proxy order a>b>c>d>e, longer b>a>d>c>e: pairs (a,b) and
    # (c,d) reversed, 8 of 10 kept: tau = (8 - 2) / 10 = 0.6.
    assert engine.kendall_tau([5, 4, 3, 2, 1], [4, 5, 2, 3, 1]) == pytest.approx(0.6)
    assert math.isnan(engine.kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError, match="3 proxy scores but 2"):
        engine.kendall_tau([1, 2, 3], [1, 2])


def test_validation_takes_the_proxy_best_half_and_random_others():
    scores = {f"c{i}": float(i) for i in range(10)}  # c9 best
    chosen = engine.pick_for_validation(scores, 4, seed=0)
    assert chosen[:2] == ["c9", "c8"] and len(chosen) == len(set(chosen)) == 4
    assert set(chosen[2:]) <= {f"c{i}" for i in range(8)}
    assert engine.pick_for_validation(scores, 4, seed=0) == chosen  # the same on every run
    assert sorted(engine.pick_for_validation(scores, 20)) == sorted(scores)  # all there is
    with pytest.raises(ValueError, match="rank correlation needs two"):
        engine.pick_for_validation(scores, 1)


def test_a_winner_that_had_not_converged_is_named_with_a_caveat():
    assert engine.winner_line("the best point", "converged") == ""
    assert "still improving" in engine.winner_line("the best point", "improving")
    assert "2/3 candidate(s) still improving" in engine.unconverged_line(["improving", "converged", "improving"])
    assert engine.convergence([10, 50, 99, 99], window=2) == "improving"  # epochs 3-4 against 1-2


# --- the budget ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return effnet.scale(effnet.get_spec("efficientnet_b0"), width=0.25, depth=0.25, name="b0_tiny")


def test_progressive_recipe_under_a_grid_scales_the_size_range(tiny, monkeypatch):
    """digits_progressive trains at 32 -> 64 px whatever image_size says; a grid point with
    gamma = 1.15 must train at 1.15x those sizes: round(32 * 1.15) = 37 -> round(64 * 1.15) = 74."""
    import effnet.train

    seen = {}

    def fake_run_trial(spec, **kw):
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(effnet.train, "run_trial", fake_run_trial)
    budget = trial_budget(tiny, data="digits", epochs=3, image_size=32, recipe="digits_progressive", overrides={})
    assert budget.protocol()["progressive"] is True
    with pytest.raises(RuntimeError, match="stop here"):
        budget.train(tiny, budget.scaled_size(1.15))
    assert seen["progressive"].image_size == Range(37, 74)
    # The base itself keeps the recipe's range.
    with pytest.raises(RuntimeError, match="stop here"):
        budget.train(tiny, budget.scaled_size(1.0))
    assert seen["progressive"].image_size == Range(32, 64)


def test_budget_records_what_it_measured_and_warns_when_too_small(tiny):
    b = trial_budget(tiny, data="digits", epochs=4, image_size=None, recipe=None, overrides={"seed": 3})
    p = b.protocol()
    assert (p["data"], p["image_size"], p["recipe"], p["epochs"], p["seed"]) == ("digits", 64, "digits", 4, 3)
    assert p["zero_init_last"] is True and p["ema"] is False
    assert b.warnings() == []
    small = trial_budget(tiny, data="digits", epochs=2, image_size=32, recipe=None, overrides={})
    words = " ".join(small.warnings())
    assert "2 epoch(s) per trial" in words and "trial size 32 px" in words


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(data="/nonexistent"), FileNotFoundError, "no such folder"),
    (dict(recipe="nope"), ValueError, "unknown recipe 'nope'"),
    (dict(epochs=0), ValueError, "epochs: expected >= 1"),
])
def test_a_budget_that_would_fail_every_trial_is_refused_before_training(tiny, kwargs, error, words):
    args = {"data": "digits", "epochs": 2, "image_size": 32, "recipe": None, "overrides": {}, **kwargs}
    with pytest.raises(error, match=words):
        trial_budget(tiny, **args)


# --- failing trials stop the search ----------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["scale", "search", "--data", "/nonexistent"], "no such folder"),
    (["scale", "study", "--flops", "1e9"], "FLOPs multiples are ratios to the base"),
    (["search", "--space", "v2-b0", "--trials", "2", "--target-flops", "0"], "positive --target-flops"),
    (["search", "--space", "v2-b0", "--trials", "2", "--data", "/nonexistent"], "no such folder"),
])
def test_a_search_that_cannot_succeed_exits_non_zero_with_the_reason(argv, words, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert words in err and "run the same command" not in err and "Traceback" not in err


def test_a_trial_whose_training_raises_stops_a_fixed_list_at_once(tmp_path):
    study = store.open_study(f"sqlite:///{tmp_path / 's.db'}", "t", {"kind": "test"})
    calls = []

    def evaluate(trial, cand):
        calls.append(cand.key)
        raise ValueError("bad option")

    cands = [store.Candidate(f"c{i}", {"x": float(i)}) for i in range(3)]
    with pytest.raises(queue.TrialFailed, match="candidate c0 failed: ValueError: bad option"):
        queue.work(study, cands, evaluate)
    assert calls == ["c0"]
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert [t.user_attrs[store.ERROR] for t in failed] == ["ValueError: bad option"]


def test_a_sampled_search_stops_after_failures_in_a_row(tmp_path):
    study = store.open_study(f"sqlite:///{tmp_path / 's.db'}", "t", {"kind": "test"})
    calls = []

    def evaluate(trial):
        trial.suggest_float("x", 0, 1)
        calls.append(trial.number)
        raise OSError("disk gone")

    with pytest.raises(queue.TrialFailed, match=f"{queue.MAX_FAILURES_IN_A_ROW} trials in a row failed"):
        queue.work_sampled(study, 10, evaluate)
    assert len(calls) == queue.MAX_FAILURES_IN_A_ROW


# --- dead workers and shared measurements ------------------------------------------------------------
def test_a_worker_is_judged_dead_only_where_its_pid_means_something():
    import os
    import subprocess
    import sys

    here = liveness.machine_id()
    me = {liveness.PID: os.getpid(), liveness.MACHINE: here, liveness.STARTED: liveness.process_start(os.getpid()),
          liveness.TOKEN: liveness.process_token()}
    assert not liveness.worker_gone(me)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = {**me, liveness.PID: p.pid, liveness.TOKEN: "other"}
    assert liveness.worker_gone(dead)
    # The same PID in another container (same hostname, other PID namespace): heartbeat only.
    assert not liveness.worker_gone({**dead, liveness.MACHINE: here + "-elsewhere"})
    # A PID reused by a newer process (alive, other start time) is not the worker.
    assert liveness.worker_gone({**me, liveness.TOKEN: "other", liveness.STARTED: "1"})


def test_first_writer_wins_and_every_writer_reads_it_back(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    store.open_study(url, "t", {"kind": "test"})

    def fresh():
        return store.open_study(url, "t", {"kind": "test"})

    first = store.first_writer(fresh, "effnet.search.base", {"step_time_ms": 10.0})
    second = store.first_writer(fresh, "effnet.search.base", {"step_time_ms": 12.0})
    assert first == second == {"step_time_ms": 10.0}
    assert fresh().user_attrs["effnet.search.base"] == {"step_time_ms": 10.0}


def test_of_two_claims_made_together_the_earlier_is_the_value(tmp_path):
    # Another process recorded its claim (earlier) but had not yet written the value itself.
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = store.open_study(url, "t", {"kind": "test"})
    study.set_user_attr("m#elsewhere", {"at": 1.0, "value": {"s": 7.0}})
    assert store.first_writer(lambda: store.open_study(url, "t", {"kind": "test"}), "m", {"s": 9.0}) == {"s": 7.0}


# --- what a study's summary may claim ----------------------------------------------------------------
def _row(strategy, multiple, top1, curve):
    from effnet.lab.compare import StudyRow

    return StudyRow(strategy=strategy, multiple=multiple, phi=1.0, depth=1.0, width=1.0, resolution=224,
                    flops=int(multiple * 1e8), flops_ratio=multiple, params=1, image_size=64, top1=top1,
                    seconds=1.0, curve=curve, status=engine.convergence(curve))


def test_a_study_summary_names_no_winner_among_unconverged_points_without_saying_so():
    from effnet.lab.compare import StudyReport, format_study

    rows = [_row("baseline", 1.0, 96.0, [50, 95.5, 95.8, 96.0]),
            _row("width", 2.0, 97.0, [50, 96.5, 96.8, 97.0]),     # converged
            _row("depth", 2.0, 80.0, [20, 40, 60, 80])]          # still improving, 16 points under
    rep = StudyReport("s", "sqlite://", "b0", rows, 3)
    summary = rep.summary()
    assert summary[0].startswith("at 2x FLOPs: width best") and "provisional: depth still improving" in summary[0]
    assert any(line.startswith("depth@2: 16.0 points under the baseline and still improving: at this budget")
               for line in summary)
    table = format_study(rep)
    assert "80.00*" in table and "97.00 " in table  # the unconverged point is marked, the converged not
    assert "1/3 candidate(s) still improving" in table


def test_candidates_at_chance_are_called_noise_even_when_converged():
    from effnet.lab.compare import StudyReport

    # 3 classes: chance is 33.3%; within 5 points of it counts as chance.
    assert engine.at_chance(33.33, 3) and engine.at_chance(38.0, 3) and not engine.at_chance(40.0, 3)
    assert "no candidate learned above chance (33.3% for 3 classes" in engine.chance_line([33.3, 35.0], 3)
    assert engine.chance_line([90.0, 95.0], 10) == ""
    assert "scored at chance" in engine.winner_line("the best point", "converged", 10.5, 10)
    flat = [33.3, 33.3, 33.3, 33.3]
    rep = StudyReport("s", "sqlite://", "b0", [_row("baseline", 1.0, 33.3, flat), _row("depth", 2.0, 33.3, flat)], 2,
                      protocol={"classes": 3})
    assert rep.summary() == ["no candidate learned above chance (33.3% for 3 classes, within 5 points): at this "
                             "budget the ranking among them is noise; the study concludes nothing"]


def test_validation_lines_show_both_taus_and_an_unranked_reference():
    rows = [engine.ValidatedRow("a", "a", 40.0, 90.0, [80, 90], "improving", 1, 2),
            engine.ValidatedRow("b", "b", 35.0, 95.0, [94.5, 95], "converged", 2, 1),
            engine.ValidatedRow("paper", "paper (1.2, 1.1, 1.15)", math.nan, 93.0, [92, 93], "converged", 0, 0)]
    v = engine.Validation("s-validate8", 8, 4, rows, 3, tau=-1.0, score="reward (v2)", tau_top1=-1.0)
    text = "\n".join(v.lines())
    assert "ranked by reward (v2)" in text and "Kendall tau -1.00" in text and "top-1 alone" in text
    assert "over 2 candidate(s)" in text  # the reference is shown, not ranked
    assert "paper (1.2, 1.1, 1.15)" in text and "90.00*" in text
    d = v.to_dict()
    assert d["kendall_tau"] == -1.0 and d["rows"][2]["proxy"] is None


def test_noise_of_a_top1_is_two_binomial_standard_errors():
    # p = 0.5 on 100 images: sqrt(0.25 / 100) = 0.05, two of them = 10 points.
    assert engine.noise_points(50.0, 100) == pytest.approx(10.0)
    # p = 0.98 on 359 images: 2 * sqrt(0.98 * 0.02 / 359) = 0.01478 -> 1.48 points.
    assert engine.noise_points(98.0, 359) == pytest.approx(1.478, abs=1e-3)
    assert math.isnan(engine.noise_points(90.0, None))


# --- one report shape for the three studies ------------------------------------------------------------
def test_every_study_report_writes_the_protocol_and_the_same_table_frame(tmp_path):
    """The grid search, the strategy study and the architecture search share engine.LabReport:
    results.json holds each one's own fields plus study, storage, protocol, warnings, validation
    and files, and each table opens with the protocol line and
    ends with the validation."""
    import json

    from effnet.lab.compare import StudyReport, format_study
    from effnet.lab.grid import GridReport, GridTrial
    from effnet.lab.grid import format_table as grid_table
    from effnet.search.run import SearchReport, TrialRow
    from effnet.search.run import format_table as arch_table

    protocol = {"data": "digits", "epochs": 2, "image_size": 64, "recipe": "default", "seed": 0, "ema": False,
                "zero_init_last": True, "classes": 10}
    v = engine.Validation("s-validate6", 6, 2, [engine.ValidatedRow("a", "a", 40.0, 90.0, [80, 90], "improving", 1, 2),
                                                engine.ValidatedRow("b", "b", 35.0, 95.0, [95, 95], "converged", 2, 1)],
                          2, tau=-1.0)
    common = {"protocol": protocol, "warnings": ["budget too small"], "validation": v}
    g = GridTrial("a1_b1.1_g1.15", 1.0, 1.1, 1.15, "complete", 95.5, 150_000_000, 2.0, 1.9, 1_300_000, 36, 2, 9.0,
                60.0, curve=[95.0, 95.5], status="converged")
    t = TrialRow(0, "complete", 9.5, 126.0, 7_140_000, 718_000_000, 9.5, 9.5, 2, 10.0, "F3e1x1", {}, True)
    reports = [
        (GridReport("s", "sqlite:///x", "efficientnet_b0", 1.0, [g], g, 1, 2, 2, 0, **common), grid_table,
         {"base", "phi", "rows", "best", "candidates", "epochs_per_candidate", "epochs_trained", "pruned",
          "epochs_saved", "command"}),
        (StudyReport("st", "sqlite:///x", "efficientnet_b0", [_row("baseline", 1.0, 96.0, [95, 96])], 1, **common),
         format_study, {"base", "rows", "candidates", "summary"}),
        (SearchReport("a", "sqlite:///x", "v2-b0", 10, "v2", 1, 126.0, 7_140_000, 718_000_000, [t], t, **common),
         arch_table, {"space", "space_size", "reward", "trials", "base_step_ms", "base_params", "base_flops", "rows",
                      "best", "front"}),
    ]
    for rep, table, own in reports:
        d = json.loads(json.dumps(rep.to_dict()))
        assert set(d) == own | {"study", "storage", "protocol", "warnings", "validation", "files"}
        assert d["protocol"] == protocol and d["warnings"] == ["budget too small"]
        assert d["validation"]["kendall_tau"] == -1.0 and len(d["rows"]) == 1
        lines = table(rep).splitlines()
        assert lines[0].startswith("protocol: digits, 2 epoch(s) per trial at 64 px (base)")
        assert lines[1] == "warning: budget too small" and set(lines[3]) == {"-"}
        assert lines[-1].startswith("rank fidelity: Kendall tau -1.00")
