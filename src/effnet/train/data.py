"""The pipeline's third step, the data: the train/val splits, the training loader and the stage
plan (progressive learning's stages, or one stage without it; every rule of it is
:func:`effnet.data.progressive.plan`), and each stage's validation loader."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from effnet.data import (
    DecodedDataset,
    EpochSampler,
    LoadTransform,
    Split,
    Stage,
    default_workers,
    load_splits,
    make_loader,
    plan,
)
from effnet.preprocessing import EvalTransform, Preprocessing
from effnet.specs.base import ModelSpec
from effnet.train import distributed
from effnet.train.config import TrainConfig


@dataclass
class Data:
    """What the data step builds: the splits, the training loader and the stage plan."""

    train_split: Split
    val_split: Split
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    batches_per_epoch: int
    stages: list[Stage]
    norm: dict[str, Any]  # input normalisation: scale, mean, std
    workers: int

    @property
    def class_names(self) -> list[str]:
        return self.train_split.class_names


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


def make_data(cfg: TrainConfig, d: distributed.Dist, device: torch.device, splits: tuple[Split, Split],
              spec: ModelSpec, norm: dict[str, Any]) -> Data:
    """The training loader and the stage plan of the network ``spec`` trains."""
    stages = plan(cfg.progressive, cfg.epochs, spec, image_size=cfg.image_size, eval_size=cfg.eval_size,
                  randaugment=cfg.randaugment_magnitude, mixup=cfg.mixup_alpha)
    # Workers decode to one fixed square a little larger than the largest stage; the device
    # crops it to each stage's size (EfficientNet's random-resized crop).
    load_size = int(math.ceil(stages[-1].image_size / cfg.crop_pct))
    train_ds = DecodedDataset(splits[0], LoadTransform(load_size, cfg.interpolation), load_size)
    # Under DDP each rank reads every world-th image of the epoch's permutation.
    sampler = EpochSampler(len(train_ds), cfg.seed, rank=d.rank, world=d.world)
    shard_size = sampler.shard_size()
    if shard_size == 0:
        raise ValueError(f"{len(train_ds)} training images cannot be shared by {d.world} processes: "
                         f"use fewer processes or more data")
    drop_last = shard_size > cfg.batch_size
    workers = cfg.workers if cfg.workers is not None else default_workers(cfg.data)
    loader = make_loader(train_ds, cfg.batch_size, workers=workers, sampler=sampler, drop_last=drop_last,
                         pin_memory=device.type == "cuda")
    return Data(*splits, loader, sampler, shard_size // cfg.batch_size if drop_last else 1, stages, norm, workers)


def eval_view(cfg: TrainConfig, data: Data, stage: Stage) -> Preprocessing:
    """How a stage's validation images are prepared (and what its checkpoints record)."""
    norm = data.norm
    return Preprocessing(resolution=stage.eval_size, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation,
                         mean=norm["mean"], std=norm["std"], scale=norm["scale"])


def val_loader(cfg: TrainConfig, d: distributed.Dist, data: Data,
               preprocessing: Preprocessing) -> torch.utils.data.DataLoader:
    """The validation loader at a stage's evaluation view."""
    val_ds: Any = DecodedDataset(data.val_split, EvalTransform(preprocessing), preprocessing.resolution)
    if d.enabled:
        # Every validation image exactly once over all ranks (no padding duplicates); the sums
        # are all-reduced in score().
        val_ds = torch.utils.data.Subset(val_ds, range(d.rank, len(val_ds), d.world))
    return make_loader(val_ds, cfg.batch_size * 2, workers=data.workers)
