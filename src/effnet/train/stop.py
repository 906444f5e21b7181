"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM at a safe point.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens to
be. Inside a training step that can be a weakref callback or a ``__del__``, where the exception
is printed as "Exception ignored in ..." and swallowed, so the run went on to the end; elsewhere
it tears through the loop with a traceback. Here the handler only records the signal; the loop
looks at the record after each optimiser step (and after each epoch), writes its position to
``state.pt`` and raises :class:`Interrupted`, which the CLI turns into the resume command and
the conventional exit status ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

A second SIGINT while the first is being honoured raises ``KeyboardInterrupt`` at once, for a
user who will not wait for the safe point (checkpoints are written atomically, so the files
already on disk stay whole).

DataLoader workers forked while the handler is installed inherit it and ignore both signals, so
a terminal's Ctrl-C (sent to the whole process group) leaves them serving batches until the main
process stops. SIGTERM is different: PyTorch installs its own SIGTERM handler in each worker,
which makes the worker die of it, so a SIGTERM sent to the whole group while loader workers run
(``workers > 0``) ends the run with PyTorch's "DataLoader worker ... is killed by signal" error
and only the last checkpoint. Send SIGTERM to the main process alone (``kill PID``; systemd
``KillMode=mixed``; Slurm ``--signal``) to stop at the next step with the position saved.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

#: The signals that stop a run at its next safe point.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal at a safe point, its position saved in ``run_dir`` (``None``
    for a trial that keeps no folder).

    A ``KeyboardInterrupt`` (not an ``Exception``), so that code which records a failed trial
    with ``except Exception`` and moves on (a search) stops as the user asked instead.
    """

    def __init__(self, message: str, signum: int, run_dir: Path | None, is_main: bool = True) -> None:
        super().__init__(message)
        # is_main: False on the ranks > 0 of a torchrun job, which should not repeat the message.
        self.signum, self.run_dir, self.is_main = signum, run_dir, is_main

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (e.g. across processes) with its fields
        return type(self), (self.args[0], self.signum, self.run_dir, self.is_main)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum


class StopSignals:
    """Context manager: while inside it, SIGINT and SIGTERM set :attr:`signum` instead of
    interrupting; the previous handlers are put back on exit.

    Handlers can only be installed from the main thread (``signal.signal`` raises elsewhere);
    in another thread (e.g. an Optuna study running trials in threads) nothing is installed and
    the process keeps its own handling.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker) inherits this handler. A terminal's Ctrl-C
            # reaches the whole process group; the worker ignores it and keeps serving batches
            # until the main process stops at its safe point and shuts the loader down (had
            # it died of the signal, the main process would fail on its next batch instead).
            return
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.signum is None:
            self.signum = signum
        # os.write, not logging: a handler runs between two bytecodes of the main thread, which
        # may be inside a logging call already.
        name = signal.Signals(signum).name
        os.write(2, f"\neffnet: {name} received: stopping at the next safe point and saving the position "
                    f"(Ctrl-C again stops at once)\n".encode())

    def __enter__(self) -> StopSignals:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, previous in self._previous.items():
            # None: a handler not installed from Python; the default action is the closest.
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
