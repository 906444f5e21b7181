"""The lab's study machinery (effnet.lab.store): resume, workers sharing one SQLite study, a
killed worker, bad storage and other settings. Candidates here "train" by sleeping, so that the
bookkeeping is tested apart from training (the scaling tests train for real)."""

from __future__ import annotations

import contextlib
import datetime
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from effnet.lab import queue, store  # noqa: E402

JOB = textwrap.dedent('''
    import os, sys, time
    from effnet.lab import queue, store

    class SleepJob:
        def __init__(self, storage, n, seconds, log):
            self.storage, self.n, self.seconds, self.log = storage, n, seconds, log
            self.candidates = [store.Candidate(f"c{i}", {"x": float(i)}) for i in range(n)]

        def open(self):
            return store.open_study(self.storage, "t", {"kind": "test", "n": self.n})

        def evaluate(self, trial, cand):
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} start {cand.key}\\n")
            time.sleep(self.seconds)
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} end {cand.key}\\n")
            return float(cand.params["x"]), {"pid": os.getpid()}

    if __name__ == "__main__":
        storage, n, seconds, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
        job = SleepJob(storage, n, seconds, log)
        queue.work(job.open(), job.candidates, job.evaluate)
''')


@pytest.fixture
def lab(study_workers):
    return study_workers(JOB)


def events(log: Path) -> list[tuple[int, str, str]]:
    return [(int(p), e, k) for p, e, k in (line.split() for line in log.read_text().splitlines())]


def finished(storage: str) -> dict[str, list[str]]:
    study = optuna.load_study(study_name="t", storage=storage)
    out: dict[str, list[str]] = {}
    for t in study.get_trials(deepcopy=False):
        if store.KEY in t.user_attrs:
            out.setdefault(t.user_attrs[store.KEY], []).append(t.state.name)
    return out


def test_two_workers_split_the_queue_and_train_every_candidate_once(lab):
    start, storage, log = lab
    workers = [start(10, 0.3), start(10, 0.3)]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    ended = [k for _, e, k in events(log) if e == "end"]
    assert sorted(ended) == sorted(f"c{i}" for i in range(10))  # each exactly once
    assert len({p for p, e, _ in events(log) if e == "end"}) == 2  # both workers trained some
    done = finished(storage)
    assert all(states.count("COMPLETE") == 1 for states in done.values()) and len(done) == 10


def test_two_workers_asking_at_once_never_take_the_same_queued_trial(tmp_path, monkeypatch):
    # Optuna's ask reads a WAITING trial, then moves it to RUNNING; hold each asker between the
    # two (until the other arrives, or 0.5 s) so that, unless the asks are serialized, both
    # read WAITING before either writes and both take trial 0.
    from optuna.storages._rdb import models

    storage = f"sqlite:///{tmp_path / 's.db'}"
    cands = [store.Candidate("c0", {"x": 0.0})]
    store.open_study(storage, "t", {}).enqueue_trial({"x": 0.0}, user_attrs={store.KEY: "c0"})
    studies = [store.open_study(storage, "t", {}) for _ in range(2)]  # one storage each, like two processes
    both_read = threading.Barrier(2, timeout=0.5)
    read = models.TrialModel.find_or_raise_by_id.__func__

    def read_then_wait(cls, trial_id, session, for_update=False):
        t = read(cls, trial_id, session, for_update)
        if for_update and t.state.name == "WAITING":
            with contextlib.suppress(threading.BrokenBarrierError):  # the other asker waits for this one
                both_read.wait()
        return t

    monkeypatch.setattr(models.TrialModel, "find_or_raise_by_id", classmethod(read_then_wait))
    taken: list = [None, None]

    def worker(i: int) -> None:
        got = queue.take(studies[i], cands)
        taken[i] = got and (got[0].number, got[1].key)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(taken, key=str) == [(0, "c0"), None]  # one worker has c0, the other finds nothing left
    assert finished(storage) == {"c0": ["RUNNING"]}


def test_a_copy_stamped_before_a_running_one_still_gives_way_to_it(tmp_path, monkeypatch):
    # Two workers queued c0 twice (trials 0 and 1). Optuna stamps a trial's start before its
    # transaction commits: a worker held between the two commits trial 1 with a start earlier
    # than trial 0's, after trial 0's worker checked. Only trial 0's worker may train c0.
    from optuna.storages._rdb import storage as rdb

    storage = f"sqlite:///{tmp_path / 's.db'}"
    cands = [store.Candidate("c0", {"x": 0.0})]
    study = store.open_study(storage, "t", {})
    for _ in range(2):
        study.enqueue_trial({"x": 0.0}, user_attrs={store.KEY: "c0"})
    first, cand = queue.take(study, cands)
    assert (first.number, cand.key) == (0, "c0")
    stamped = study.trials[0].datetime_start - datetime.timedelta(seconds=1)

    class Early(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return stamped

    monkeypatch.setattr(rdb, "datetime", Early)
    assert queue.take(study, cands) is None  # trial 1 was a duplicate; nothing else waits
    second = study.trials[1]
    assert second.datetime_start < study.trials[0].datetime_start  # the stamp did come out earlier
    assert second.state.name == "FAIL" and second.user_attrs[store.DUPLICATE_OF] == 0


def test_a_killed_worker_loses_no_finished_trial_and_its_candidate_is_trained_again(lab):
    start, storage, log = lab
    w = start(5, 0.5)
    deadline = time.time() + 60
    while time.time() < deadline and sum(e == "start" for _, e, _ in events(log)) < 3:
        time.sleep(0.05)
    w.send_signal(signal.SIGKILL)  # mid-trial: two finished, the third running
    w.wait()
    before = finished(storage)
    assert sorted(k for k, s in before.items() if "COMPLETE" in s) == ["c0", "c1"]
    assert before["c2"] == ["RUNNING"]  # left behind by the dead worker

    again = start(5, 0.05)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    second = [k for p, e, k in events(log) if e == "end" and p == again.pid]
    assert sorted(second) == ["c2", "c3", "c4"]  # the killed candidate again, no finished one
    after = finished(storage)
    assert after["c2"] == ["FAIL", "COMPLETE"]
    assert all(after[k] == ["COMPLETE"] for k in ("c0", "c1", "c3", "c4"))


def test_rerun_of_a_finished_study_trains_nothing(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cands = [store.Candidate(f"c{i}", {"x": float(i)}) for i in range(3)]
    calls: list[str] = []

    def evaluate(trial, cand):
        calls.append(cand.key)
        return cand.params["x"], {}

    assert queue.work(store.open_study(storage, "t", {"a": 1}), cands, evaluate) == 3
    assert queue.work(store.open_study(storage, "t", {"a": 1}), cands, evaluate) == 0
    assert calls == ["c0", "c1", "c2"]
    assert {k: t.value for k, t in store.results(store.open_study(storage, "t", {"a": 1})).items()} == \
        {"c0": 0.0, "c1": 1.0, "c2": 2.0}


def test_a_failing_candidate_stops_the_run_and_is_retried_by_the_next_one(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cands = [store.Candidate(f"c{i}", {"x": float(i)}) for i in range(2)]
    broken = {"c1"}

    def evaluate(trial, cand):
        if cand.key in broken:
            raise RuntimeError("out of memory")
        return 1.0, {}

    with pytest.raises(queue.TrialFailed, match="candidate c1 failed: RuntimeError: out of memory; fix the cause"):
        queue.work(store.open_study(storage, "t", {}), cands, evaluate)
    study = store.open_study(storage, "t", {})
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert [t.user_attrs[store.ERROR] for t in failed] == ["RuntimeError: out of memory"]
    broken.clear()
    assert queue.work(study, cands, evaluate) == 1
    assert sorted(store.results(study)) == ["c0", "c1"]


def test_a_study_with_other_settings_is_refused_naming_the_difference(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = store.open_study(storage, "t", {"epochs": 2, "phi": 1.0})
    queue.work(study, [store.Candidate("c0", {"x": 0.0})], lambda t, c: (1.0, {}))
    with pytest.raises(store.StudyError, match=r"epochs: study has 2, this run asks 3.*new --study"):
        store.open_study(storage, "t", {"epochs": 3, "phi": 1.0})
    assert len(store.results(store.open_study(storage, "t", {"epochs": 2, "phi": 1.0}))) == 1  # kept


@pytest.mark.parametrize("url, words", [
    ("sqlite:////nonexistent-dir/x/study.db", "cannot open the study storage"),
    ("postgresql://user:pw@127.0.0.1:1/db", "cannot open the study storage"),
    ("study.db", "expected a database URL"),
])
def test_an_unusable_storage_url_is_named(url, words):
    with pytest.raises(store.StudyError, match=words):
        store.open_study(url, "t", {})
