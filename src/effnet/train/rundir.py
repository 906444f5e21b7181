"""The pipeline's second step, the run folder: its name, its lock, and every file a run writes
into it (``config.yaml``, ``split.json``, ``metrics.csv``, ``steps.csv`` and the resume state
``state.pt``; the weight files are written by the loop's checkpoint through effnet.weights).

A folder belongs to one run at a time. The run holds an exclusive ``run.lock`` (``filelock``:
an OS lock the kernel drops when the process dies, so a killed run never leaves a stale lock)
for as long as it trains, and a second run pointed at the folder stops at once with a message
instead of writing its checkpoints and metrics over the first's. A folder that already holds a
run is trained into only to continue it (``--resume``) or after clearing it (``overwrite``).

Every state write goes through :func:`write_state`: the new file is written atomically, and the
one it replaces is kept as ``state.prev.pt`` (a hard link, so no copy of a large file). A
``state.pt`` damaged after the fact (a full disk, a bad copy, a faulty drive) then costs one
checkpoint interval instead of the run, and :func:`read_state` says so in its error: which file
is damaged, which weight files are intact, and how to resume from ``state.prev.pt``. The older
state is not used automatically: a resume that silently goes back an epoch would redo work and
rewrite metrics the user may already have read; the message gives the one command that does it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pickle
import shlex
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import torch
from filelock import FileLock, Timeout

from effnet.data import DIGITS, Split
from effnet.files import atomic_write
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig
from effnet.weights import read_weights
from effnet.weights.format import BEST_WEIGHTS, CONFIG_FILE, LAST_WEIGHTS, SPLIT_FILE

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
        if (run_dir / CONFIG_FILE).is_file() and not (run_dir / METRICS_FILE).is_file():
            raise FileNotFoundError(f"cannot resume: the run in {run_dir} stopped before its first checkpoint (it has "
                                    f"{CONFIG_FILE} but no {STATE_FILE}); start it again with --out "
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
    for name in (LAST_WEIGHTS, BEST_WEIGHTS):
        if not (run_dir / name).is_file():
            continue
        try:
            extra = read_weights(run_dir / name).extra
        except ValueError as e:
            parts.append(f"{name} is damaged too ({e})")
            continue
        top1 = f", val top-1 {extra['val_top1']:.2f}%" if "val_top1" in extra else ""
        parts.append(f"{name} is intact (weights after epoch {extra.get('epoch', '?')}{top1})")
    intact = ("; ".join(parts) + ".") if parts else f"No weight file ({LAST_WEIGHTS}, {BEST_WEIGHTS}) is left."
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
    if any(p.startswith(f"{LAST_WEIGHTS} is intact") for p in parts):
        hint = (f"; a new run can start from the intact weights: effnet train --weights "
                f"{shlex.quote(str(run_dir / LAST_WEIGHTS))} --out NEW_DIR")
    return f"{intact} There is no earlier resume state ({PREV_STATE_FILE}) to go back to{hint}."


LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.csv"
#: The loss and accuracy curves, drawn by the command line from the metrics (effnet.commands.train).
CURVES_FILE = "curves.png"
#: The step-level log (``--log-steps``) and the trained spec of a run given one (``effnet scale``).
STEPS_FILE = "steps.csv"
SPEC_FILE = "spec.yaml"
METRIC_FIELDS = ("epoch", "stage", "image_size", "dropout", "randaugment", "mixup", "lr", "train_loss",
                 "val_loss", "val_top1", "val_top5", "img_per_s", "seconds")
#: Any of these marks a folder as holding a run.
RUN_MARKERS = (STATE_FILE, METRICS_FILE, CONFIG_FILE)
#: Everything a run writes; ``overwrite`` removes these and nothing else (a user's own files
#: in the folder stay).
RUN_FILES = (*RUN_MARKERS, PREV_STATE_FILE, STEPS_FILE, CURVES_FILE, LAST_WEIGHTS, BEST_WEIGHTS, SPEC_FILE,
             SPLIT_FILE)


def new_run_dir(root: str | Path = "runs") -> Path:
    """A new, empty ``root/<timestamp>`` folder; created here (``mkdir`` fails on an existing
    folder), so two runs started in the same second get two folders, not one."""
    base = Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, n = base.with_name(f"{base.name}-{n}"), n + 1


def claim(run_dir: Path, *, resume: bool, overwrite: bool) -> FileLock:
    """Lock ``run_dir`` for this run (creating it); refuse a folder another run holds, and a
    folder with an earlier run unless resuming it or ``overwrite`` (which clears it first).
    The caller releases the returned lock when the run ends."""
    lock = FileLock(run_dir / LOCK_FILE)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(blocking=False)
    except Timeout:
        raise RuntimeError(
            f"run folder {run_dir} is in use: another run holds its lock ({run_dir / LOCK_FILE}); wait for it "
            f"to finish or choose another --out"
        ) from None
    except OSError as e:  # not writable, not a folder, ...
        raise ValueError(f"cannot use {run_dir} as a run folder: {e}") from e
    try:
        removed_tmp = clear_temporaries(run_dir)  # the lock is ours: no live run is writing them
        if removed_tmp:
            log.info("removed %d temporary file(s) a killed run left in %s: %s", len(removed_tmp), run_dir,
                     ", ".join(removed_tmp))
        earlier = [name for name in RUN_MARKERS if (run_dir / name).exists()]
        if earlier == [CONFIG_FILE] and not resume and not overwrite:
            raise ValueError(
                f"run folder {run_dir} already holds a run that stopped before its first checkpoint (only "
                f"{CONFIG_FILE}; there is nothing to resume): start it again with --overwrite, or choose another --out"
            )
        if earlier and not resume:
            if not overwrite:
                raise ValueError(
                    f"run folder {run_dir} already holds a run ({', '.join(earlier)}): continue it with "
                    f"--resume {run_dir}, replace it with --overwrite, or choose another --out"
                )
            removed = clear(run_dir)
            log.warning("overwrite: removed the earlier run's files from %s (%s)", run_dir, ", ".join(removed))
    except BaseException:
        lock.release()
        raise
    return lock


def clear(run_dir: Path) -> list[str]:
    """Remove an earlier run's files (and its leftover temporary files) from ``run_dir``."""
    removed = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    clear_temporaries(run_dir)
    return removed


def clear_temporaries(run_dir: Path) -> list[str]:
    """Remove what a run killed while writing leaves: atomic_write's ``.NAME.*.tmp`` files and
    write_state's hard link; only called with the folder's lock held."""
    removed = []
    for name in RUN_FILES:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
    link = run_dir / f".{PREV_STATE_FILE}.link"
    if link.is_file():
        link.unlink(missing_ok=True)
        removed.append(link.name)
    return removed


def forget_unstarted(run_dir: Path) -> None:
    """After a new run failed before its first checkpoint (no state, no metrics): remove the
    files it wrote, so the folder does not look like a run to resume."""
    if any((run_dir / name).exists() for name in (STATE_FILE, METRICS_FILE)):
        return
    removed = clear(run_dir)
    if removed:
        log.info("the run stopped before its first checkpoint: removed %s from %s (nothing to resume)",
                 ", ".join(removed), run_dir)


def write_metrics(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def open_step_log(path: Path, keep_steps: int) -> TextIO:
    """``steps.csv`` for appending, holding rows up to optimiser step ``keep_steps`` (a resumed
    run drops the rows written after its checkpoint, which it is about to redo)."""
    kept = ["epoch,step,lr,loss,images\n"]
    if keep_steps and path.is_file():
        for line in path.read_text().splitlines(keepends=True)[1:]:
            fields = line.rstrip("\n").split(",")
            # A kill can tear the last appended line: keep only complete rows.
            if line.endswith("\n") and len(fields) == 5 and fields[1].isdigit() and int(fields[1]) <= keep_steps:
                kept.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))
    return open(path, "a")


def open_run_dir(cfg: TrainConfig, d: distributed.Dist, resume: str | Path | None, keep_files: bool,
                 spec: ModelSpec | None = None) -> tuple[TrainConfig, Path | None, FileLock | None]:
    """The run folder, locked by rank 0 for the whole run (:func:`claim`: a folder in use or
    holding an earlier run is refused unless resumed or ``overwrite``), with the run's
    ``config.yaml`` written into it. Every rank learns the folder, or rank 0's reason to refuse
    it: otherwise the others would wait for rank 0 in their first collective until the timeout.

    A new run of a ``spec`` given as an object saves it as ``spec.yaml`` and returns the config
    pointing to that file, so that ``config.yaml`` is a complete recipe. ``keep_files=False``: no
    folder (``None``)."""
    folder, lock = _claim_everywhere(cfg, d, resume) if keep_files else (None, None)
    if spec is not None and resume is None and folder is not None:
        cfg = dataclasses.replace(cfg, spec=str(folder / SPEC_FILE), model=spec.name)
        if d.is_main:
            spec.save(folder / SPEC_FILE)
    if d.is_main and folder is not None:
        atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
    return cfg, folder, lock


def _claim_everywhere(cfg: TrainConfig, d: distributed.Dist, resume: str | Path | None) -> tuple[Path, FileLock | None]:
    """Rank 0 claims the folder; every rank gets its name, or rank 0's refusal."""
    path: Path | None = None
    lock: FileLock | None = None
    failure: Exception | None = None
    if d.is_main:
        try:
            # Rank 0 names a new folder: the others' clocks may sit in another second.
            path = Path(resume) if resume is not None else Path(cfg.out) if cfg.out else new_run_dir()
            lock = claim(path, resume=resume is not None, overwrite=cfg.overwrite)
        except (RuntimeError, ValueError, OSError) as e:
            failure = e
    name, refusal = distributed.broadcast_object(d, (str(path), None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if refusal is not None:
        raise RuntimeError(refusal)
    return Path(name), lock


def write_split(path: Path, cfg: TrainConfig, train_split: Split, val_split: Split) -> None:
    """Record which images the run trains and validates on: the file lists relative to the data
    folder (an in-memory set such as digits: the seed and fraction that re-create the split)."""
    record: dict[str, Any] = {"data": cfg.data if cfg.data == DIGITS else str(Path(cfg.data).resolve()),
                              "val_fraction": cfg.val_fraction, "seed": cfg.seed, "train_subset": cfg.train_subset,
                              "class_names": train_split.class_names}
    if cfg.data != DIGITS:
        root = Path(cfg.data).resolve()
        for key, split in (("train", train_split), ("val", val_split)):
            record[key] = [[str(Path(item).resolve().relative_to(root)), label]
                           for item, label in zip(split.items, split.labels)]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
