"""The set-up steps of a training run: each builds one part of a :class:`Run` from the config
and from what the steps before it built, in this order (``set_up`` calls them):

    read_splits       data: the train/val splits (a seeded subset for smoke tests)
    build_model       model: a name, a spec file or object, or initial weights
    make_data         the training loader, the progressive stages, the evaluation size
    prepare_model     frozen backbone, SyncBatchNorm, EMA, DDP, torch.compile
    make_schedule     optimiser: global batch, peak lr, steps per epoch (make_optimizer)
    restore           resume: weights, optimiser, EMA, position, random state

plus ``open_run_dir`` before them (lock the folder; refuse or clear an earlier run). The loop
that trains a Run is in ``effnet.train.loop``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from filelock import FileLock
from torch import nn

from effnet.data import (
    DIGITS,
    DecodedDataset,
    EpochSampler,
    LoadTransform,
    SkipLog,
    Split,
    Stage,
    load_splits,
    make_loader,
    plan,
)
from effnet.files import atomic_write
from effnet.model import EfficientNet, build
from effnet.preprocessing import Normalize, Preprocessing, choose_normalisation
from effnet.profile.measure import count_params
from effnet.registry import get_spec
from effnet.scaling import scale
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig
from effnet.train.optim import ModelEMA, RMSpropTF, lr_at, param_groups, scaled_lr
from effnet.train.rundir import CONFIG_FILE, claim, new_run_dir
from effnet.train.score import default_device
from effnet.train.state import Position, set_rng_state
from effnet.train.stop import StopSignals
from effnet.weights import model_from_weights, read_weights

log = logging.getLogger(__name__)


# --- the run state ------------------------------------------------------------------------------
@dataclass
class Data:
    """What the data step builds: the splits, the training loader and the stage plan."""

    train_split: Split
    val_split: Split
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    batches_per_epoch: int
    stages: list[Stage]
    eval_size: int  # evaluation resolution of the last stage
    norm: dict[str, Any]  # input normalisation: scale, mean, std
    workers: int

    @property
    def class_names(self) -> list[str]:
        return self.train_split.class_names


@dataclass(frozen=True)
class Schedule:
    """The optimiser's schedule. The linear scaling rule (lr per 256 images) applies to the
    global batch: per-process batch x processes x accumulation steps."""

    global_batch: int
    peak_lr: float
    steps_per_epoch: int

    def lr(self, cfg: TrainConfig, step: int) -> float:
        return lr_at(step, self.steps_per_epoch, self.peak_lr, warmup_epochs=cfg.warmup_epochs,
                     schedule=cfg.schedule, decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs,
                     total_epochs=cfg.epochs, min_lr=cfg.min_lr)


@dataclass
class Run:
    """One run: built by the set-up steps, advanced by the loop."""

    cfg: TrainConfig
    d: distributed.Dist
    run_dir: Path | None  # None: nothing is written (a trial without a folder)
    device: torch.device
    amp_dtype: torch.dtype | None
    data: Data
    model: EfficientNet  # the plain network: its state_dict is what checkpoints hold
    ema: ModelEMA | None
    forward: nn.Module  # what a step calls: the model, wrapped by DDP and/or torch.compile
    normalize: Normalize
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    stop: StopSignals
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


# --- helpers (pure) ---------------------------------------------------------------------------------
def eval_resolution(spec: ModelSpec, train_size: int, eval_size: int | None = None) -> int:
    """The size a network trained at ``train_size`` is evaluated (and saved) at: ``eval_size``
    when given, else the spec's evaluation ``resolution`` scaled by ``train_size`` over the spec's
    own training size.

    EfficientNetV2 trains smaller than it tests: V2-S grows to 300 px (V2 Table 6) and is
    reported at 384 (official README); V2-B0 trains at 192 and tests at 224 (docs/paper.md sections
    7-8). The larger test size makes up for the apparent object size that random-resized crops
    enlarge during training (Touvron et al. 2019, "Fixing the train-test resolution
    discrepancy"). Keeping the ratio carries that split to any training size: V2-S trained at
    300 is scored at 384; a B0, whose spec trains and tests at one size, at 32 px is scored at 32.
    """
    if eval_size:
        return eval_size
    return max(1, round(spec.resolution * train_size / (spec.train_resolution or spec.resolution)))


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


# --- set-up steps ----------------------------------------------------------------------------------
def open_run_dir(cfg: TrainConfig, d: distributed.Dist, resume: str | Path | None,
                 keep_files: bool) -> tuple[Path | None, FileLock | None]:
    """The run folder, locked by rank 0 for the whole run (``rundir.claim``: a folder in use or
    holding an earlier run is refused unless resumed or ``overwrite``). Every rank learns the
    folder, or rank 0's reason to refuse it: otherwise the others would wait for rank 0 in
    their first collective until the timeout."""
    if not keep_files:
        return None, None
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


def read_splits(cfg: TrainConfig) -> tuple[Split, Split]:
    train_split, val_split = load_splits(cfg.data, cfg.val_fraction, cfg.seed)
    if cfg.train_subset:
        # A seeded random subset: an image folder lists its files class by class, so the first
        # N would be the first class(es) only.
        g = torch.Generator().manual_seed(cfg.seed)
        keep = sorted(torch.randperm(len(train_split.items), generator=g)[:cfg.train_subset].tolist())
        train_split.items = [train_split.items[i] for i in keep]
        train_split.labels = [train_split.labels[i] for i in keep]
    return train_split, val_split


#: The run's training and validation files, for ``effnet eval RUN_DIR`` and its overlap warning.
SPLIT_FILE = "split.json"


def write_split(path: Path, cfg: TrainConfig, train_split: Split, val_split: Split) -> None:
    """Record which images the run trains and validates on: the file lists relative to the data
    folder (an in-memory set such as digits: the seed and fraction that re-create the split)."""
    import json

    record: dict[str, Any] = {"data": cfg.data if cfg.data == DIGITS else str(Path(cfg.data).resolve()),
                              "val_fraction": cfg.val_fraction, "seed": cfg.seed, "train_subset": cfg.train_subset,
                              "class_names": train_split.class_names}
    if cfg.data != DIGITS:
        root = Path(cfg.data).resolve()
        for key, split in (("train", train_split), ("val", val_split)):
            record[key] = [[str(Path(item).resolve().relative_to(root)), label]
                           for item, label in zip(split.items, split.labels)]
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))


def build_model(cfg: TrainConfig, num_classes: int, spec: ModelSpec | None = None) -> EfficientNet:
    """The network to train: ``spec`` when given (a trial's candidate, or the architecture a
    resumed run recorded, whose weights come from the resume state); else, with ``weights``, the
    file's own architecture and weights, with a new head when the class count differs (the
    file's preprocessing is attached as ``model.preprocessing``); else ``cfg.spec`` (a file) or
    ``cfg.model`` (a name), times ``width``/``depth``. The head is sized for ``num_classes`` and
    the config's dropout, drop-path and BatchNorm-momentum overrides apply in every case."""
    overrides = {k: v for k, v in dict(dropout=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
                                       bn_momentum=cfg.bn_momentum).items() if v is not None}
    if spec is not None:
        return build(spec.replace(num_classes=num_classes, **overrides))
    if cfg.weights:
        wf = read_weights(cfg.weights)
        log.info("initial weights %s (%s, source %s); model/width/depth options are ignored",
                 cfg.weights, wf.spec.name, wf.source or "unknown")
        model = model_from_weights(wf, what=f"weights {cfg.weights}", num_classes=num_classes, **overrides)
        if num_classes != wf.spec.num_classes:
            # A zero head starts every image at loss ln(C) (Kolesnikov et al. 2020, BiT, section 3.3).
            # The TF initialiser's +-1/sqrt(C) is made for 1000 classes: for 3 it gives logits of
            # several units from 1280 pretrained features, and the first epochs (loss 3 instead of
            # ln 3 = 1.1) are spent undoing it.
            nn.init.zeros_(model.classifier.weight)
            nn.init.zeros_(model.classifier.bias)
            log.info("new %d-class head, initialised to zero (the weights have %d classes)", num_classes,
                     wf.spec.num_classes)
        return model
    base = ModelSpec.load(cfg.spec) if cfg.spec else get_spec(cfg.model)
    if cfg.width != 1.0 or cfg.depth != 1.0:
        # Named by its multipliers only: the input size is the run's (image_size), not the spec's.
        base = scale(base, width=cfg.width, depth=cfg.depth, name=f"{base.name}_w{cfg.width:g}_d{cfg.depth:g}")
    return build(base.replace(num_classes=num_classes, **overrides))


def make_data(cfg: TrainConfig, d: distributed.Dist, device: torch.device, train_split: Split, val_split: Split,
              spec: ModelSpec, norm: dict[str, Any]) -> Data:
    """The training loader and the stage plan (one stage without progressive learning)."""
    base_size = cfg.image_size or spec.train_resolution or spec.resolution
    stages = plan(cfg.progressive, cfg.epochs) if cfg.progressive else [Stage(0, 0, base_size, None, None, None)]
    final_size = stages[-1].image_size
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
    workers = cfg.workers if cfg.workers is not None else (0 if cfg.data == DIGITS else min(os.cpu_count() or 1, 8))
    loader = make_loader(train_ds, cfg.batch_size, workers=workers, sampler=sampler, drop_last=drop_last,
                         pin_memory=device.type == "cuda")
    return Data(train_split, val_split, loader, sampler, shard_size // cfg.batch_size if drop_last else 1, stages,
                eval_resolution(spec, final_size, cfg.eval_size), norm, workers)


def prepare_model(cfg: TrainConfig, d: distributed.Dist, device: torch.device,
                  model: EfficientNet) -> tuple[EfficientNet, ModelEMA | None, nn.Module]:
    """``(model, ema, forward)``: the network made ready to train, its weight average, and
    what a step calls."""
    if cfg.freeze_backbone:
        # Fine-tune only the classifier; the backbone (incl. its BatchNorm statistics) stays fixed.
        log.info("%s", freeze_backbone(model))
    if cfg.sync_bn and d.enabled:
        model = distributed.convert_sync_batchnorm(model, device)
    elif cfg.sync_bn:
        log.info("sync_bn ignored: a single process already normalises over the whole batch")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.memory_saving:
        model.set_grad_checkpointing(True)
        log.info("memory saving: activation checkpointing per block (recomputed in the backward pass)")
    ema = ModelEMA(model, cfg.ema_decay, buffers=cfg.ema_buffers) if cfg.ema else None
    # ``model`` stays the plain network; ``ddp`` wraps it to average gradients across ranks
    # during backward.
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
           if d.enabled else None)
    forward: nn.Module = ddp or model
    if cfg.compile:
        forward = torch.compile(forward)  # type: ignore[assignment]
    return model, ema, forward


def freeze_backbone(model: nn.Module) -> str:
    """Train only the classifier: every other parameter stops taking gradients. Returns the line
    that says what is frozen (the loop also keeps the backbone's BatchNorm statistics fixed)."""
    frozen: dict[str, int] = {}
    total = trainable = 0
    for name, p in model.named_parameters():
        keep = name.startswith("classifier.")
        p.requires_grad_(keep)
        total += p.numel()
        if keep:
            trainable += p.numel()
        else:
            top = name.split(".")[0]
            frozen[top] = frozen.get(top, 0) + p.numel()
    return (f"frozen backbone: {total - trainable:,} of {total:,} parameters frozen "
            f"({', '.join(frozen)}, with their BatchNorm statistics); training {trainable:,} in the classifier")


def peak_lr(cfg: TrainConfig, global_batch: int) -> float:
    """The linear scaling rule on ``global_batch``, counted as at least ``lr_batch_floor``."""
    return scaled_lr(cfg.lr_per_256, max(global_batch, cfg.lr_batch_floor))


def make_schedule(cfg: TrainConfig, d: distributed.Dist, data: Data) -> Schedule:
    global_batch = cfg.batch_size * d.world * cfg.accum_steps
    steps_per_epoch = max(1, data.batches_per_epoch // cfg.accum_steps)
    return Schedule(global_batch, peak_lr(cfg, global_batch), steps_per_epoch)


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, rho=cfg.rmsprop_rho, momentum=cfg.momentum, eps=cfg.rmsprop_eps)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


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


def set_up(cfg: TrainConfig, d: distributed.Dist, run_dir: Path | None, saved: dict[str, Any] | None,
           spec: ModelSpec | None, stop: StopSignals) -> Run:
    """Every set-up step, in order, into one :class:`Run`."""
    # ===== set-up: threads, seed, device, mixed precision =====
    if saved is not None:
        saved_world = saved.get("world_size", 1)
        if saved_world != d.world:
            raise ValueError(f"{run_dir} was trained by {saved_world} process(es) and this job has {d.world}: "
                             f"resume with the same world size (torchrun --nnodes x --nproc_per_node), since "
                             f"the global batch, learning rate and data order depend on it")
    # Ranks sharing a machine share its cores.
    threads = cfg.threads or max(1, auto_threads() // d.local_world)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    device = distributed.device_for(d, default_device(cfg.device))
    amp_dtype = autocast_dtype(cfg, device)
    if spec is not None and saved is None and run_dir is not None:
        # A candidate given as an object: its file makes config.yaml a complete recipe.
        cfg = dataclasses.replace(cfg, spec=str(run_dir / "spec.yaml"), model=spec.name)
        if d.is_main:
            spec.save(run_dir / "spec.yaml")
    if d.is_main and run_dir is not None:
        atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(cfg.to_yaml()))

    # ===== data =====
    train_split, val_split = read_splits(cfg)
    if d.is_main and run_dir is not None and saved is None:
        write_split(run_dir / SPLIT_FILE, cfg, train_split, val_split)

    # ===== model =====
    if saved is not None:
        spec = ModelSpec.from_dict(saved["spec"])
    model = build_model(cfg, len(train_split.class_names), spec).to(device)
    norm = saved["normalisation"] if saved is not None else choose_normalisation(
        cfg.mean, cfg.std, getattr(model, "preprocessing", None))
    if d.enabled:
        # Same initial weights everywhere (seeded above; DDP also broadcasts rank 0's), then each
        # rank its own augmentation and dropout draws, so the shards are not augmented alike.
        torch.manual_seed(cfg.seed + d.rank)
    data = make_data(cfg, d, device, train_split, val_split, model.spec, norm)
    model, ema, forward = prepare_model(cfg, d, device, model)
    normalize = Normalize(Preprocessing(mean=norm["mean"], std=norm["std"], scale=norm["scale"])).to(device)

    # ===== optimiser =====
    schedule = make_schedule(cfg, d, data)
    optimizer = make_optimizer(cfg, model, schedule.peak_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    run = Run(cfg, d, run_dir, device, amp_dtype, data, model, ema, forward, normalize, optimizer, scaler, schedule,
              stop)

    # ===== restore =====
    if saved is not None:
        restore(run, saved)
    sizes = sorted({s.image_size for s in data.stages})
    log.info("run folder %s: %s (%d params) at %s px on %s, %d train / %d val images, %d classes, %d epochs, "
             "batch %d x %d, peak lr %.4g, %d CPU thread(s)", run_dir or "none (nothing is saved)", model.spec.name,
             count_params(model, trainable_only=False), "-".join(map(str, sizes)) if len(sizes) < 3
             else f"{sizes[0]}-{sizes[-1]}", device, len(train_split), len(val_split),
             len(data.class_names), cfg.epochs, cfg.batch_size, cfg.accum_steps, schedule.peak_lr, threads)
    if d.enabled:
        log.info("distributed: %d processes (%s); global batch %d = %d per process x %d processes x %d "
                 "accumulation step(s); peak lr %.4g = %.4g per 256 images x %d / 256; SyncBatchNorm %s",
                 d.world, torch.distributed.get_backend(), schedule.global_batch, cfg.batch_size, d.world,
                 cfg.accum_steps, schedule.peak_lr, cfg.lr_per_256, schedule.global_batch,
                 "on" if cfg.sync_bn else "off")
    return run
