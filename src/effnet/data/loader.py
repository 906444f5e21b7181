"""DataLoaders with a reproducible, resumable order.

The training order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so a resumed run
sees exactly the batches the interrupted one would have, and skipping the first ``start`` batches
of an epoch is just slicing. (DistributedSampler uses the same seed + epoch idea.)

Under DistributedDataParallel each of ``world`` processes takes every ``world``-th index of the
same permutation (``order[rank::world]``), so the images of global batch ``k`` (batch ``k`` of
every rank together) are the ones a single process with a ``world`` times larger batch would
draw at step ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from effnet.data.datasets import DIGITS, DecodedDataset


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices of epoch ``epoch`` (shuffled from ``seed + epoch``), from position ``start`` on;
    with ``world > 1``, only rank ``rank``'s share (``start`` then counts within the share)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"EpochSampler: expected 0 <= rank < world, got rank {rank}, world {world}")
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def shard(self) -> list[int]:
        """This rank's indices; the remainder ``n % world`` is left out so that every rank runs
        the same number of batches (a rank with one more would wait for its peers forever)."""
        order = self.order()
        if self.world == 1:
            return order
        return order[:self.shard_size() * self.world][self.rank::self.world]

    def shard_size(self) -> int:
        return self.n // self.world

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:])

    def __len__(self) -> int:
        return max(self.shard_size() - self.start, 0)


def default_workers(data: object) -> int:
    """Decoding processes when none are asked for: 0 for the bundled digits (held decoded in
    memory: worker processes would only add their start-up), else the CPU count, at most 8."""
    return 0 if str(data) == DIGITS else min(os.cpu_count() or 1, 8)


def make_loader(
    dataset: DecodedDataset | torch.utils.data.Subset, batch_size: int, *, workers: int, sampler: EpochSampler | None = None,
    drop_last: bool = False, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader decoding in ``workers`` processes (0: in the main process)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
    )
