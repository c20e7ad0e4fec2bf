"""A deterministic epoch sampler: the order of epoch *e* depends only on (seed, e).

That is what makes resume exact: a run restarted at step *s* rebuilds the same permutation and skips
the batches it already consumed, without replaying them. It also shards by rank for multi-process runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(self, size: int, *, seed: int, epoch: int, batch_size: int, skip_batches: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.epoch = size, seed, epoch
        self.batch_size, self.skip_batches = batch_size, skip_batches
        self.rank, self.world_size = rank, world_size

    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world_size)

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        usable = self.batches_per_epoch() * self.batch_size * self.world_size
        mine = order[:usable][self.rank :: self.world_size]  # drop the ragged tail: BN needs full batches
        return mine[self.skip_batches * self.batch_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch() - self.skip_batches) * self.batch_size)
