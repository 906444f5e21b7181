"""Optuna studies as the one record of a lab's trials, shared by every worker on every machine.

The scaling search (and the architecture search after it) trains a fixed list of candidates:
grid points, strategies at matched FLOPs. The study owns all state: each candidate
is put on the study's own queue as a WAITING trial (``Study.enqueue_trial``); a worker takes
one with ``Study.ask()``, which moves a WAITING trial to RUNNING in one storage transaction,
trains it and reports. Re-running the same command resumes: finished candidates are never
queued again, so nothing is retrained. Several workers (processes, or machines pointed at one
PostgreSQL/MySQL URL) split the queue between them.

Two workers starting together may both queue a missing candidate, and on SQLite two ``ask``
calls can race; so a worker that has taken a candidate checks the study for another trial of
the same candidate that finished or started before its own (``datetime_start``, then trial
number), and if there is one it gives its trial up (FAIL, ``effnet.duplicate_of``) without
training. The earliest claim always wins, so every candidate is trained once.

A worker that dies (SIGKILL, a lost machine) leaves its trial RUNNING. Where a later worker
can see the recorded PID (same hostname, boot id and PID namespace: :func:`machine_id`) it sees
that the process is gone, or that the PID now belongs to a process started at another time,
and fails the trial at once; elsewhere (other machines, other containers) the heartbeat
(``RDBStorage(heartbeat_interval=...)``) goes stale and ``optuna.storages.fail_stale_trials``
fails it after the grace period. Either way the candidate has no live trial any more and goes
back on the queue: it is trained again, and no finished trial is lost.

A trial whose own training raises is different: the cause (a bad data folder, recipe or option)
would fail the next candidate alike, so the worker stops with :class:`TrialFailed` naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from effnet.files import atomic_write

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Trial user attributes the lab writes.
KEY = "effnet.candidate"
HOST, PID = "effnet.host", "effnet.pid"
#: Where the worker's PID means something (boot id and PID namespace: containers on one host
#: share a hostname and may reuse PIDs), when that process started (a reused PID has another
#: start time), and a random token of the worker process (unique even when all else collides).
MACHINE, STARTED, TOKEN = "effnet.machine", "effnet.proc_start", "effnet.token"
DUPLICATE_OF = "effnet.duplicate_of"
ERROR = "effnet.error"
#: Sampled searches: the failed trial a re-queued one trains again; a trial given up because
#: the study already had its number of trials.
RETRY_OF, SURPLUS = "effnet.retry_of", "effnet.surplus"
#: The error a trial stopped by Ctrl-C/SIGTERM records (trained again by the next run).
STOPPED = "stopped by a signal"
#: Study user attribute: the settings a study was created with (a resumed run must match).
SETTINGS = "effnet.settings"

HEARTBEAT_S = 20
GRACE_S = 120


class StudyError(ValueError):
    """A study cannot be opened or resumed as asked (bad URL, other settings)."""


class TrialFailed(RuntimeError):
    """A trial's training raised: the search stops with that reason (a bad data folder, recipe
    or option would fail every candidate the same way; running the command again cannot help
    until the cause is fixed)."""


#: A sampled search stops after this many failed trials in a row (one failure may belong to
#: one candidate, e.g. out of memory; several in a row are the search's own cause).
MAX_FAILURES_IN_A_ROW = 3


@dataclass(frozen=True)
class Candidate:
    """One thing to train: ``key`` names it in the study; ``params`` are recorded as the
    trial's Optuna parameters (e.g. alpha, beta, gamma) and ``attrs`` as user attributes."""

    key: str
    params: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def default_storage(folder: str | Path) -> str:
    """A SQLite file in ``folder`` (created): one machine, any number of worker processes."""
    path = Path(folder).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'study.db'}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna warns that heartbeats are "experimental" and "supposed to be used with
    Study.optimize"; here they are used with ask/tell on purpose (a worker takes queued
    candidates, which optimize() cannot do without sampling new ones), so those warnings
    would only alarm the user."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def _storage(url: str, heartbeat: int) -> Any:
    import optuna

    if "://" not in url:
        raise StudyError(f"storage {url!r}: expected a database URL such as sqlite:///study.db or "
                         "postgresql://user:pass@host/db")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write one SQLite file: wait for a writer's lock instead of failing
        # at once with "database is locked".
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        for attempt in range(20):
            try:
                with _quiet():
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                                      grace_period=max(GRACE_S, 3 * heartbeat))
            except Exception as e:
                # Two workers started together on a new database both create its tables; the
                # loser sees a unique-constraint or "already exists" error. The tables are
                # there a moment later: open again.
                transient = ("UNIQUE constraint", "already exists", "locked", "duplicate key")
                if attempt == 19 or not any(w in str(e) for w in transient):
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")
    except (ImportError, ModuleNotFoundError) as e:
        raise StudyError(f"cannot open the study storage {url}: its database driver is not installed ({e}); "
                         "install it (PostgreSQL: psycopg for postgresql://, psycopg2-binary for postgresql+psycopg2://; "
                         "MySQL: pymysql)") from e
    except Exception as e:  # sqlalchemy's OperationalError/ArgumentError: unreachable, bad URL
        reason = str(e).splitlines()[0]
        raise StudyError(f"cannot open the study storage {url}: {reason}; check the URL, that the "
                         "server is running and reachable, and the credentials") from e


def open_study(
    storage: str, name: str, settings: Mapping[str, Any], *, direction: str = "maximize",
    prune: bool = False, heartbeat: int = HEARTBEAT_S, directions: list[str] | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create study ``name`` in ``storage`` with ``settings``, or load it when it exists and was
    created with the same settings; a study created with other settings is refused, naming
    each difference (resuming it would mix trials that are not comparable).

    ``prune``: successive halving (Li et al. 2018; Optuna's ``SuccessiveHalvingPruner``,
    minimum resource one epoch, reduction factor 2): after each epoch a trial goes on only if
    its accuracy is in the better half of the trials that reached that epoch (multi-fidelity:
    weak candidates stop after one or two epochs).

    ``directions`` (e.g. ``["maximize", "minimize", "minimize"]``) makes a multi-objective
    study (it replaces ``direction``; Optuna cannot prune those, so ``prune`` is refused);
    ``sampler`` proposes the trials of a sampled search (:func:`work_sampled`; default
    Optuna's, TPE)."""
    import optuna

    if directions is not None and prune:
        raise StudyError("prune: successive halving compares one intermediate value per epoch; a "
                         "multi-objective study (directions=...) cannot be pruned")

    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
              if prune else optuna.pruners.NopPruner())
    store = _storage(storage, heartbeat)
    settings = dict(settings)
    try:
        how: dict[str, Any] = {"directions": list(directions)} if directions is not None else {"direction": direction}
        study = optuna.create_study(storage=store, study_name=name, pruner=pruner, sampler=sampler, **how)
        study.set_user_attr(SETTINGS, settings)
        log.info("created study %r in %s", name, storage)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=name, storage=store, pruner=pruner, sampler=sampler)
    recorded = study.user_attrs.get(SETTINGS)
    for _ in range(50):  # its creator writes the settings just after creating it
        if recorded is not None:
            break
        time.sleep(0.2)
        recorded = optuna.load_study(study_name=name, storage=store).user_attrs.get(SETTINGS)
    if recorded is None:
        raise StudyError(f"study {name!r} in {storage} was not made by effnet (it has no {SETTINGS}); "
                         "pick another --study name")
    different = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    different.update({k: (v, None) for k, v in recorded.items() if k not in settings})
    if different:
        lines = ", ".join(f"{k}: study has {old!r}, this run asks {new!r}" for k, (old, new) in sorted(different.items()))
        raise StudyError(f"study {name!r} in {storage} was created with other settings ({lines}); rerun with "
                         "the study's settings to resume it, or give a new --study name (its trials are kept)")
    log.info("resuming study %r in %s (%d trials recorded)", name, storage, len(study.trials))
    return study


# --- the work queue ---------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This process's view of PIDs: hostname, kernel boot id and PID namespace. Two workers
    can judge each other's PIDs only when all three match (containers on one host share the
    hostname and the boot id but not the PID namespace)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}|{_read('/proc/sys/kernel/random/boot_id')}|{pidns}"


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), or ""
    where /proc does not tell; a PID reused by a newer process has another start time."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


_TOKEN: tuple[int, str] | None = None


def process_token() -> str:
    """A random token of this worker process (a forked child gets its own)."""
    global _TOKEN
    if _TOKEN is None or _TOKEN[0] != os.getpid():
        import secrets

        _TOKEN = (os.getpid(), secrets.token_hex(8))
    return _TOKEN[1]


def _claim(trial: optuna.Trial) -> None:
    """Record which worker process runs ``trial``."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())
    trial.set_user_attr(MACHINE, machine_id())
    trial.set_user_attr(STARTED, process_start(os.getpid()))
    trial.set_user_attr(TOKEN, process_token())


def _alive(pid: int, started: str = "") -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    # The PID exists; it is the same process only if it started when the worker did.
    return not started or not process_start(pid) or process_start(pid) == started


def worker_gone(attrs: Mapping[str, Any], here: str | None = None) -> bool:
    """Whether the worker recorded in a RUNNING trial's ``attrs`` is known to be dead: it ran
    where this process can see its PID (same :func:`machine_id`), is not this process, and
    that PID is gone or belongs to a process started at another time. Elsewhere only the
    heartbeat can tell."""
    pid = attrs.get(PID)
    if attrs.get(MACHINE) != (here or machine_id()) or not isinstance(pid, int):
        return False
    if attrs.get(TOKEN) == process_token() and pid == os.getpid():
        return False
    return not _alive(pid, str(attrs.get(STARTED) or ""))


def recover_dead(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker is gone (this machine: the recorded process no
    longer exists; other machines: a stale heartbeat). Returns the trial numbers failed."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    here = machine_id()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_gone(t.user_attrs, here):
            with contextlib.suppress(Exception):  # another worker may have failed it already
                study.tell(t.number, state=TrialState.FAIL)
                failed.append(t.number)
    with _quiet():
        optuna.storages.fail_stale_trials(study)
    if failed:
        log.warning("trial(s) %s of study %r belonged to a worker that is gone: marked failed, their "
                    "candidates go back on the queue", failed, study.study_name)
    return failed


def _live_keys(study: optuna.Study) -> set[str]:
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    return {t.user_attrs[KEY] for t in study.get_trials(deepcopy=False, states=live) if KEY in t.user_attrs}


def fill_queue(study: optuna.Study, candidates: list[Candidate]) -> int:
    """Queue every candidate that has no finished, waiting or running trial. Returns how many
    were queued (0 when the study is complete or the others are being trained)."""
    recover_dead(study)
    live = _live_keys(study)
    queued = 0
    for c in candidates:
        if c.key not in live:
            study.enqueue_trial(c.params, user_attrs={KEY: c.key, **c.attrs})
            queued += 1
    return queued


def _retrying(fn: Callable[[], Any], what: str) -> Any:
    """SQLite answers a write that collides with another process's with "database is
    locked" even after its timeout; retry a few times before giving up."""
    for attempt in range(10):
        try:
            with _quiet():
                return fn()
        except Exception as e:  # sqlalchemy.exc.OperationalError, without importing sqlalchemy
            if "locked" not in str(e) or attempt == 9:
                raise
            log.debug("%s: storage busy, retrying", what)
            time.sleep(0.2 * (attempt + 1))
    return None


def take(study: optuna.Study, candidates: list[Candidate]) -> tuple[optuna.Trial, Candidate] | None:
    """Take the next queued candidate for this worker, or ``None`` when none is left."""
    from optuna.trial import TrialState

    by_key = {c.key: c for c in candidates}
    while True:
        recover_dead(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        with _quiet():
            trial = _retrying(study.ask, "take a trial")
        key = trial.user_attrs.get(KEY)
        if key is None:
            # The queue ran empty between the check and ask(): ask() made a fresh trial. Give
            # it a candidate nobody has, or give it up.
            free = [c.key for c in candidates if c.key not in _live_keys(study) - {None}]
            if not free:
                trial.set_user_attr(ERROR, "no candidate left to train")
                _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a trial")
                return None
            key = free[0]
            trial.set_user_attr(KEY, key)
        _claim(trial)
        if key not in by_key:
            trial.set_user_attr(ERROR, f"candidate {key!r} is not in this run's list")
            _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a trial")
            continue
        earlier = _earlier_claim(study, trial, key)
        if earlier is not None:
            trial.set_user_attr(DUPLICATE_OF, earlier)
            _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a duplicate")
            continue
        for name, value in by_key[key].params.items():
            trial.suggest_float(name, value, value)  # records the parameter (fixed by the queue)
        return trial, by_key[key]


def _earlier_claim(study: optuna.Study, trial: optuna.Trial, key: str) -> int | None:
    from optuna.trial import TrialState

    mine = study.get_trials(deepcopy=False)  # one read: my own start time and everyone else's
    me = next(t for t in mine if t.number == trial.number)
    for t in mine:
        if t.number == trial.number or t.user_attrs.get(KEY) != key:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return t.number
        if t.state == TrialState.RUNNING and t.datetime_start is not None and me.datetime_start is not None \
                and (t.datetime_start, t.number) < (me.datetime_start, me.number):
            return t.number
    return None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat in the storage while the block runs, so that workers on
    other machines can tell a live trial from one whose worker died."""
    storage = study._storage  # the RDBStorage open_study made (Optuna keeps no public handle)
    interval = getattr(storage, "heartbeat_interval", None) or HEARTBEAT_S
    stop = threading.Event()

    def beat() -> None:
        failing = False
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial._trial_id)
                if failing:
                    log.info("heartbeat of trial %d recorded again", trial.number)
                failing = False
            except Exception as e:  # a missed beat is not worth killing the trial, but say so
                if not failing:
                    log.warning("heartbeat of trial %d not recorded (%s: %s): if this lasts more than %d s, other "
                                "machines will take the trial for dead and train its candidate again", trial.number,
                                type(e).__name__, e, GRACE_S)
                failing = True
            stop.wait(interval)

    thread = threading.Thread(target=beat, name=f"effnet-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


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

def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE and PRUNED trials, in trial order."""
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def requeue_dead(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers (:func:`recover_dead`), then queue again the parameters of
    every failed trial that was stopped from outside (dead worker, Ctrl-C/SIGTERM) and has not
    been queued again yet. A trial whose own training raised keeps its FAIL (it would fail
    again), as does a duplicate or surplus trial. Returns the numbers of the trials re-queued."""
    from optuna.trial import TrialState

    recover_dead(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    live = _live_keys(study)
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
        with _quiet():
            trial = _retrying(study.ask, "take a trial")
        _claim(trial)
        key = trial.user_attrs.get(KEY)
        earlier = _earlier_claim(study, trial, key) if key is not None else None
        if earlier is not None:  # two workers re-queued the same dead trial: one trains it
            trial.set_user_attr(DUPLICATE_OF, earlier)
            _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a duplicate")
            continue
        if _claims_before(study, trial) >= trials:
            trial.set_user_attr(SURPLUS, trials)
            _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "give up a surplus trial")
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
        _retrying(lambda t=trial: study.tell(t, state=TrialState.PRUNED), "record a pruned trial")
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            trial.set_user_attr(ERROR, STOPPED)
            study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as e:
        log.error("%s failed: %s: %s", label, type(e).__name__, e)
        error = f"{type(e).__name__}: {e}"
        trial.set_user_attr(ERROR, error)
        _retrying(lambda t=trial: study.tell(t, state=TrialState.FAIL), "record a failed trial")
        return error
    else:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        _retrying(lambda t=trial, v=value: _tell_once(study, t, v), "record a trial")
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


def results(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The finished trial (COMPLETE, else PRUNED) of each candidate, by candidate key."""
    from optuna.trial import TrialState

    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        key = t.user_attrs.get(KEY)
        if key is not None and (key not in out or t.state == TrialState.COMPLETE):
            out[key] = t
    return out


def save_report(folder: Path, table: str, report: Any) -> None:
    """``table.txt`` and ``results.json`` (``report.to_dict()``) in ``folder``, each written
    atomically; their paths join ``report.files``."""
    folder.mkdir(parents=True, exist_ok=True)
    report.files.update(json=str(folder / "results.json"), table=str(folder / "table.txt"))
    atomic_write(folder / "table.txt", lambda tmp: Path(tmp).write_text(table + "\n"))
    atomic_write(folder / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(report.to_dict(), indent=2)))


def first_writer(open_fresh: Callable[[], optuna.Study], name: str, value: Any) -> Any:
    """The study's user attribute ``name``: set to ``value`` unless another process set it
    first, and read back. Each writer records its claim under ``name#TOKEN`` with its time; the
    earliest claim is the value, so two processes measuring the same thing together (the
    architecture search's S0 and P0) agree on one of the two, the first stored."""
    study = open_fresh()
    known = study.user_attrs.get(name)
    if known is not None:
        return known
    study.set_user_attr(f"{name}#{process_token()}", {"at": time.time(), "value": value})
    claims = sorted((c["at"], k, c["value"]) for k, c in open_fresh().user_attrs.items() if k.startswith(f"{name}#"))
    chosen = claims[0][2]
    study.set_user_attr(name, chosen)  # every writer writes the same, the earliest claim
    return chosen


def prune_check(trial: optuna.Trial, epoch: int, value: float, attrs: dict[str, Any]) -> None:
    """Report ``value`` at ``epoch`` and stop the trial if the study's pruner says so."""
    import optuna

    trial.report(value, epoch)
    if trial.should_prune():
        e = optuna.TrialPruned(f"pruned after epoch {epoch} at {value:.2f}")
        e.attrs = attrs  # type: ignore[attr-defined]
        raise e
