"""A deterministic epoch sampler: the order of epoch *e* depends only on (seed, e).

That is what makes resume exact: a run restarted at step *s* rebuilds the same permutation and skips
the batches it already consumed, without replaying them. It also deals batches to ranks for multi-process runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def deal_batches(order: list[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    """Cut ``order`` into batches and deal them to the ranks in turn: rank *r* gets batches r, r + W, ...

    Dealing whole batches (not single images) means the images one rank normalises together in a batch
    are the images one micro-batch of a single process with ``grad_accum_steps = W`` would see, so W ranks
    train exactly like one process accumulating W batches (same batch-norm groups, same gradient mean).
    """
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [i for batch in batches[rank::world_size] for i in batch]


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
        usable = self.batches_per_epoch() * self.batch_size * self.world_size  # drop the ragged tail: BN needs
        mine = deal_batches(order[:usable], self.batch_size, self.rank, self.world_size)  # full batches
        return mine[self.skip_batches * self.batch_size :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch() - self.skip_batches) * self.batch_size)


class TaskBalancedSampler(Sampler[int]):
    """One batch from each group per step, groups in turn: the partial-label paper's sampler.

    ``groups`` are lists of dataset indices (the images carrying each task's label). Each step consumes one
    batch per group (the engine accumulates gradients over them), so every task gets the same number of
    images per step however unequal the groups are. An epoch is the largest group's batches; smaller groups
    start a fresh permutation when they run out. Deterministic in (seed, epoch), sharded by rank, and
    ``skip_batches`` skips consumed batches for an exact resume, like :class:`EpochSampler`.
    """

    def __init__(self, groups: list[list[int]], *, seed: int, epoch: int, batch_size: int, skip_batches: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.groups = [list(g) for g in groups]
        self.seed, self.epoch, self.batch_size, self.skip_batches = seed, epoch, batch_size, skip_batches
        self.rank, self.world_size = rank, world_size

    def _rounds(self) -> int:
        return max(len(g) // (self.batch_size * self.world_size) for g in self.groups)

    def batches_per_epoch(self) -> int:
        return self._rounds() * len(self.groups)

    def _group_batches(self, k: int, group: list[int]) -> list[list[int]]:
        per_pass = len(group) // (self.batch_size * self.world_size)
        out: list[list[int]] = []
        cycle = 0
        while len(out) < self._rounds():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + k * 101 + cycle)
            order = [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
            mine = deal_batches(order[: per_pass * self.batch_size * self.world_size], self.batch_size, self.rank,
                                self.world_size)
            out += [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
            cycle += 1
        return out[: self._rounds()]

    def _indices(self) -> list[int]:
        per_group = [self._group_batches(k, g) for k, g in enumerate(self.groups)]
        batches = [per_group[k][r] for r in range(self._rounds()) for k in range(len(self.groups))]
        return [i for batch in batches[self.skip_batches :] for i in batch]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch() - self.skip_batches) * self.batch_size)
