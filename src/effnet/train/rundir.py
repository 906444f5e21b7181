"""The run folder: its name, its lock, and the files a run writes into it.

A folder belongs to one run at a time. The run holds an exclusive ``run.lock`` (``filelock``:
an OS lock the kernel drops when the process dies, so a killed run never leaves a stale lock)
for as long as it trains, and a second run pointed at the folder stops at once with a message
instead of writing its checkpoints and metrics over the first's. A folder that already holds a
run is trained into only to continue it (``--resume``) or after clearing it (``overwrite``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from filelock import FileLock, Timeout

from effnet.files import atomic_write
from effnet.train.state import PREV_STATE_FILE, STATE_FILE

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
METRIC_FIELDS = ("epoch", "stage", "image_size", "dropout", "randaugment", "mixup", "lr", "train_loss",
                 "val_loss", "val_top1", "val_top5", "img_per_s", "seconds")
#: Any of these marks a folder as holding a run.
RUN_MARKERS = (STATE_FILE, METRICS_FILE, CONFIG_FILE)
#: Everything a run writes; ``overwrite`` removes these and nothing else (a user's own files
#: in the folder stay).
RUN_FILES = (*RUN_MARKERS, PREV_STATE_FILE, "steps.csv", "curves.png", "last.safetensors", "best.safetensors",
             "spec.yaml", "split.json")


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
