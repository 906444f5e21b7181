"""Optuna studies as the one record of a lab's trials, shared by every worker on every machine.

The scaling search and the architecture search train candidates: grid points, strategies at
matched FLOPs, or samples of a search space. The study owns all state (which candidates are
queued, running, finished, and with what result), so re-running the same command resumes and
several workers (processes, or machines pointed at one PostgreSQL/MySQL URL) share one study.
This module opens a study (refusing one made with other settings) and reads it back; the queue
the workers take candidates from is :mod:`effnet.lab.queue`, and how a dead worker is told
from a live one is :mod:`effnet.lab.liveness`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from effnet.files import atomic_write
from effnet.lab.liveness import GRACE_S, HEARTBEAT_S, process_token, quiet

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Trial user attributes the lab writes (the worker's identity: :mod:`effnet.lab.liveness`).
KEY = "effnet.candidate"
DUPLICATE_OF = "effnet.duplicate_of"
ERROR = "effnet.error"
#: Sampled searches: the failed trial a re-queued one trains again; a trial given up because
#: the study already had its number of trials.
RETRY_OF, SURPLUS = "effnet.retry_of", "effnet.surplus"
#: The error a trial stopped by Ctrl-C/SIGTERM records (trained again by the next run).
STOPPED = "stopped by a signal"
#: Study user attribute: the settings a study was created with (a resumed run must match).
SETTINGS = "effnet.settings"


class StudyError(ValueError):
    """A study cannot be opened or resumed as asked (bad URL, other settings)."""


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
                with quiet():
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


def check_storage(url: str) -> None:
    """Open ``url`` once (creating an SQLite file and its tables) and refuse it with
    :class:`StudyError` if it cannot be: called before a grid or a study is measured, so a bad
    URL is reported at once, not after a minute of counting FLOPs."""
    storage = _storage(url, HEARTBEAT_S)
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


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
    ``sampler`` proposes the trials of a sampled search (:func:`effnet.lab.queue.work_sampled`; default
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


def live_keys(study: optuna.Study) -> set[str]:
    """The keys of the candidates that have a finished, waiting or running trial."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    return {t.user_attrs[KEY] for t in study.get_trials(deepcopy=False, states=live) if KEY in t.user_attrs}


@contextlib.contextmanager
def pop_lock(study: optuna.Study) -> Iterator[None]:
    """Hold this while ``study.ask()`` moves a WAITING trial to RUNNING. On SQLite, Optuna reads
    the trial's state before it opens the write transaction, so two processes asking at once
    can both read WAITING and both move the same trial to RUNNING: both would train it. An
    exclusive lock on a file next to the database (``study.db.lock``) makes the read and the
    write of one process's ask happen before the other's. Server databases need none (Optuna
    reads the row with ``SELECT ... FOR UPDATE``), nor an in-memory SQLite (one process)."""
    path = _sqlite_file(study)
    if path is None:
        yield
        return
    # filelock (a dependency: run folders and the download cache use it too) locks on every OS.
    with FileLock(f"{path}.lock"):
        yield


def _sqlite_file(study: optuna.Study) -> str | None:
    """The database file of a study stored in SQLite, else ``None``."""
    from sqlalchemy.engine import make_url  # optuna's RDB storage is built on SQLAlchemy

    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    url = getattr(storage, "url", None)
    if not isinstance(url, str) or not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return database if database and database != ":memory:" and not database.startswith("file:") else None


def retrying(fn: Callable[[], Any], what: str) -> Any:
    """SQLite answers a write that collides with another process's with "database is
    locked" even after its timeout; retry a few times before giving up."""
    for attempt in range(10):
        try:
            with quiet():
                return fn()
        except Exception as e:  # sqlalchemy.exc.OperationalError, without importing sqlalchemy
            if "locked" not in str(e) or attempt == 9:
                raise
            log.debug("%s: storage busy, retrying", what)
            time.sleep(0.2 * (attempt + 1))
    return None


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE and PRUNED trials, in trial order."""
    from optuna.trial import TrialState

    return list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


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

