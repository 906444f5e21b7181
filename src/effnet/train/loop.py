"""The pipeline's fifth step, the loop: a :class:`Run` (what the steps before it built) trained
epoch by epoch in four marked sections: stage, train one epoch, evaluation, checkpoint.

    train_loop          per epoch:
      enter_stage         progressive learning: dropout, augmentation, evaluation view and loader
      train_epoch         forward_backward per micro-batch, optimizer_step per step
      evaluate_epoch      the EMA (or raw) weights on the validation split (effnet.train.score)
      checkpoint          weights, resume state, metrics (effnet.train.rundir)

Every step is a plain function of the run; nothing is registered or called back, except the
optional ``on_epoch`` report (a search prunes with it; the command line draws the curves).

DistributedDataParallel is written into it: the sampler is seeded by epoch and sharded by rank,
every metric is a plain sum all-reduced over the ranks before it is divided, and rank 0 alone
writes files (see ``effnet.train.distributed`` for the process group and ``torchrun``).

SIGINT/SIGTERM stop a run at the next optimiser step (see ``effnet.train.distributed``): its
position is saved as a mid-epoch checkpoint and :class:`~effnet.train.distributed.Interrupted` is
raised.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from effnet.data import UNREADABLE, AugmentSettings, SkipLog, Stage, TrainAugment, stage_at
from effnet.model import ConvNet
from effnet.preprocessing import Normalize, Preprocessing
from effnet.train import distributed
from effnet.train.config import TrainConfig
from effnet.train.data import Data, eval_view, val_loader
from effnet.train.model import ModelEMA, Schedule
from effnet.train.rundir import (
    METRICS_FILE,
    STATE_FILE,
    STEPS_FILE,
    Position,
    drop_state_at,
    open_step_log,
    rng_state,
    write_metrics,
    write_state,
)
from effnet.train.score import score
from effnet.weights.format import BEST_WEIGHTS, LAST_WEIGHTS, save_weights

log = logging.getLogger(__name__)

#: Called after each epoch's checkpoint with its metrics row; raising stops the run there.
EpochReport = Callable[[dict[str, Any]], None]
#: Called by the process that writes the run folder, after each epoch's checkpoint, with the
#: folder and every metrics row so far (the command line draws the curves from them).
CheckpointReport = Callable[[Path, list[dict[str, Any]]], None]


@dataclass
class Run:
    """One run: built by the pipeline's steps before the loop (effnet.train.pipeline), advanced by it."""

    cfg: TrainConfig
    d: distributed.Dist
    run_dir: Path | None  # None: nothing is written (a trial without a folder)
    device: torch.device
    amp_dtype: torch.dtype | None
    data: Data
    model: ConvNet  # the plain network: its state_dict is what checkpoints hold
    ema: ModelEMA | None
    forward: nn.Module  # what a step calls: the model, wrapped by DDP and/or torch.compile
    normalize: Normalize
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    stop: distributed.StopSignals
    pos: Position = field(default_factory=Position)
    skips: SkipLog = field(default_factory=SkipLog)
    step_log: TextIO | None = None

    @property
    def writes(self) -> bool:
        """This process writes the run folder: rank 0, when there is a folder."""
        return self.d.is_main and self.run_dir is not None

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model


# --- the loop's steps ---------------------------------------------------------------------------
def stage_title(stage: Stage, stages: int, epoch: int) -> str:
    """How the log names where training starts: the stage (with progressive learning) and, after
    a resume, the epoch it continues at (``epoch`` is 0-based)."""
    title = f"stage {stage.index + 1}/{stages} from epoch {stage.first_epoch + 1}" if stages > 1 else "training"
    return title + (f", resumed at epoch {epoch + 1}" if epoch > stage.first_epoch else "")


def plateaued(rows: list[dict[str, Any]], patience: int) -> bool:
    """Early stopping: the last ``patience`` epochs' validation top-1 all stayed at or below the
    best before them."""
    if patience < 1 or len(rows) <= patience:
        return False
    best_before = max(r["val_top1"] for r in rows[:-patience])
    return all(r["val_top1"] <= best_before for r in rows[-patience:])


def enter_stage(run: Run, stage: Stage) -> tuple[TrainAugment, Preprocessing, torch.utils.data.DataLoader]:
    """Put a stage of the plan (effnet.data.progressive.plan) in force: its dropout, its
    augmentation, and its evaluation view and loader."""
    cfg = run.cfg
    if stage.dropout is not None:
        run.model.set_dropout(stage.dropout)
    augment = TrainAugment(AugmentSettings(
        image_size=stage.image_size, crop_scale=cfg.crop_scale, hflip=cfg.hflip, autoaugment=cfg.autoaugment,
        randaugment_magnitude=stage.randaugment, mixup_alpha=stage.mixup, cutmix_alpha=cfg.cutmix_alpha,
    )).to(run.device)
    preprocessing = eval_view(cfg, run.data, stage)
    log.info("%s: image size %d (evaluated at %d), dropout %.3f, RandAugment %.1f, mixup %.2f",
             stage_title(stage, len(run.data.stages), run.pos.epoch), stage.image_size, stage.eval_size,
             run.model.dropout.p, stage.randaugment, stage.mixup)
    return augment, preprocessing, val_loader(cfg, run.d, run.data, preprocessing)


def forward_backward(run: Run, augment: TrainAugment, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Augment one micro-batch on the device, forward, backward; its mean loss. The loss is
    divided by the accumulation steps (the step sees the mean over its micro-batches); DDP
    averages the gradients over the ranks, so the step sees the global batch's mean."""
    cfg, device = run.cfg, run.device
    x, targets = augment(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
    x = run.normalize.from_unit(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        logits = run.forward(x)
    loss = targets.loss(logits.float(), cfg.label_smoothing)
    loss_value = loss.item()  # one host read per micro-batch, for the guard and the log
    if not math.isfinite(loss_value):
        raise diverged(run, f"loss is {loss_value} at epoch {run.pos.epoch + 1}, step {run.pos.step}")
    run.scaler.scale(loss / cfg.accum_steps).backward()
    return loss_value


def diverged(run: Run, what: str) -> RuntimeError:
    """The error that ends a diverged run: what went non-finite, what is kept (a state is only
    written when finite, so a state.pt there is good) and the command that goes on from it."""
    lower = f"{run.cfg.lr_per_256 / 10:.3g}"
    amp = " or --amp off" if run.amp_dtype == torch.float16 else ""
    folder = run.run_dir if run.writes else None
    if folder is None:
        kept = f"lower the learning rate (--lr {lower}){amp}"
    elif (folder / STATE_FILE).is_file():
        kept = (f"the last good checkpoint is kept in {folder}; go on from it with a lower learning rate: "
                f"effnet train --resume {shlex.quote(str(folder))} --lr {lower}{amp}")
    else:
        kept = (f"it diverged before its first checkpoint, so there is nothing to resume; start again with a lower "
                f"learning rate (--lr {lower}){amp}")
    return RuntimeError(f"{what}: training diverged; {kept}")


def nonfinite_state(run: Run) -> list[str]:
    """Names of the model's (and the evaluated EMA copy's) tensors holding NaN or inf."""
    named = [("", run.model.state_dict())]
    if run.eval_model is not run.model:
        named.append(("ema ", run.eval_model.state_dict()))
    return [prefix + k for prefix, state in named for k, v in state.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def optimizer_step(run: Run) -> float:
    """One optimiser step at the scheduled learning rate, then the EMA; returns the lr. A step
    whose micro-batches were all skipped (too few readable images) has no gradients: the
    optimiser and the loss scaler are left alone (GradScaler.step asserts without a scaled
    backward), the schedule still advances."""
    cfg, optimizer = run.cfg, run.optimizer
    lr = run.schedule.lr(cfg, run.pos.step)
    for g in optimizer.param_groups:
        g["lr"] = lr
    if not any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
        run.pos.step += 1
        return lr
    if cfg.grad_clip:
        run.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(optimizer)
    run.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.model)  # on every rank: the weights are identical after each step
    run.pos.step += 1
    return lr


def add_step_loss(run: Run, sums: list[float]) -> tuple[float, bool]:
    """Add one step's (loss sum, images) of every rank to the epoch's totals. Returns the step's
    mean loss, and whether some rank was asked to stop: the stop request rides on this sum, the
    collective every step makes anyway, so all ranks stop after the same step."""
    loss_sum, seen, stops = distributed.sum_floats(run.d, [*sums, float(run.stop.requested)], run.device)
    run.pos.loss_sum += loss_sum
    run.pos.seen += int(seen)
    return loss_sum / max(seen, 1), stops > 0


def train_epoch(run: Run, stage: Stage, augment: TrainAugment, bar: Any) -> float:
    """Train from the run's position to the end of its epoch; the seconds spent training. After
    every optimiser step: the step log, the mid-epoch checkpoint, and the stop check (a stop
    saves the position and raises :class:`Interrupted`)."""
    cfg, pos, d = run.cfg, run.pos, run.d
    run.model.train()
    if cfg.freeze_backbone:
        # The frozen backbone runs as at evaluation: its BatchNorm statistics stay fixed and
        # stochastic depth is off (it regularises blocks that learn; frozen ones it only makes
        # noisier for the head). The dropout before the classifier still applies.
        for name, m in run.model.named_children():
            if name not in ("dropout", "classifier"):
                m.eval()
    run.data.sampler.set_epoch(pos.epoch, start=pos.batch_in_epoch * cfg.batch_size)
    t0 = time.time() - pos.seconds
    step_sums = [0.0, 0.0]  # this rank's loss sum and images since the last optimiser step
    unsynced = False  # gradients accumulated under DDP's no_sync, not yet all-reduced
    bar.set_description(f"epoch {pos.epoch + 1}/{cfg.epochs} stage {stage.index + 1} {stage.image_size}px")
    for images, labels, index in run.data.loader:
        # --- data: drop unreadable files (SkipLog says which and why)
        bad = labels == UNREADABLE
        if bad.any():
            run.skips.add(run.data.train_split, index[bad].tolist())
            images, labels = images[~bad], labels[~bad]
        # --- forward / backward. Under DDP all ranks skip together: a rank that skipped its
        # backward would leave the others waiting in the gradient all-reduce.
        last_micro = (pos.batch_in_epoch + 1) % cfg.accum_steps == 0
        if distributed.all_agree(d, len(labels) > 1, run.device):
            with distributed.gradient_sync(run.forward, last_micro):
                loss = forward_backward(run, augment, images, labels)
            unsynced = not last_micro
            step_sums[0] += loss * len(labels)
            step_sums[1] += len(labels)
        pos.batch_in_epoch += 1
        # --- optimiser step (every accum_steps micro-batches), then what follows a step
        if pos.batch_in_epoch % cfg.accum_steps == 0:
            if unsynced:  # the step's last micro-batch was skipped: all-reduce what no_sync kept local
                distributed.average_gradients(d, run.model)
                unsynced = False
            lr = optimizer_step(run)
            step_loss, stop = add_step_loss(run, step_sums)
            step_sums = [0.0, 0.0]
            if run.step_log is not None:
                run.step_log.write(f"{pos.epoch + 1},{pos.step},{lr:.8g},{step_loss:.8f},{pos.seen}\n")
                run.step_log.flush()
            if stop or (cfg.save_every_steps and pos.step % cfg.save_every_steps == 0):
                pos.seconds = time.time() - t0
                save_state(run)
            if stop:
                raise interrupted(run)
        bar.update(1)
        elapsed = time.time() - t0
        bar.set_postfix(loss=f"{pos.loss_sum / max(pos.seen, 1):.3f}", img_s=f"{pos.seen / max(elapsed, 1e-9):.0f}",
                        refresh=False)
    add_step_loss(run, step_sums)  # micro-batches of an unfinished accumulation still count in the loss
    run.optimizer.zero_grad(set_to_none=True)  # a partial accumulation does not leak into the next epoch
    if pos.seen == 0:
        if run.skips.skipped:
            raise ValueError(f"training: no readable image in epoch {pos.epoch + 1}: {run.skips.summary()}")
        raise ValueError(f"training: no batch of epoch {pos.epoch + 1} had two or more images (BatchNorm needs "
                         f"them): use a batch size of at least 2")
    return time.time() - t0


def evaluate_epoch(run: Run, stage: Stage, loader: torch.utils.data.DataLoader,
                   train_seconds: float) -> dict[str, Any]:
    """Score the evaluated weights on the validation split; the epoch's metrics row."""
    cfg, pos, started = run.cfg, run.pos, time.time()
    distributed.broadcast_buffers(run.d, run.eval_model)
    val_loss, top1, top5, _ = score(run.eval_model, loader, run.normalize, run.device, len(run.data.class_names),
                                    run.data.val_split, run.skips, channels_last=cfg.channels_last,
                                    autocast_dtype=run.amp_dtype, sharded=run.d.enabled)
    row = {
        "epoch": pos.epoch + 1, "stage": stage.index + 1, "image_size": stage.image_size,
        "dropout": round(float(run.model.dropout.p), 4), "randaugment": stage.randaugment,
        "mixup": stage.mixup, "lr": round(run.optimizer.param_groups[0]["lr"], 8),
        "train_loss": round(pos.loss_sum / max(pos.seen, 1), 5), "val_loss": round(val_loss, 5),
        "val_top1": round(top1, 3), "val_top5": round(top5, 3),
        "img_per_s": round(pos.seen / max(train_seconds, 1e-9), 1),
        "seconds": round(train_seconds + time.time() - started, 2),
    }
    log.info("epoch %d/%d stage %d size %d dropout %.3f RandAugment %.1f mixup %.2f lr %.4g | train loss "
             "%.4f | val loss %.4f top-1 %.2f%% top-5 %.2f%% | %.0f img/s, %.1f s",
             row["epoch"], cfg.epochs, row["stage"], row["image_size"], row["dropout"], row["randaugment"],
             row["mixup"], row["lr"], row["train_loss"], row["val_loss"], row["val_top1"], row["val_top5"],
             row["img_per_s"], row["seconds"])
    return row


def save_state(run: Run) -> None:
    """The full resume state at the run's position, written atomically with the previous one
    kept (``rundir.write_state``); under DDP every rank calls it (each rank's random state is
    gathered) and rank 0 writes."""
    if run.run_dir is None:
        return
    bad = nonfinite_state(run)  # on every rank (the weights are identical), so all stop together
    if bad:  # never replace a good state with a diverged one (resuming it would only fail again)
        raise diverged(run, f"{len(bad)} weight tensor(s) hold NaN or inf at step {run.pos.step} (first: "
                            f"{', '.join(bad[:3])})")
    rngs = distributed.all_gather_object(run.d, rng_state())
    if not run.writes:
        return
    state = {
        "config": run.cfg.to_dict(), "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else {},
        **run.pos.to_state(), "rng": rngs[0], "class_names": run.data.class_names,
        "spec": run.model.spec.to_dict(), "normalisation": run.data.norm,
    }
    if run.d.enabled:
        state.update(world_size=run.d.world, rng_ranks=rngs)
    write_state(run.run_dir, state)


def checkpoint(run: Run, row: dict[str, Any], preprocessing: Preprocessing) -> None:
    """After an epoch: the weights first (last, and best when improved), then the resume state
    that points past them, then the metrics table; rank 0 writes."""
    pos = run.pos
    if run.run_dir is not None:
        # Checked before anything is written: a diverged epoch must not become last/best.safetensors.
        bad = nonfinite_state(run)
        if bad:
            raise diverged(run, f"after epoch {row['epoch']}, {len(bad)} weight tensor(s) hold NaN or inf (first: "
                                f"{', '.join(bad[:3])})")
        if not math.isfinite(row["val_loss"]):
            # Finite weights that give NaN: a state saved mid-epoch from these same weights is no
            # good either, and goes (the one before it is kept).
            if run.writes:
                drop_state_at(run.run_dir, run.pos.step)
            distributed.barrier(run.d)
            raise diverged(run, f"epoch {row['epoch']} ends with validation loss {row['val_loss']}")
    pos.rows.append(row)
    pos.next_epoch()
    # Better: a higher top-1, or the same top-1 at a lower loss (a small validation split
    # reaches 100% early, and the later epochs are still more confident).
    tied = [r["val_loss"] for r in pos.rows[:-1] if r["val_top1"] == row["val_top1"]]
    improved = row["val_top1"] > pos.best_top1 or (
        row["val_top1"] == pos.best_top1 and row["val_loss"] < min(tied, default=math.inf))
    pos.best_top1 = max(pos.best_top1, row["val_top1"])
    folder = run.run_dir if run.writes else None
    if folder is not None:
        extra = {"epoch": pos.epoch, "val_top1": row["val_top1"], "val_top5": row["val_top5"],
                 "recipe": run.cfg.recipe}
        for name in [LAST_WEIGHTS, BEST_WEIGHTS] if improved else [LAST_WEIGHTS]:
            save_weights(run.eval_model, folder / name, preprocessing=preprocessing, source="effnet-train",
                         class_names=run.data.class_names, extra=extra)
    save_state(run)
    if folder is not None:
        write_metrics(folder / METRICS_FILE, pos.rows)


def stop_agreed(run: Run) -> bool:
    """Whether a stop signal reached some rank (a collective: every rank calls it)."""
    return distributed.any_rank(run.d, run.stop.requested, run.device)


def interrupted(run: Run) -> distributed.Interrupted:
    """The exception that ends a stopped run, its message logged: where the run stopped and the
    command that resumes it."""
    # A rank the signal did not reach learnt of it from another (torchrun forwards signals to all).
    signum = run.stop.signum or signal.SIGTERM
    name, pos = signal.Signals(signum).name, run.pos
    where = (f"after epoch {pos.epoch}" if pos.batch_in_epoch == 0
             else f"in epoch {pos.epoch + 1} after batch {pos.batch_in_epoch}") + f" (step {pos.step})"
    if run.run_dir is None:
        message = f"training stopped by {name} {where}; this trial keeps no run folder, so nothing was saved"
    else:
        launch = " (with the same torchrun options)" if run.d.enabled else ""
        message = (f"training stopped by {name} {where}; its position is saved in {run.run_dir}. "
                   f"Resume with: effnet train --resume {shlex.quote(str(run.run_dir))}{launch}")
    if run.d.is_main:
        log.warning("%s", message)
    return distributed.Interrupted(message, signum, run.run_dir, run.d.is_main)


# --- the loop ---------------------------------------------------------------------------------------
def train_loop(run: Run, on_epoch: EpochReport | None = None, progress: bool = True,
               on_checkpoint: CheckpointReport | None = None) -> None:
    """Train the run's remaining epochs, each in four sections: stage, train, evaluation, checkpoint."""
    from tqdm import tqdm

    cfg, pos = run.cfg, run.pos
    per_epoch = run.data.batches_per_epoch
    bar = tqdm(total=cfg.epochs * per_epoch, initial=pos.epoch * per_epoch + pos.batch_in_epoch, unit="batch",
               dynamic_ncols=True, mininterval=1.0, disable=not (progress and run.d.is_main))
    folder = run.run_dir if run.writes else None
    if cfg.log_steps and folder is not None:
        run.step_log = open_step_log(folder / STEPS_FILE, pos.step)
    stage: Stage | None = None
    try:
        if stop_agreed(run):  # a signal during the set-up: a fresh run saves its start, so --resume works
            if pos.step == 0 and pos.batch_in_epoch == 0 and pos.epoch == 0:
                save_state(run)
            raise interrupted(run)
        while pos.epoch < cfg.epochs:
            # ===== stage (progressive learning: image size and regularisation grow together) =====
            new_stage = stage_at(run.data.stages, pos.epoch)
            if new_stage != stage:
                stage = new_stage
                augment, preprocessing, loader = enter_stage(run, stage)

            # ===== train one epoch (stops at an optimiser step on SIGINT/SIGTERM) =====
            train_seconds = train_epoch(run, stage, augment, bar)

            # ===== evaluation (the EMA weights when EMA is on) =====
            row = evaluate_epoch(run, stage, loader, train_seconds)

            # ===== checkpoint =====
            checkpoint(run, row, preprocessing)
            if on_checkpoint is not None and folder is not None:
                on_checkpoint(folder, list(pos.rows))
            if on_epoch is not None:
                on_epoch(dict(row))
            if pos.epoch < cfg.epochs and plateaued(pos.rows, cfg.patience):
                best = max(pos.rows, key=lambda r: (r["val_top1"], -r["val_loss"]))  # as checkpoint() picks
                log.info("early stop after epoch %d of %d: val top-1 has not beaten %.2f%% (epoch %d) for %d "
                         "epochs (--patience); %s holds that epoch", pos.epoch, cfg.epochs,
                         best["val_top1"], best["epoch"], cfg.patience, BEST_WEIGHTS)
                break
            if stop_agreed(run):
                if pos.epoch < cfg.epochs:
                    raise interrupted(run)  # the checkpoint just written holds the position
                log.info("a stop was requested during the last epoch, which has finished: the run is complete")
    finally:  # also on an exception: the bar and the step log are closed
        bar.close()
        if run.step_log is not None:
            run.step_log.close()
            run.step_log = None
