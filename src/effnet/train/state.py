"""A run's resume state: its position in the schedule, and the ``state.pt`` file that holds it
with the weights, optimiser, loss scaler, EMA and random state.

Every write goes through :func:`write_state`: the new file is written atomically, and the one
it replaces is kept as ``state.prev.pt`` (a hard link, so no copy of a large file). A
``state.pt`` damaged after the fact (a full disk, a bad copy, a faulty drive) then costs one
checkpoint interval instead of the run, and :func:`read_state` says so in its error: which file
is damaged, which weight files are intact, and how to resume from ``state.prev.pt``. The older
state is not used automatically: a resume that silently goes back an epoch would redo work and
rewrite metrics the user may already have read; the message gives the one command that does it.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effnet.files import atomic_write
from effnet.weights import read_weights

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
PREV_STATE_FILE = "state.prev.pt"
#: Keys every resume state has; a file that unpickles without them is as damaged as one that does not.
REQUIRED_KEYS = ("config", "model", "optimizer", "scaler", "ema", "epoch", "step", "batch_in_epoch", "metrics",
                 "best_top1", "partial", "rng", "class_names", "spec", "normalisation")


@dataclass
class Position:
    """Where a run stands in its schedule: what a resume restores besides the tensors."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    batch_in_epoch: int = 0  # micro-batches of the current epoch already trained
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics of the completed epochs
    best_top1: float = -1.0
    # Global sums (all ranks) over the current epoch so far: training loss x images, images,
    # seconds spent training (a resumed epoch adds to what the interrupted one measured).
    loss_sum: float = 0.0
    seen: int = 0
    seconds: float = 0.0

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.loss_sum, self.seen, self.seconds = 0.0, 0, 0.0

    def to_state(self) -> dict[str, Any]:
        """The position's keys of ``state.pt`` (the names older run folders were written with)."""
        return {"epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
                "metrics": self.rows, "best_top1": self.best_top1,
                "partial": {"loss_sum": self.loss_sum, "seen": self.seen, "seconds": self.seconds}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        p = state["partial"]
        return cls(state["epoch"], state["step"], state["batch_in_epoch"], list(state["metrics"]),
                   state["best_top1"], p["loss_sum"], int(p["seen"]), p["seconds"])


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """``state.pt`` written atomically, the state it replaces kept as ``state.prev.pt``."""
    path, prev = run_dir / STATE_FILE, run_dir / PREV_STATE_FILE
    if path.is_file():
        link = run_dir / f".{PREV_STATE_FILE}.link"
        try:
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, prev)  # atomic: state.prev.pt is always one whole state
        except OSError:
            # No hard links on this file system: move it. A kill before the new state.pt lands
            # leaves only state.prev.pt, which read_state() then points to.
            os.replace(path, prev)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def drop_state_at(run_dir: Path, step: int) -> str | None:
    """Withdraw ``state.pt`` if it was written at optimiser step ``step`` (whose weights turned
    out to diverge: finite, but giving NaN): ``state.prev.pt`` takes its place, or, without one,
    it is removed. Returns what is kept now (a position), or ``None`` when no state is left."""
    path, prev = run_dir / STATE_FILE, run_dir / PREV_STATE_FILE
    try:
        if not path.is_file() or _load(path)["step"] != step:
            return describe_position(_load(path)) if path.is_file() else None
    except _DAMAGE:
        return None
    if prev.is_file():
        os.replace(prev, path)
        log.warning("the state saved at step %d holds the diverged weights: %s is back to the one before it",
                    step, path)
        try:
            return describe_position(_load(path))
        except _DAMAGE:
            return None
    path.unlink()
    log.warning("the state saved at step %d holds the diverged weights: removed %s", step, path)
    return None


def _load(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"expected a dict, got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return state


# What torch.load raises on a truncated or corrupted file: the zip reader's RuntimeError
# ("PytorchStreamReader failed ...", "internal miniz error"), unpickling errors, short reads.
_DAMAGE = (RuntimeError, ValueError, EOFError, OSError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


def read_state(run_dir: str | Path) -> dict[str, Any]:
    """The resume state of ``run_dir``; a missing or damaged ``state.pt`` raises with what is
    still intact and how to resume from ``state.prev.pt``."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"cannot resume: run folder {run_dir} not found")
    if not path.is_file():
        if (run_dir / PREV_STATE_FILE).is_file():
            raise FileNotFoundError(f"cannot resume: no {STATE_FILE} in {run_dir}. {_what_is_intact(run_dir)}")
        if (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.csv").is_file():
            raise FileNotFoundError(f"cannot resume: the run in {run_dir} stopped before its first checkpoint (it has "
                                    f"config.yaml but no {STATE_FILE}); start it again with --out "
                                    f"{shlex.quote(str(run_dir))} --overwrite")
        raise FileNotFoundError(f"cannot resume: no {STATE_FILE} in {run_dir} (is it a run folder?)")
    try:
        return _load(path)
    except _DAMAGE as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"cannot resume: {path} is damaged ({reason}). {_what_is_intact(run_dir)}") from e


def describe_position(state: dict[str, Any]) -> str:
    epoch, batch = state["epoch"], state["batch_in_epoch"]
    where = f"after epoch {epoch}" if batch == 0 else f"epoch {epoch + 1}, batch {batch}"
    return f"{where}, step {state['step']}"


def _what_is_intact(run_dir: Path) -> str:
    """What a damaged run folder still holds, and the commands that use it."""
    parts = []
    for name in ("last.safetensors", "best.safetensors"):
        if not (run_dir / name).is_file():
            continue
        try:
            extra = read_weights(run_dir / name).extra
        except ValueError as e:
            parts.append(f"{name} is damaged too ({e})")
            continue
        top1 = f", val top-1 {extra['val_top1']:.2f}%" if "val_top1" in extra else ""
        parts.append(f"{name} is intact (weights after epoch {extra.get('epoch', '?')}{top1})")
    intact = ("; ".join(parts) + ".") if parts else "No weight file (last/best.safetensors) is left."
    prev, q = run_dir / PREV_STATE_FILE, shlex.quote(str(run_dir))
    if prev.is_file():
        try:
            earlier = _load(prev)
        except _DAMAGE as e:
            return f"{intact} {prev} is damaged as well ({e}), so no resume state is left."
        return (f"{intact} {PREV_STATE_FILE} holds the checkpoint before it ({describe_position(earlier)}); "
                f"to resume from there: cp {shlex.quote(str(prev))} {shlex.quote(str(run_dir / STATE_FILE))} "
                f"&& effnet train --resume {q}")
    hint = ""
    if any(p.startswith("last.safetensors is intact") for p in parts):
        hint = (f"; a new run can start from the intact weights: effnet train --weights "
                f"{shlex.quote(str(run_dir / 'last.safetensors'))} --out NEW_DIR")
    return f"{intact} There is no earlier resume state ({PREV_STATE_FILE}) to go back to{hint}."
