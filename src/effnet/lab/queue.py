"""The trial queue: workers take candidates from a study, train them and record the outcome.

A fixed list of candidates (grid points, strategies at matched FLOPs): each candidate is put on
the study's own queue as a WAITING trial (``Study.enqueue_trial``); a worker takes one with
``Study.ask()``, which moves a WAITING trial to RUNNING, trains it and reports. Finished candidates are never queued again, so nothing is retrained.

Two workers starting together may both queue a missing candidate, so a candidate can have
several WAITING copies. On SQLite, Optuna's ``ask`` reads a trial's state before it opens the
write transaction, so two workers asking at once could both take the same WAITING trial;
:func:`effnet.lab.store.pop_lock` makes one ask wait for the other. A worker that has taken a
copy then checks the study for another copy of the same candidate that finished, or that is
waiting or running with a lower trial number, and if there is one it gives its trial up (FAIL,
``effnet.duplicate_of``) without training. Trial numbers are fixed when a copy is queued (its
candidate written with it in one transaction), and a lower-numbered copy already exists when a
higher one is checked, so every worker ranks the copies alike whichever order the takes commit
and check in: the lowest copy not failed is the one trained (a waiting one is taken next, as
workers go on while anything waits), so every candidate is trained once. Start times would not
do: Optuna stamps a trial's start before the transaction commits, so a claim checked first
could later look "started after" one that committed late. A trial whose worker died
(:mod:`effnet.lab.liveness`) is failed and its candidate queued again.

A trial whose own training raises is different: the cause (a bad data folder, recipe or option)
would fail the next candidate alike, so the worker stops with :class:`TrialFailed` naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from effnet.lab.liveness import claim, heartbeat, quiet, recover_dead
from effnet.lab.store import (
    DUPLICATE_OF,
    ERROR,
    KEY,
    RETRY_OF,
    STOPPED,
    SURPLUS,
    Candidate,
    finished_trials,
    live_keys,
    pop_lock,
    results,
    retrying,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class TrialFailed(RuntimeError):
    """A trial's training raised: the search stops with that reason (a bad data folder, recipe
    or option would fail every candidate the same way; running the command again cannot help
    until the cause is fixed)."""


#: A sampled search stops after this many failed trials in a row (one failure may belong to
#: one candidate, e.g. out of memory; several in a row are the search's own cause).
MAX_FAILURES_IN_A_ROW = 3


def fill_queue(study: optuna.Study, candidates: list[Candidate]) -> int:
    """Queue every candidate that has no finished, waiting or running trial. Returns how many
    were queued (0 when the study is complete or the others are being trained)."""
    recover_dead(study)
    live = live_keys(study)
    queued = 0
    for c in candidates:
        if c.key not in live:
            study.enqueue_trial(c.params, user_attrs={KEY: c.key, **c.attrs})
            queued += 1
    return queued


def take(study: optuna.Study, candidates: list[Candidate]) -> tuple[optuna.Trial, Candidate] | None:
    """Take the next queued candidate for this worker, or ``None`` when none is left."""
    from optuna.trial import TrialState

    by_key = {c.key: c for c in candidates}
    while True:
        recover_dead(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        trial = _ask(study)
        key = trial.user_attrs.get(KEY)
        if key is None:
            # The queue ran empty between the check and ask(): ask() made a fresh trial. Give it
            # up, and queue a candidate nobody has as a copy of its own: a candidate written
            # onto a running trial afterwards would be a claim other workers could miss.
            trial.set_user_attr(ERROR, "no candidate left to train")
            retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a trial")
            free = [c for c in candidates if c.key not in live_keys(study)]
            if not free:
                return None
            study.enqueue_trial(free[0].params, user_attrs={KEY: free[0].key, **free[0].attrs})
            continue
        claim(trial)
        if key not in by_key:
            trial.set_user_attr(ERROR, f"candidate {key!r} is not in this run's list")
            retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a trial")
            continue
        earlier = _earlier_claim(study, trial, key)
        if earlier is not None:
            trial.set_user_attr(DUPLICATE_OF, earlier)
            retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a duplicate")
            continue
        for name, value in by_key[key].params.items():
            trial.suggest_float(name, value, value)  # records the parameter (fixed by the queue)
        return trial, by_key[key]


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``: the next WAITING trial, moved to RUNNING by this worker alone (see
    :func:`effnet.lab.store.pop_lock`), else a fresh one."""
    with pop_lock(study), quiet():
        return retrying(study.ask, "take a trial")


def _earlier_claim(study: optuna.Study, trial: optuna.Trial, key: str) -> int | None:
    """Another copy of candidate ``key`` that is trained instead of ``trial``: a finished one,
    or a waiting or running one with a lower number; ``None`` when ``trial`` is the one. Called
    after ``trial`` is RUNNING, so of two copies checked in any order the higher-numbered one
    always sees the lower (created first) and gives way, and the lower never gives way to it."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or t.user_attrs.get(KEY) != key:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return t.number
        if t.state in (TrialState.WAITING, TrialState.RUNNING) and t.number < trial.number:
            return t.number
    return None


#: A candidate's training: (trial, candidate) -> (objective value, user attributes to record).
Evaluate = Callable[["optuna.Trial", Candidate], "tuple[float, dict[str, Any]]"]


def work(study: optuna.Study, candidates: list[Candidate], evaluate: Evaluate,
         on_done: Callable[[], None] | None = None) -> int:
    """Train queued candidates until the queue is empty. Returns how many this worker trained.

    ``optuna.TrialPruned`` from ``evaluate`` records the trial as PRUNED (its last reported
    value kept); another exception records it as FAIL with the error and stops the worker with
    :class:`TrialFailed` naming it (every candidate of a fixed list trains the same way, so
    the next would most likely fail alike). Ctrl-C/SIGTERM (``KeyboardInterrupt``, including
    effnet's ``Interrupted``) fails the running trial, so the next run trains it again, and
    stops the worker.
    """
    fill_queue(study, candidates)
    done = 0
    while (taken := take(study, candidates)) is not None:
        trial, cand = taken
        error = _run_one(study, trial, f"candidate {cand.key}", lambda t=trial, c=cand: evaluate(t, c))
        if error is not None:
            raise TrialFailed(f"candidate {cand.key} failed: {error}; fix the cause, then run the same command "
                              "again (finished candidates are kept)")
        done += 1
        if on_done is not None:
            on_done()
    return done


# --- sampled searches --------------------------------------------------------------------------
# The architecture search does not know its candidates in advance: the study's sampler (TPE,
# random, NSGA-II) proposes each one from the trials so far. A worker asks for a new trial until
# the study has N finished ones. Resume, workers and dead workers behave as for a fixed list:
# finished trials are kept and counted, workers share the count, and a trial whose worker died
# is failed and its parameters put back on the queue (``enqueue_trial``) so that the same
# candidate is trained again rather than lost or replaced by another sample.


def requeue_dead(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers (:func:`recover_dead`), then queue again the parameters of
    every failed trial that was stopped from outside (dead worker, Ctrl-C/SIGTERM) and has not
    been queued again yet. A trial whose own training raised keeps its FAIL (it would fail
    again), as does a duplicate or surplus trial. Returns the numbers of the trials re-queued."""
    from optuna.trial import TrialState

    recover_dead(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    live = live_keys(study)
    requeued = []
    for t in trials:
        u = t.user_attrs
        if t.state != TrialState.FAIL or not t.params or t.number in retried or f"retry-{t.number}" in live:
            continue
        if u.get(ERROR, STOPPED) != STOPPED or DUPLICATE_OF in u or SURPLUS in u:
            continue
        study.enqueue_trial(dict(t.params), user_attrs={RETRY_OF: t.number, KEY: f"retry-{t.number}"})
        requeued.append(t.number)
    if requeued:
        log.warning("trial(s) %s of study %r were stopped before they finished: their candidates are queued "
                    "to be trained again", requeued, study.study_name)
    return requeued


def _claims_before(study: optuna.Study, trial: optuna.Trial) -> int:
    """Finished trials plus running ones that started before ``trial``: the earliest claims
    win, so two workers asking at once never make the study exceed its number of trials."""
    from optuna.trial import TrialState

    everything = study.get_trials(deepcopy=False)
    me = next(t for t in everything if t.number == trial.number)
    n = 0
    for t in everything:
        if t.number == trial.number:
            continue
        started_before = t.state == TrialState.RUNNING and t.datetime_start is not None \
            and me.datetime_start is not None and (t.datetime_start, t.number) < (me.datetime_start, me.number)
        n += t.state in (TrialState.COMPLETE, TrialState.PRUNED) or started_before
    return n


def take_sampled(study: optuna.Study, trials: int) -> optuna.Trial | None:
    """The next trial for this worker of a sampled search: a re-queued candidate first (Optuna's
    ``ask`` takes WAITING trials before sampling), else a new one from the sampler; ``None``
    once the study has ``trials`` finished or running trials."""
    from optuna.trial import TrialState

    while True:
        requeue_dead(study)
        busy = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if len(busy) >= trials:
            return None
        trial = _ask(study)
        claim(trial)
        key = trial.user_attrs.get(KEY)
        earlier = _earlier_claim(study, trial, key) if key is not None else None
        if earlier is not None:  # two workers re-queued the same dead trial: one trains it
            trial.set_user_attr(DUPLICATE_OF, earlier)
            retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a duplicate")
            continue
        if _claims_before(study, trial) >= trials:
            trial.set_user_attr(SURPLUS, trials)
            retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a surplus trial")
            continue
        return trial


#: A sampled trial's training: trial -> (objective value(s), user attributes to record). It
#: draws its candidate from the trial (``trial.suggest_categorical``...).
SampledEvaluate = Callable[["optuna.Trial"], "tuple[float | list[float], dict[str, Any]]"]


def work_sampled(study: optuna.Study, trials: int, evaluate: SampledEvaluate,
                 on_done: Callable[[], None] | None = None) -> int:
    """Train sampled candidates until the study has ``trials`` finished trials (this worker's,
    other workers' and earlier runs' together). Returns how many this worker trained. Failures,
    pruning and signals are recorded as by :func:`work`."""
    if trials < 1:
        raise ValueError(f"trials: expected >= 1, got {trials}")
    done, errors = 0, []
    while (trial := take_sampled(study, trials)) is not None:
        error = _run_one(study, trial, f"trial {trial.number}", lambda t=trial: evaluate(t))
        errors = [*errors, error] if error is not None else []
        if len(errors) >= MAX_FAILURES_IN_A_ROW:
            raise TrialFailed(f"{len(errors)} trials in a row failed, the last with: {error}; fix the cause, then "
                              "run the same command again (finished trials are kept)")
        done += error is None
        if on_done is not None:
            on_done()
    return done


def _run_one(study: optuna.Study, trial: optuna.Trial, label: str,
             fn: Callable[[], tuple[Any, dict[str, Any]]]) -> str | None:
    """Train one taken trial under a heartbeat and record its outcome (see :func:`work`);
    the error when its training raised, else ``None``."""
    import optuna
    from optuna.trial import TrialState

    try:
        with heartbeat(study, trial):
            value, attrs = fn()
    except optuna.TrialPruned as e:
        for k, v in getattr(e, "attrs", {}).items():
            trial.set_user_attr(k, v)
        retrying(lambda t=trial: study.tell(t, state=TrialState.PRUNED), "record a pruned trial")
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            trial.set_user_attr(ERROR, STOPPED)
            study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as e:
        log.error("%s failed: %s: %s", label, type(e).__name__, e)
        error = f"{type(e).__name__}: {e}"
        trial.set_user_attr(ERROR, error)
        retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "record a failed trial")
        return error
    else:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        retrying(lambda t=trial, v=value: _tell_once(study, t, v), "record a trial")
    return None


def _tell_once(study: Any, trial: Any, value: float) -> None:
    """``study.tell`` that may be retried: a first attempt can commit and still raise (SQLite's
    "database is locked" after the write), and the retry then finds the trial finished. That
    trial is recorded, which is what the retry was for."""
    from optuna.exceptions import UpdateFinishedTrialError  # optuna: the lab's storage, loaded with it

    try:
        study.tell(trial, value)
    except UpdateFinishedTrialError:
        log.debug("trial %d was already recorded by an earlier attempt", trial.number)


class SampledJob(Protocol):
    """A sampled search handed to :func:`run_workers` (picklable, like :class:`Job`)."""

    trials: int

    def open(self) -> optuna.Study: ...

    def evaluate(self, trial: optuna.Trial) -> tuple[float | list[float], dict[str, Any]]: ...


class Job(Protocol):
    """What a lab run hands to its workers (picklable: extra workers are spawned processes)."""

    candidates: list[Candidate]

    def open(self) -> optuna.Study: ...

    def evaluate(self, trial: optuna.Trial, cand: Candidate) -> tuple[float, dict[str, Any]]: ...


def _worker(job: Job, threads: int) -> int:
    """One spawned worker process: take candidates from the study until none is left."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [worker %(process)d] %(name)s: %(message)s")
    torch.set_num_threads(threads)
    return _drive(job, job.open())


def _drive(job: Job | SampledJob, study: optuna.Study, on_done: Callable[[], None] | None = None) -> int:
    """One worker's loop: a fixed list (``job.candidates``) or a sampled search (``job.trials``)."""
    if hasattr(job, "candidates"):
        return work(study, job.candidates, job.evaluate, on_done)
    return work_sampled(study, job.trials, job.evaluate, on_done)


def _finished(job: Job | SampledJob, study: optuna.Study) -> int:
    return len(results(study)) if hasattr(job, "candidates") else len(finished_trials(study))


def run_workers(job: Job | SampledJob, workers: int = 1, progress: bool = True) -> None:
    """Work through ``job``'s study with ``workers`` processes: this one and ``workers - 1``
    spawned ones, each with its share of the CPU threads. A progress bar counts the finished
    candidates of the whole study (other machines' included). ``job`` is a fixed list of
    candidates (:class:`Job`) or a sampled search (:class:`SampledJob`, until the study has
    ``job.trials`` finished trials)."""
    import multiprocessing

    import torch
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch.get_num_threads()
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked copy of torch's thread pools
    procs = [ctx.Process(target=_worker, args=(job, threads)) for _ in range(workers - 1)]
    for p in procs:
        p.start()
    study = job.open()
    total = len(job.candidates) if hasattr(job, "candidates") else job.trials
    bar = tqdm(total=total, unit="candidate", disable=not progress, dynamic_ncols=True)

    def refresh() -> None:
        bar.n = _finished(job, study)
        bar.refresh()

    threads_before = torch.get_num_threads()
    try:
        refresh()
        torch.set_num_threads(threads)
        _drive(job, study, on_done=refresh)
        for p in procs:
            while p.is_alive():
                p.join(timeout=1.0)
                refresh()
    except BaseException:
        for p in procs:  # Ctrl-C reaches the whole process group; make sure none is left behind
            p.terminate()
        raise
    finally:
        torch.set_num_threads(threads_before)
        refresh()
        bar.close()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        from optuna.trial import TrialState

        errors = [t.user_attrs[ERROR] for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.user_attrs.get(ERROR) not in (None, STOPPED)]
        raise TrialFailed(f"{len(failed)} worker process(es) stopped with an error (exit codes {failed})"
                          + (f", the last trial error: {errors[-1]}" if errors else "")
                          + "; fix the cause, then run the same command again (finished candidates are kept)")


def prune_check(trial: optuna.Trial, epoch: int, value: float, attrs: dict[str, Any]) -> None:
    """Report ``value`` at ``epoch`` and stop the trial if the study's pruner says so."""
    import optuna

    trial.report(value, epoch)
    if trial.should_prune():
        e = optuna.TrialPruned(f"pruned after epoch {epoch} at {value:.2f}")
        e.attrs = attrs  # type: ignore[attr-defined]
        raise e
