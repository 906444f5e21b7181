"""The architecture search (effnet.search): spaces, rewards, measured step time, and real digits
searches with resume, workers, a killed worker and the Pareto mode.

Searches here are tiny (a one-layer-per-stage V2-B0, 128 digits, one epoch at 32 px) so that
the whole file stays well under two minutes on a 2-core CPU. Expected values are computed in
the tests from the recorded measurements or written out by hand, never read from the code under
test."""

from __future__ import annotations

import json
import math
import signal
import statistics
import textwrap
import time

import pytest
import torch

optuna = pytest.importorskip("optuna")

import effnet  # noqa: E402
from effnet.lab import store  # noqa: E402
from effnet.search import reward as R  # noqa: E402
from effnet.search.run import BASE, IS_BASE, run  # noqa: E402
from effnet.search.space import SearchSpace, SpaceError, StageChoices, around, load_space  # noqa: E402
from effnet.specs.base import ModelSpec, StageSpec  # noqa: E402

#: Proxy budget of every real search here.
TINY = dict(data="digits", epochs=1, image_size=32, train_subset=128, batch_size=32, step_batch=8, step_steps=3,
            step_warmup=1, progress=False)


def tiny_base() -> ModelSpec:
    """EfficientNetV2-B0 with one layer per stage: the same stage structure, cheap to train."""
    b0 = effnet.get_spec("efficientnetv2_b0")
    return b0.replace(name="v2b0_tiny", stages=tuple(StageSpec(s.op, 1, s.kernel, s.stride, s.expand, s.channels, s.se)
                                                     for s in b0.stages))


def tiny_space() -> SearchSpace:
    return around(tiny_base(), "tiny", op=("mbconv", "fused"), kernel=(3, 5), expand=(1, 4, 6), se=(0.0, 0.25),
                  layers=(0, 1))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    rep = run(tiny_space(), trials=3, out=out, seed=0, **TINY)
    study = optuna.load_study(study_name=rep.study, storage=rep.storage)
    return rep, study, out


# --- rewards: hand-computed values --------------------------------------------------------------
def test_rewards_match_hand_computation():
    # 80 * 2^-0.07 * 0.5^-0.05 = 80 * 0.9526380 * 1.0352649
    assert R.v2_reward(80, 2.0, 0.5, s0=1.0, p0=1.0) == pytest.approx(78.898616, rel=1e-6)
    assert R.v2_reward(80, 10.0, 4.0, s0=10.0, p0=4.0) == 80  # the base scores its accuracy
    assert R.mnas_soft(75, 800e6, 400e6) == pytest.approx(75 * 0.9526380, rel=1e-6)  # 2^-0.07
    assert R.mnas_soft(75, 200e6, 400e6) == pytest.approx(75 / 0.9526380, rel=1e-6)  # under T: rewarded
    assert R.mnas_hard(75, 399e6, 400e6) == 75  # within T: accuracy alone
    assert R.mnas_hard(75, 800e6, 400e6) == 37.5  # twice T: halved (beta = -1)
    with pytest.raises(ValueError, match="positive"):
        R.v2_reward(80, 0.0, 1.0, s0=1.0, p0=1.0)


def test_pareto_front_of_hand_made_points():
    pts = [(90, 1.0, 1.0), (80, 2.0, 2.0), (95, 3.0, 1.0), (90, 1.0, 1.0), (85, 0.5, 5.0), (95, 3.0, 2.0)]
    # (80,2,2) is worse than (90,1,1) everywhere; (95,3,2) is (95,3,1) with more parameters.
    assert R.pareto_front(pts) == [0, 2, 3, 4]


# --- spaces -------------------------------------------------------------------------------------
def test_builtin_spaces_sizes_and_base_points():
    v2b0 = load_space("v2-b0")
    # Per stage 2 ops x 2 kernels x 3 expansions x 2 SE = 24, times the layer deltas: {0,+1} on the
    # one-layer first stage, {-1,0,+1} on the five others: 48 * 72^5.
    assert v2b0.size == 48 * 72**5
    b0 = load_space("b0")
    assert b0.size == (1 * 2 * 3 * 2) ** 7 * 2 * 3**5 * 2  # stages 0 and 6 have one layer
    for space in (v2b0, b0, load_space("v2-s")):
        base = space.candidate(space.base_params())
        assert base.stages == space.base.stages  # the base is a point of its own space


def test_every_sampled_candidate_lies_in_the_declared_space_and_builds(tmp_path):
    space = load_space("v2-b0")
    base = effnet.get_spec("efficientnetv2_b0")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(25):
        spec = space.sample(study.ask())
        assert len(spec.stages) == len(base.stages)
        for s, b in zip(spec.stages, base.stages):  # the declared choices, written out here
            assert s.op in ("mbconv", "fused") and s.kernel in (3, 5) and s.expand in (1, 4, 6)
            assert s.se in (0.0, 0.25) and s.repeats - b.repeats in (-1, 0, 1) and s.repeats >= 1
            assert (s.channels, s.stride) == (b.channels, b.stride)  # kept from the backbone
        with torch.device("meta"):
            net = effnet.build(spec).eval()
        assert net(torch.empty(1, 3, 32, 32, device="meta")).shape == (1, 1000)
        spec.save(tmp_path / "c.yaml")
        assert ModelSpec.load(tmp_path / "c.yaml") == spec


@pytest.mark.parametrize("body, field", [
    ("base: efficientnetv2_b0\nstages: [{}, {kernel: [3, 4]}, {}, {}, {}, {}]\n", r"stages\[1\]\.kernel"),
    ("base: efficientnetv2_b0\ndefault: {op: [mbconv, conv]}\n", r"stages\[0\]\.op"),
    ("base: efficientnetv2_b0\ndefault: {kernal: [3]}\n", r"default\.kernal"),
    ("base: efficientnetv2_b0\ndefault: {expand: [0.5, 4]}\n", r"\.expand"),
    ("base: efficientnetv2_b0\ndefault: {se: [0.25, 1.5]}\n", r"\.se"),
    ("base: efficientnetv2_b0\nstages: [{}, {}]\n", r"stages: expected a list of 6"),
    ("default: {op: [mbconv]}\n", r"base: missing"),
    ("base: efficientnetv2_b0\nchoices: {}\n", r"unknown field\(s\) \['choices'\]"),
])
def test_an_invalid_space_file_is_refused_naming_the_field(tmp_path, body, field):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    with pytest.raises(SpaceError, match=field) as e:
        load_space(path)
    assert str(path) in str(e.value)


def test_an_impossible_space_is_refused_before_any_training(tmp_path, monkeypatch):
    from effnet.lab.budget import TrialBudget

    monkeypatch.setattr(TrialBudget, "train", lambda *a, **k: pytest.fail("trained an impossible space"))
    path = tmp_path / "space.yaml"
    # V2-B0's second stage has 2 layers and stride 2: a delta of -2 would remove it.
    path.write_text("base: efficientnetv2_b0\nstages: [{}, {layers: [-2, 0]}, {}, {}, {}, {}]\n")
    with pytest.raises(SpaceError, match=r"stages\[1\]\.layers: delta -2 .* stride-2"):
        run(path, trials=1, out=tmp_path / "out", **TINY)
    assert not (tmp_path / "out").exists()  # no study, nothing measured
    with pytest.raises(SpaceError, match=r"stages\[0\]\.layers"):  # one-layer first stage, delta -1
        SearchSpace("x", effnet.get_spec("efficientnetv2_b0"),
                    tuple(StageChoices(("mbconv",), (3,), (4,), (0.0,), (-1, 0)) for _ in range(6)))
    from effnet.cli import main

    assert main(["search", "--space", str(path), "--trials", "1", "--out", str(tmp_path / "o2")]) == 1


# --- S is a measured time -------------------------------------------------------------------------
def _hand_step_ms(spec: ModelSpec, size: int, batch: int) -> float:
    """A training step timed here, independently of effnet.profile.step_time."""
    net = effnet.build(spec).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@pytest.mark.slow  # compares wall-clock times: meaningful only on a machine nothing else is loading
def test_step_time_follows_the_real_cost_of_the_architecture():
    from effnet.search.run import StepBudget, measure

    base = tiny_base()
    heavy = base.replace(stages=tuple(StageSpec("fused", 2, 5, s.stride, 6, s.channels, 0.0) for s in base.stages))
    light = base.replace(stages=tuple(StageSpec("mbconv", 1, 3, s.stride, 1, s.channels, 0.0) for s in base.stages))
    step = StepBudget(batch=8, warmup=1, steps=3, threads=torch.get_num_threads())
    s_heavy = measure(heavy, 32, step)["step_time_ms"]
    s_light = measure(light, 32, step)["step_time_ms"]
    assert s_heavy > 2 * s_light  # all-fused expand 6 kernel 5 at twice the depth is far slower
    assert _hand_step_ms(heavy, 32, 8) > 2 * _hand_step_ms(light, 32, 8)  # and so says a stopwatch


# --- a real digits search -------------------------------------------------------------------------
def test_a_digits_search_writes_best_spec_table_and_plot_and_the_best_trains(searched, tmp_path):
    rep, study, out = searched
    assert len(rep.rows) == 3 and rep.complete
    for name in ("best.yaml", "table.txt", "results.json", "search.png"):
        assert (out / name).is_file(), name
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["best"]["number"] == rep.best.number
    table = (out / "table.txt").read_text()
    assert "<- base" in table and "best" in table and "3/3 trial(s) finished" in table
    best = ModelSpec.load(out / "best.yaml")
    assert tiny_space().contains(best)
    # The best is the trial with the highest recorded objective value.
    top = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert best.stages == tiny_space().candidate(top.params).stages
    from effnet.cli import main

    assert main(["train", "--spec", str(out / "best.yaml"), "--epochs", "1", "--train-subset", "64",
                 "--image-size", "32", "--out", str(tmp_path / "run")]) == 0


def test_recorded_reward_equals_a_times_s_w_times_p_v(searched):
    rep, study, _ = searched
    s0, p0 = study.user_attrs[BASE]["step_time_ms"], study.user_attrs[BASE]["params"]
    with torch.device("meta"):  # P0 counted here, not read from the search
        assert p0 == sum(p.numel() for p in effnet.build(tiny_base()).parameters())
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:
        a, s, p = t.user_attrs["top1"], t.user_attrs["step_time_ms"], t.user_attrs["params"]
        expected = a * (s / s0) ** -0.07 * (p / p0) ** -0.05
        assert t.value == pytest.approx(expected, rel=1e-9)
        assert t.user_attrs["reward"] == pytest.approx(expected, rel=1e-9)
        with torch.device("meta"):
            spec = tiny_space().candidate(t.params)
            assert p == sum(q.numel() for q in effnet.build(spec).parameters())
    assert [t.user_attrs.get(IS_BASE, False) for t in complete][0]  # the base trained first


def test_resume_trains_nothing_finished_and_stops_at_n(tmp_path, monkeypatch):
    space = tiny_space()
    first = run(space, trials=2, out=tmp_path, sampler="random", seed=1, **TINY)
    assert len(first.rows) == 2
    from effnet.lab.budget import TrialBudget

    trained: list[str] = []
    real = TrialBudget.train

    def counting(self, spec, size, trial=None):
        trained.append(spec.name)
        return real(self, spec, size, trial)

    monkeypatch.setattr(TrialBudget, "train", counting)
    again = run(space, trials=2, out=tmp_path, sampler="random", seed=1, **TINY)
    assert trained == [] and [r.number for r in again.rows] == [r.number for r in first.rows]
    more = run(space, trials=3, out=tmp_path, sampler="random", seed=1, **TINY)
    assert len(trained) == 1 and len(more.rows) == 3
    with pytest.raises(store.StudyError, match="epochs: study has 1, this run asks 2"):
        run(space, trials=3, out=tmp_path, sampler="random", **{**TINY, "epochs": 2})


@pytest.mark.slow  # ~8 s; the front's rule is checked by test_pareto_front_of_hand_made_points in the default run
def test_pareto_front_contains_no_dominated_trial(tmp_path):
    rep = run(tiny_space(), trials=4, reward="pareto", sampler="random", seed=3, out=tmp_path, **TINY)
    study = optuna.load_study(study_name=rep.study, storage=rep.storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4
    pts = {t.number: (t.values[0], t.values[1], t.values[2]) for t in done}

    def dominated(n: int) -> bool:  # brute force, written out
        a, s, p = pts[n]
        return any(a2 >= a and s2 <= s and p2 <= p and (a2 > a or s2 < s or p2 < p)
                   for m, (a2, s2, p2) in pts.items() if m != n)

    assert rep.front and all(not dominated(n) for n in rep.front)
    assert all(dominated(n) for n in pts if n not in rep.front)  # and it misses none
    assert rep.best is not None and rep.best.number in rep.front
    assert (tmp_path / "search.png").is_file() and (tmp_path / "best.yaml").is_file()
    assert len(list((tmp_path / "front").glob("*.yaml"))) == len(rep.front)


# --- workers and a killed worker, with a cheap evaluate (as tests/test_lab_store.py) ---------------
JOB = textwrap.dedent('''
    import os, sys, time
    import optuna
    from effnet.lab import queue, store

    storage, n, seconds, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

    def evaluate(trial):
        x = trial.suggest_categorical("x", list(range(1000)))
        with open(log, "a") as f:
            f.write(f"{os.getpid()} start {x}\\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} end {x}\\n")
        return float(x), {}

    study = store.open_study(storage, "t", {"kind": "test"}, sampler=optuna.samplers.RandomSampler())
    queue.work_sampled(study, n, evaluate)
''')


@pytest.fixture
def lab(study_workers):
    start, storage, log = study_workers(JOB)

    def events() -> list[tuple[int, str, int]]:
        return [(int(p), e, int(x)) for p, e, x in (line.split() for line in log.read_text().splitlines())]

    return start, storage, events


def states(storage: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name="t", storage=storage).trials]


def test_two_workers_reach_exactly_n_finished_trials(lab):
    start, storage, events = lab
    workers = [start(8, 0.2), start(8, 0.2)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    assert states(storage).count("COMPLETE") == 8
    ends = [(p, x) for p, e, x in events() if e == "end"]
    assert len(ends) == 8 and len({p for p, _ in ends}) == 2  # both trained, 8 in all


@pytest.mark.slow  # ~5 s; the queue's recovery of a killed worker is in tests/test_lab_store.py's default run
def test_a_killed_workers_trial_is_trained_again_by_the_next_run(lab):
    start, storage, events = lab
    w = start(4, 0.5)
    deadline = time.time() + 60
    while time.time() < deadline and sum(e == "start" for _, e, _ in events()) < 2:
        time.sleep(0.05)
    w.send_signal(signal.SIGKILL)  # mid-trial: one finished, the second running
    w.wait()
    killed = [x for _, e, x in events() if e == "start"][1]
    assert states(storage) == ["COMPLETE", "RUNNING"]

    again = start(4, 0.05)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    second = [x for p, e, x in events() if e == "start" and p == again.pid]
    assert second[0] == killed and len(second) == 3  # the killed candidate first, then two new ones
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state.name for t in study.trials].count("COMPLETE") == 4
    assert study.trials[1].state.name == "FAIL"
    retry = [t for t in study.trials if t.user_attrs.get(store.RETRY_OF) == 1]
    assert len(retry) == 1 and retry[0].params == {"x": killed} and retry[0].state.name == "COMPLETE"
    # A third run finds the study complete and trains nothing.
    third = start(4, 0.05)
    third.communicate(timeout=60)
    assert not [x for p, e, x in events() if p == third.pid]
    assert math.isfinite(study.trials[0].value)


def test_the_table_of_a_study_without_a_measured_base_shows_dashes_not_a_division_error():
    """format_table divided by the base's parameters and step time, which are 0 when the base
    was never measured: the ratio columns show '-' instead."""
    import dataclasses

    from effnet.search.run import SearchReport, _ratio

    assert _ratio(3.0, 0) == "    -" and _ratio(3.0, 2.0) == " 1.50"
    assert dataclasses.is_dataclass(SearchReport)
