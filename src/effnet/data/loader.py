"""DataLoaders with a reproducible, resumable order.

The training order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so a resumed run
sees exactly the batches the interrupted one would have, and skipping the first ``start`` batches
of an epoch is just slicing. (DistributedSampler uses the same seed + epoch idea.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from effnet.data.datasets import DecodedDataset


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices of epoch ``epoch`` (shuffled from ``seed + epoch``), from position ``start`` on."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return max(self.n - self.start, 0)


def make_loader(
    dataset: DecodedDataset, batch_size: int, *, workers: int, sampler: EpochSampler | None = None,
    drop_last: bool = False, pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader decoding in ``workers`` processes (0: in the main process)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
    )
