"""Which worker runs a trial, and whether it is still alive.

A worker that dies (SIGKILL, a lost machine) leaves its trial RUNNING. Where a later worker
can see the recorded PID (same hostname, boot id and PID namespace: :func:`machine_id`) it sees
that the process is gone, or that the PID now belongs to a process started at another time,
and fails the trial at once; elsewhere (other machines, other containers) the heartbeat
(``RDBStorage(heartbeat_interval=...)``, recorded by :func:`heartbeat`) goes stale and
``optuna.storages.fail_stale_trials`` fails it after the grace period. Either way the candidate
has no live trial any more and goes back on the queue (:mod:`effnet.lab.queue`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: Trial user attributes naming the worker that runs a trial.
HOST, PID = "effnet.host", "effnet.pid"
#: Where the worker's PID means something (boot id and PID namespace: containers on one host
#: share a hostname and may reuse PIDs), when that process started (a reused PID has another
#: start time), and a random token of the worker process (unique even when all else collides).
MACHINE, STARTED, TOKEN = "effnet.machine", "effnet.proc_start", "effnet.token"

#: Seconds between heartbeats, and how long a silent trial lives on before other machines fail it.
HEARTBEAT_S = 20
GRACE_S = 120


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def claim(trial: optuna.Trial) -> None:
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
    with quiet():
        optuna.storages.fail_stale_trials(study)
    if failed:
        log.warning("trial(s) %s of study %r belonged to a worker that is gone: marked failed, their "
                    "candidates go back on the queue", failed, study.study_name)
    return failed



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

