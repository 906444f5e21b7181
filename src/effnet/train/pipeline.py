"""Training as a straight pipeline: each step is a module of ``effnet.train``, called once, in
this order, from :func:`execute` (what :func:`train`, the command line and ``run_trial`` call):

    1. config       effnet.train.config.resolve: one function makes every config (the caller
                    resolves a new run's; a resumed run's is its recorded one)
    2. run folder   effnet.train.rundir.open_run_dir: lock, config.yaml; checkpoints go there
    3. data         effnet.train.data: the splits, then the loader and the stage plan
                    (every progressive-learning rule: effnet.data.progressive.plan)
    4. model        effnet.train.model: the network, EMA, DDP, optimiser and schedule
    5. loop         effnet.train.loop.train_loop: per epoch, stage -> train -> evaluation
                    (effnet.train.score) -> checkpoint
    6. report       :func:`report`: the :class:`RunResult` (data only; the command line prints
                    it and draws ``curves.png``)

Around them, :func:`process` sets the process up for a run and puts it back afterwards:
torch's threads and determinism flag, the SIGINT/SIGTERM handlers, and under ``torchrun`` the
process group (effnet.train.distributed).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effnet.hostmem import reuse_freed_memory
from effnet.preprocessing import Normalize, Preprocessing, choose_normalisation
from effnet.profile.measure import count_params
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig, resolve
from effnet.train.data import make_data, read_splits
from effnet.train.loop import CheckpointReport, EpochReport, Run, train_loop
from effnet.train.model import autocast_dtype, build_model, make_optimizer, make_schedule, prepare_model
from effnet.train.rundir import (
    SPLIT_FILE,
    Position,
    forget_unstarted,
    open_run_dir,
    read_state,
    set_rng_state,
    write_split,
)
from effnet.train.score import default_device

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run left behind. ``final_*`` are the last epoch's validation metrics."""

    run_dir: Path | None  # None: a trial that kept no run folder
    epochs: int
    best_top1: float
    final_top1: float
    metrics: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    is_main: bool = True  # False on the ranks > 0 of a distributed job (they print nothing)
    final_top5: float = math.nan
    final_loss: float = math.nan
    seconds: float = 0.0  # wall time of the call: set-up, training, evaluation and checkpoints
    img_per_s: float = 0.0  # training throughput of the last epoch (all ranks together)
    params: int = 0


def train(cfg: TrainConfig, resume: str | Path | None = None, resume_changes: dict[str, Any] | None = None, *,
          on_checkpoint: CheckpointReport | None = None) -> RunResult:
    """Train (or fine-tune) as ``cfg`` says; ``resume`` continues a run folder where its last
    checkpoint left off (its saved config is used, with ``resume_changes``: a new ``lr_per_256``
    or ``epochs``). ``on_checkpoint(folder, rows)`` is called after each epoch's checkpoint by the
    process that writes the folder (the command line draws ``curves.png`` with it).

    Launched by ``torchrun``, every process calls this: they join one process group (NCCL on
    GPUs, Gloo on CPU), each trains on its share of every global batch of ``world x batch_size``
    images, and rank 0 alone logs and writes the run folder (see ``effnet.train.distributed``).

    Raises :class:`~effnet.train.distributed.Interrupted` (a ``KeyboardInterrupt``) after SIGINT
    or SIGTERM, once the position is saved; its ``exit_code`` is 130 or 143.
    """
    return execute(cfg, resume=resume, resume_changes=resume_changes, on_checkpoint=on_checkpoint)


def execute(cfg: TrainConfig, *, resume: str | Path | None = None, spec: ModelSpec | None = None,
            keep_files: bool = True, progress: bool = True, on_epoch: EpochReport | None = None,
            resume_changes: dict[str, Any] | None = None, on_checkpoint: CheckpointReport | None = None,
            ) -> RunResult:
    """Every step of a run, in order; what :func:`train` and ``run_trial`` share.

    ``resume``: a run folder to continue (its saved config replaces ``cfg``), with the few
    ``resume_changes`` that are safe mid-run (``config.RESUME_CHANGES``). ``spec``: train this
    architecture instead of ``cfg``'s model. ``keep_files=False``: no run folder at all (nothing
    saved, nothing to resume). ``progress``: the progress bar. ``on_epoch``: called after each
    epoch's checkpoint with its metrics row; raising from it ends the run there (e.g.
    ``optuna.TrialPruned``). ``on_checkpoint``: see :func:`train`.
    """
    started = time.time()
    saved = read_state(resume) if resume is not None else None  # a damaged state.pt says what is intact
    if saved is not None:  # 1. config: a resumed run's is the one it recorded
        cfg = resolve(resumed=saved, **(resume_changes or {})).cfg
    with process(cfg) as (d, stop):
        if saved is not None and saved.get("world_size", 1) != d.world:
            raise ValueError(f"{resume} was trained by {saved.get('world_size', 1)} process(es) and this job has "
                             f"{d.world}: resume with the same world size (torchrun --nnodes x --nproc_per_node), "
                             f"since the global batch, learning rate and data order depend on it")
        cfg, folder, lock = open_run_dir(cfg, d, resume, keep_files, spec)  # 2. run folder
        try:
            run = set_up(cfg, d, folder, saved, spec, stop)  # 3. data, 4. model
            train_loop(run, on_epoch, progress, on_checkpoint)  # 5. loop
            if d.enabled:
                # Drop DDP's reducer while the process group is alive, then let every rank's last
                # collectives finish. Freed later (when `run` goes out of scope, after
                # destroy_process_group) the reducer holds the group's last reference and its
                # destructor joins Gloo's worker thread while holding the GIL that thread needs to
                # release its last all-reduce's tensors: a deadlock at exit, seen under load.
                run.forward = run.model
                gc.collect()
                distributed.barrier(d)
        except BaseException:
            if resume is None and folder is not None and d.is_main:
                # Failed before its first checkpoint: leave no half-run that the next run is
                # told to --resume (there is no state to resume from).
                forget_unstarted(folder)
            raise
        finally:
            if lock is not None:
                lock.release()
    return report(run, started)  # 6. report


@contextlib.contextmanager
def process(cfg: TrainConfig) -> Iterator[tuple[distributed.Dist, distributed.StopSignals]]:
    """This process set up for a run: determinism, stop signals, the process group (under
    torchrun), one log (rank 0's); torch's threads, determinism flag, the log level and the
    signal handlers are put back afterwards. An exception propagates (the CLI exits non-zero,
    and torchrun then stops the other ranks)."""
    was_deterministic, threads_before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if cfg.deterministic:
        # Before anything touches CUDA: cuBLAS reads this when it creates its handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    effnet_log = logging.getLogger("effnet")
    log_level = effnet_log.level
    with distributed.StopSignals() as stop:
        d = distributed.start(cfg.device, cfg.dist_timeout_minutes)
        try:
            if not d.is_main:
                effnet_log.setLevel(logging.WARNING)  # one copy of the log: rank 0's (warnings still show)
            yield d, stop
        finally:
            effnet_log.setLevel(log_level)
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads_before)
            distributed.stop(d)


def auto_threads() -> int:
    """CPU threads for torch: the cores other processes leave idle (1-minute load average).

    On a shared machine, OpenMP threads that spin-wait for a pre-empted sibling make every small
    op wait a scheduler tick: on 2 busy cores, 2 threads measured 7 img/s where 1 gave 247.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def set_up(cfg: TrainConfig, d: distributed.Dist, folder: Path | None, saved: dict[str, Any] | None,
           spec: ModelSpec | None, stop: distributed.StopSignals) -> Run:
    """The data and model steps, in order, into one :class:`Run` (restored from ``saved``)."""
    threads = cfg.threads or max(1, auto_threads() // d.local_world)  # ranks sharing a machine share its cores
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = distributed.device_for(d, default_device(cfg.device))
    if cfg.reuse_host_memory and device.type == "cpu":
        reuse_freed_memory()
    # ===== 3. data: the splits (the loader and stage plan follow the network's sizes) =====
    splits = read_splits(cfg)
    if d.is_main and folder is not None and saved is None:
        write_split(folder / SPLIT_FILE, cfg, *splits)
    # ===== 4. model =====
    spec = ModelSpec.from_dict(saved["spec"]) if saved is not None else spec
    model = build_model(cfg, len(splits[0].class_names), spec).to(device)
    norm = saved["normalisation"] if saved is not None else choose_normalisation(
        cfg.mean, cfg.std, getattr(model, "preprocessing", None))
    if d.enabled:
        # Same initial weights everywhere (seeded above; DDP also broadcasts rank 0's), then each
        # rank its own augmentation and dropout draws, so the shards are not augmented alike.
        torch.manual_seed(cfg.seed + d.rank)
    data = make_data(cfg, d, device, splits, model.spec, norm)
    model, ema, forward = prepare_model(cfg, d, device, model)
    normalize = Normalize(Preprocessing(mean=norm["mean"], std=norm["std"], scale=norm["scale"])).to(device)
    schedule = make_schedule(cfg, d, data.batches_per_epoch)
    optimizer = make_optimizer(cfg, model, schedule.peak_lr)
    amp_dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    run = Run(cfg, d, folder, device, amp_dtype, data, model, ema, forward, normalize, optimizer, scaler, schedule,
              stop)
    if saved is not None:
        restore(run, saved)
    sizes = sorted({s.image_size for s in data.stages})
    log.info("run folder %s: %s (%d params) at %s px on %s, %d train / %d val images, %d classes, %d epochs, "
             "batch %d x %d, peak lr %.4g, %d CPU thread(s)", folder or "none (nothing is saved)", model.spec.name,
             count_params(model, trainable_only=False), "-".join(map(str, sizes)) if len(sizes) < 3
             else f"{sizes[0]}-{sizes[-1]}", device, len(splits[0]), len(splits[1]),
             len(data.class_names), cfg.epochs, cfg.batch_size, cfg.accum_steps, schedule.peak_lr, threads)
    if d.enabled:
        log.info("distributed: %d processes (%s); global batch %d = %d per process x %d processes x %d "
                 "accumulation step(s); peak lr %.4g = %.4g per 256 images x %d / 256; SyncBatchNorm %s",
                 d.world, torch.distributed.get_backend(), schedule.global_batch, cfg.batch_size, d.world,
                 cfg.accum_steps, schedule.peak_lr, cfg.lr_per_256, schedule.global_batch,
                 "on" if cfg.sync_bn else "off")
    return run


def restore(run: Run, saved: dict[str, Any]) -> None:
    """Continue where ``saved`` (a ``state.pt``) left off."""
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler.load_state_dict(saved["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(saved["ema"])
    run.pos = Position.from_state(saved)
    set_rng_state(saved["rng_ranks"][run.d.rank] if run.d.enabled else saved["rng"])
    log.info("resuming %s at epoch %d, batch %d (step %d)", run.run_dir, run.pos.epoch + 1, run.pos.batch_in_epoch,
             run.pos.step)


def report(run: Run, started: float) -> RunResult:
    """The last step: what the run left behind, as data (the caller prints and plots it)."""
    run.skips.report()
    rows = run.pos.rows
    last = rows[-1] if rows else {}
    result = RunResult(run.run_dir, len(rows), run.pos.best_top1, last.get("val_top1", math.nan), rows,
                       sorted(run.skips.skipped), run.d.is_main, final_top5=last.get("val_top5", math.nan),
                       final_loss=last.get("val_loss", math.nan), seconds=time.time() - started,
                       img_per_s=last.get("img_per_s", 0.0), params=count_params(run.model, trainable_only=False))
    log.info("done: %d epochs, final top-1 %.2f%%, best %.2f%%; run folder %s", result.epochs, result.final_top1,
             result.best_top1, run.run_dir or "none")
    return result
