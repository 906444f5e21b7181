"""The training loop: one function, in marked sections (setup, data, model, optimiser, resume,
then per epoch: stage, step, evaluation, checkpoint).

DistributedDataParallel is written into it: the sampler is seeded by epoch and sharded by rank,
every metric is a plain sum all-reduced over the ranks before it is divided, and rank 0 alone
writes files (see ``effnet.train.distributed`` for the process group and ``torchrun``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from effnet.data import (
    DIGITS,
    UNREADABLE,
    AugmentSettings,
    DecodedDataset,
    EpochSampler,
    LoadTransform,
    SkipLog,
    Stage,
    TrainAugment,
    load_splits,
    make_loader,
    plan,
    stage_at,
)
from effnet.files import atomic_write
from effnet.model import EfficientNet
from effnet.preprocessing import EvalTransform, Normalize, Preprocessing, choose_normalisation
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig
from effnet.train.evaluate import default_device, score
from effnet.train.optim import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr
from effnet.viz.plots import plot_curves
from effnet.weights.format import save_weights

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
METRIC_FIELDS = ("epoch", "stage", "image_size", "dropout", "randaugment", "mixup", "lr", "train_loss",
                 "val_loss", "val_top1", "val_top5", "img_per_s", "seconds")


@dataclass
class RunResult:
    """What a run left behind."""

    run_dir: Path
    epochs: int
    best_top1: float
    final_top1: float
    metrics: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    is_main: bool = True  # False on the ranks > 0 of a distributed job (they print nothing)


# --- helpers (pure; the loop below reads top to bottom) -------------------------------------
def build_model(cfg: TrainConfig, num_classes: int, resume_spec: ModelSpec | None = None) -> EfficientNet:
    """The network to train: with ``weights``, the file's own architecture (a converted, trained,
    scaled or searched spec) and its weights, with a new head when the class count differs
    (the file's preprocessing is attached as ``model.preprocessing``); otherwise ``spec`` (a
    file) or ``model`` (a name), times ``width``/``depth``. ``resume_spec``: the architecture a
    resumed run recorded; its weights come from the resume state, so the initial weights file
    is not needed again."""
    from effnet.model import build
    from effnet.registry import get_spec
    from effnet.scaling import scale
    from effnet.weights import model_from_weights, read_weights

    if resume_spec is not None:
        return build(resume_spec)
    overrides = {k: v for k, v in dict(dropout=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
                                       bn_momentum=cfg.bn_momentum).items() if v is not None}
    if cfg.weights:
        wf = read_weights(cfg.weights)
        log.info("initial weights %s (%s, source %s); model/width/depth options are ignored",
                 cfg.weights, wf.spec.name, wf.source or "unknown")
        if num_classes != wf.spec.num_classes:
            log.info("new %d-class head (the weights have %d classes)", num_classes, wf.spec.num_classes)
        return model_from_weights(wf, what=f"weights {cfg.weights}", num_classes=num_classes, **overrides)
    spec = ModelSpec.load(cfg.spec) if cfg.spec else get_spec(cfg.model)
    if cfg.width != 1.0 or cfg.depth != 1.0:
        spec = scale(spec, width=cfg.width, depth=cfg.depth)
    return build(spec.replace(num_classes=num_classes, **overrides))


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, rho=cfg.rmsprop_rho, momentum=cfg.momentum, eps=cfg.rmsprop_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision: bf16 where the device supports it (no loss scaling needed), fp16 on
    request (with a GradScaler); ``auto`` is off on CPU, where bf16 is rarely faster."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def stage_settings(cfg: TrainConfig, stage: Stage) -> AugmentSettings:
    return AugmentSettings(
        image_size=stage.image_size, crop_scale=cfg.crop_scale, hflip=cfg.hflip, autoaugment=cfg.autoaugment,
        randaugment_magnitude=cfg.randaugment_magnitude if stage.randaugment is None else stage.randaugment,
        mixup_alpha=cfg.mixup_alpha if stage.mixup is None else stage.mixup, cutmix_alpha=cfg.cutmix_alpha,
    )


def new_run_dir(out: str | None) -> Path:
    if out:
        return Path(out)
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():  # two runs started in the same second
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
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


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: str | Path | None = None) -> RunResult:
    """Train (or fine-tune) as ``cfg`` says; ``resume`` continues a run folder where its last
    checkpoint left off (its saved config is used).

    Launched by ``torchrun``, every process calls this: they join one process group (NCCL on
    GPUs, Gloo on CPU), each trains on its share of every global batch of ``world x batch_size``
    images, and rank 0 alone logs and writes the run folder (see ``effnet.train.distributed``).
    """
    saved = None
    if resume is not None:
        if not (Path(resume) / STATE_FILE).is_file():
            raise FileNotFoundError(f"cannot resume: no {STATE_FILE} in {resume}")
        saved = torch.load(Path(resume) / STATE_FILE, map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict(saved["config"])
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        # Before anything touches CUDA: cuBLAS reads this when it creates its handle.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    d = distributed.start(cfg.device, cfg.dist_timeout_minutes)
    effnet_log = logging.getLogger("effnet")
    log_level = effnet_log.level
    if not d.is_main:
        effnet_log.setLevel(logging.WARNING)  # one copy of the log: rank 0's (warnings still show)
    try:
        return _train(cfg, resume, saved, d)
    finally:
        # An exception propagates (the CLI exits non-zero, and torchrun then stops the other ranks).
        effnet_log.setLevel(log_level)
        torch.use_deterministic_algorithms(was_deterministic)
        distributed.stop(d)


def _train(cfg: TrainConfig, resume: str | Path | None, saved: dict[str, Any] | None,
           d: distributed.Dist) -> RunResult:
    # ===== setup =====
    if resume is not None:
        run_dir = Path(resume)
    else:
        # Rank 0 names the folder: the others' clocks may sit in another second.
        run_dir = Path(distributed.broadcast_object(d, str(new_run_dir(cfg.out))))
        if (run_dir / STATE_FILE).exists():
            raise ValueError(f"{run_dir} already holds a run; pass --resume {run_dir} or choose another --out")
    saved_world = saved.get("world_size", 1) if saved is not None else d.world
    if saved_world != d.world:
        raise ValueError(f"{run_dir} was trained by {saved_world} process(es) and this job has {d.world}: "
                         f"resume with the same world size (torchrun --nnodes x --nproc_per_node), since "
                         f"the global batch, learning rate and data order depend on it")
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # Ranks sharing a machine share its cores.
    threads = cfg.threads or max(1, auto_threads() // d.local_world)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = distributed.device_for(d, default_device(cfg.device))
    amp_dtype = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if d.is_main:
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))

    # ===== data =====
    train_split, val_split = load_splits(cfg.data, cfg.val_fraction, cfg.seed)
    if cfg.train_subset:
        # A seeded random subset: an image folder lists its files class by class, so the first
        # N would be the first class(es) only.
        g = torch.Generator().manual_seed(cfg.seed)
        keep = sorted(torch.randperm(len(train_split.items), generator=g)[:cfg.train_subset].tolist())
        train_split.items = [train_split.items[i] for i in keep]
        train_split.labels = [train_split.labels[i] for i in keep]
    class_names = train_split.class_names
    workers = cfg.workers if cfg.workers is not None else (0 if cfg.data == DIGITS else min(os.cpu_count() or 1, 8))

    # ===== model =====
    resume_spec = ModelSpec.from_dict(saved["spec"]) if saved is not None else None
    model = build_model(cfg, len(class_names), resume_spec).to(device)
    norm = saved["normalisation"] if saved is not None else choose_normalisation(
        cfg.mean, cfg.std, getattr(model, "preprocessing", None))
    if d.enabled:
        # Same initial weights everywhere (seeded above; DDP also broadcasts rank 0's), then each
        # rank its own augmentation and dropout draws, so the shards are not augmented alike.
        torch.manual_seed(cfg.seed + d.rank)
    base_size = cfg.image_size or model.spec.train_resolution or model.spec.resolution
    stages = plan(cfg.progressive, cfg.epochs) if cfg.progressive else [Stage(0, 0, base_size, None, None, None)]
    final_size = stages[-1].image_size
    eval_size = cfg.eval_size or final_size

    def eval_preprocessing(stage: Stage) -> Preprocessing:
        """Evaluation view for a stage: its size times eval_size / final size, so that each
        epoch's score (and the checkpoint's recorded preprocessing) matches what the network was
        trained at; the last stage evaluates at ``eval_size``."""
        resolution = max(32, round(stage.image_size * eval_size / final_size))
        return Preprocessing(resolution=resolution, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                             mean=norm["mean"], std=norm["std"], scale=norm["scale"])

    preprocessing = eval_preprocessing(stages[-1])
    # Workers decode to one fixed square a little larger than the largest stage; the device
    # crops it to each stage's size (EfficientNet's random-resized crop).
    load_size = int(math.ceil(final_size / cfg.crop_pct))
    train_ds = DecodedDataset(train_split, LoadTransform(load_size, cfg.interpolation), load_size)
    # Under DDP each rank reads every world-th image of the epoch's permutation.
    sampler = EpochSampler(len(train_ds), cfg.seed, rank=d.rank, world=d.world)
    shard_size = sampler.shard_size()
    if shard_size == 0:
        raise ValueError(f"{len(train_ds)} training images cannot be shared by {d.world} processes: "
                         f"use fewer processes or more data")
    drop_last = shard_size > cfg.batch_size
    train_loader = make_loader(train_ds, cfg.batch_size, workers=workers, sampler=sampler, drop_last=drop_last,
                               pin_memory=device.type == "cuda")

    def val_loader_for(p: Preprocessing) -> torch.utils.data.DataLoader:
        val_ds: Any = DecodedDataset(val_split, EvalTransform(p), p.resolution)
        if d.enabled:
            # Every validation image exactly once over all ranks (no padding duplicates); the
            # sums are all-reduced in score().
            val_ds = torch.utils.data.Subset(val_ds, range(d.rank, len(val_ds), d.world))
        return make_loader(val_ds, cfg.batch_size * 2, workers=workers)

    normalize = Normalize(preprocessing).to(device)
    if cfg.freeze_backbone:
        # Fine-tune only the classifier; the backbone (incl. its BatchNorm statistics) stays fixed.
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    if cfg.sync_bn and d.enabled:
        model = distributed.convert_sync_batchnorm(model, device)
    elif cfg.sync_bn:
        log.info("sync_bn ignored: a single process already normalises over the whole batch")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    # ``model`` stays the plain network (its state_dict is what checkpoints hold); ``ddp`` wraps
    # it to average gradients across ranks during backward.
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if d.enabled else None)
    forward = ddp or model
    forward = torch.compile(forward) if cfg.compile else forward

    # ===== optimiser =====
    batches_per_epoch = shard_size // cfg.batch_size if drop_last else 1
    steps_per_epoch = max(1, batches_per_epoch // cfg.accum_steps)
    # The linear scaling rule (lr per 256 images) applies to the global batch.
    global_batch = cfg.batch_size * d.world * cfg.accum_steps
    peak_lr = scaled_lr(cfg.lr_per_256, global_batch)
    optimizer = make_optimizer(cfg, model, peak_lr)

    def lr_for(step: int) -> float:
        return lr_at(step, steps_per_epoch, peak_lr, warmup_epochs=cfg.warmup_epochs, schedule=cfg.schedule,
                     decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs, total_epochs=cfg.epochs,
                     min_lr=cfg.min_lr)

    # ===== resume =====
    epoch, step, batch_in_epoch, rows, best = 0, 0, 0, [], -1.0
    partial = {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}  # global sums (all ranks) of the epoch so far
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        epoch, step, batch_in_epoch = saved["epoch"], saved["step"], saved["batch_in_epoch"]
        rows, best, partial = saved["metrics"], saved["best_top1"], saved["partial"]
        set_rng_state(saved["rng_ranks"][d.rank] if d.enabled else saved["rng"])
        log.info("resuming %s at epoch %d, batch %d (step %d)", run_dir, epoch + 1, batch_in_epoch, step)
    skips = SkipLog()
    log.info("run folder %s: %s (%d params) on %s, %d train / %d val images, %d classes, %d epochs, "
             "batch %d x %d, peak lr %.4g, %d CPU thread(s)", run_dir, model.spec.name, sum(p.numel() for p in model.parameters()),
             device, len(train_split), len(val_split), len(class_names), cfg.epochs, cfg.batch_size,
             cfg.accum_steps, peak_lr, threads)
    if d.enabled:
        log.info("distributed: %d processes (%s); global batch %d = %d per process x %d processes x %d "
                 "accumulation step(s); peak lr %.4g = %.4g per 256 images x %d / 256; SyncBatchNorm %s",
                 d.world, torch.distributed.get_backend(), global_batch, cfg.batch_size, d.world, cfg.accum_steps,
                 peak_lr, cfg.lr_per_256, global_batch, "on" if cfg.sync_bn else "off")
    step_log = open_step_log(run_dir / "steps.csv", step) if cfg.log_steps and d.is_main else None

    def save_state(epoch_: int, batch_: int) -> None:
        """Full resume state, written atomically (a kill leaves the previous file intact); under
        DDP every rank calls it (each rank's random state is gathered), rank 0 writes."""
        rngs = distributed.all_gather_object(d, rng_state())
        if not d.is_main:
            return
        state = {
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else {},
            "epoch": epoch_, "step": step, "batch_in_epoch": batch_, "metrics": rows, "best_top1": best,
            "partial": partial, "rng": rngs[0], "class_names": class_names,
            "spec": model.spec.to_dict(), "normalisation": norm,
        }
        if d.enabled:
            state.update(world_size=d.world, rng_ranks=rngs)
        atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def add_step_loss(sums: list[float]) -> float:
        """Add one step's (loss sum, images) of every rank to the epoch's totals; the step's mean loss."""
        loss_sum, seen = distributed.sum_floats(d, sums, device)
        partial["loss_sum"] += loss_sum
        partial["seen"] += int(seen)
        return loss_sum / max(seen, 1)

    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs * batches_per_epoch, initial=epoch * batches_per_epoch + batch_in_epoch,
               unit="batch", dynamic_ncols=True, mininterval=1.0, disable=not d.is_main)
    eval_model: nn.Module = model
    stage: Stage | None = None
    augment: TrainAugment | None = None
    try:
        while epoch < cfg.epochs:
            # ===== stage (progressive learning: image size and regularisation grow together) =====
            new_stage = stage_at(stages, epoch)
            if new_stage != stage:
                stage = new_stage
                if stage.dropout is not None:
                    model.set_dropout(stage.dropout)
                augment = TrainAugment(stage_settings(cfg, stage)).to(device)
                preprocessing = eval_preprocessing(stage)
                val_loader = val_loader_for(preprocessing)
                s = augment.settings
                log.info("stage %d/%d from epoch %d: image size %d, dropout %.3f, RandAugment %.1f, mixup %.2f",
                         stage.index + 1, len(stages), stage.first_epoch + 1, stage.image_size,
                         model.dropout.p, s.randaugment_magnitude, s.mixup_alpha)
            if augment is None or stage is None:  # plan() always covers epoch 0 onwards
                raise RuntimeError(f"no progressive stage covers epoch {epoch + 1}: the stage plan is empty")

            # ===== train one epoch =====
            model.train()
            if cfg.freeze_backbone:
                for m in model.modules():
                    if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
                        m.eval()
            sampler.set_epoch(epoch, start=batch_in_epoch * cfg.batch_size)
            t0 = time.time() - partial["seconds"]
            step_sums = [0.0, 0.0]  # this rank's loss sum and images since the last optimiser step
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs} stage {stage.index + 1} {stage.image_size}px")
            for images, labels, index in train_loader:
                # --- data: drop unreadable files, augment on the device
                bad = labels == UNREADABLE
                if bad.any():
                    skips.add(train_split, index[bad].tolist())
                    images, labels = images[~bad], labels[~bad]
                # Under DDP all ranks skip together: a rank that skipped its forward/backward would
                # leave the others waiting in the gradient all-reduce.
                if distributed.all_agree(d, len(labels) > 1, device):
                    x, targets = augment(images.to(device, non_blocking=True), labels.to(device, non_blocking=True))
                    x = normalize.from_unit(x)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    # --- forward / backward (loss averaged over the accumulated micro-batches; DDP
                    # averages the gradients over the ranks, so the step sees the global batch's mean)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        logits = forward(x)
                    loss = targets.loss(logits.float(), cfg.label_smoothing)
                    loss_value = loss.item()  # one host read per micro-batch, for the guard and the log
                    if not math.isfinite(loss_value):
                        raise RuntimeError(
                            f"loss is {loss_value} at epoch {epoch + 1}, step {step}: training diverged; the last "
                            f"good checkpoint is kept in {run_dir}; lower the learning rate (--lr) or use --amp off"
                        )
                    scaler.scale(loss / cfg.accum_steps).backward()
                    step_sums[0] += loss_value * len(labels)
                    step_sums[1] += len(labels)
                batch_in_epoch += 1
                # --- optimiser step (every accum_steps micro-batches)
                if batch_in_epoch % cfg.accum_steps == 0:
                    lr = lr_for(step)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model)  # on every rank: the weights are identical after each step
                    step += 1
                    step_loss = add_step_loss(step_sums)
                    step_sums = [0.0, 0.0]
                    if step_log is not None:
                        step_log.write(f"{epoch + 1},{step},{lr:.8g},{step_loss:.8f},{partial['seen']}\n")
                        step_log.flush()
                    if step == 1:
                        distributed.crash_for_test(d)
                    if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                        partial["seconds"] = time.time() - t0
                        save_state(epoch, batch_in_epoch)
                bar.update(1)
                elapsed = time.time() - t0
                bar.set_postfix(loss=f"{partial['loss_sum'] / max(partial['seen'], 1):.3f}",
                                img_s=f"{partial['seen'] / max(elapsed, 1e-9):.0f}", refresh=False)
            add_step_loss(step_sums)  # micro-batches of an unfinished accumulation still count in the loss
            train_seconds = time.time() - t0
            optimizer.zero_grad(set_to_none=True)  # a partial accumulation does not leak into the next epoch

            # ===== evaluation (the EMA weights when EMA is on) =====
            eval_model = ema.module if ema is not None else model
            distributed.broadcast_buffers(d, eval_model)
            val_loss, top1, top5, _ = score(eval_model, val_loader, normalize, device, len(class_names), val_split,
                                            skips, channels_last=cfg.channels_last, autocast_dtype=amp_dtype,
                                            sharded=d.enabled)
            row = {
                "epoch": epoch + 1, "stage": stage.index + 1, "image_size": stage.image_size,
                "dropout": round(float(model.dropout.p), 4), "randaugment": augment.settings.randaugment_magnitude,
                "mixup": augment.settings.mixup_alpha, "lr": round(optimizer.param_groups[0]["lr"], 8),
                "train_loss": round(partial["loss_sum"] / max(partial["seen"], 1), 5), "val_loss": round(val_loss, 5),
                "val_top1": round(top1, 3), "val_top5": round(top5, 3),
                "img_per_s": round(partial["seen"] / max(train_seconds, 1e-9), 1),
                "seconds": round(time.time() - t0, 2),
            }
            rows.append(row)
            log.info("epoch %d/%d stage %d size %d dropout %.3f RandAugment %.1f mixup %.2f lr %.4g | train loss "
                     "%.4f | val loss %.4f top-1 %.2f%% top-5 %.2f%% | %.0f img/s, %.1f s",
                     row["epoch"], cfg.epochs, row["stage"], row["image_size"], row["dropout"], row["randaugment"],
                     row["mixup"], row["lr"], row["train_loss"], row["val_loss"], row["val_top1"], row["val_top5"],
                     row["img_per_s"], row["seconds"])

            # ===== checkpoint (weights first, then the resume state that points past them; rank 0 writes) =====
            epoch, batch_in_epoch = epoch + 1, 0
            partial = {"loss_sum": 0.0, "seen": 0, "seconds": 0.0}
            extra = {"epoch": epoch, "val_top1": top1, "val_top5": top5, "recipe": cfg.recipe}
            improved = top1 > best
            best = max(best, top1)
            if d.is_main:
                save_weights(eval_model, run_dir / "last.safetensors", preprocessing=preprocessing,
                             source="effnet-train", class_names=class_names, extra=extra)
                if improved:
                    save_weights(eval_model, run_dir / "best.safetensors", preprocessing=preprocessing,
                                 source="effnet-train", class_names=class_names, extra=extra)
            save_state(epoch, 0)
            if d.is_main:
                write_metrics(run_dir / "metrics.csv", rows)
                plot_curves(run_dir / "curves.png", rows)
    finally:  # also on an exception: the bar and the step log are closed
        bar.close()
        if step_log is not None:
            step_log.close()
    skips.report()
    final = rows[-1]["val_top1"] if rows else float("nan")
    log.info("done: %d epochs, final top-1 %.2f%%, best %.2f%%; run folder %s", len(rows), final, best, run_dir)
    return RunResult(run_dir, len(rows), best, final, rows, sorted(skips.skipped), is_main=d.is_main)
