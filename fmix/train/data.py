"""The seeded, resumable order of training batches."""

from __future__ import annotations

import torch
from torch import Tensor


def epoch_order(size: int, epoch: int, seed: int) -> Tensor:
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run recomputes it."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(order: Tensor, batch_size: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """Full batches of this rank's share of an epoch (every rank gets the same number of batches).

    Args:
        order: the epoch's order of sample indices.
        batch_size: samples per batch on each rank.
        rank: this process's rank.
        world: number of processes.

    Returns:
        The batches (the incomplete last one is dropped).
    """
    per_rank = len(order) // world
    share = order[rank * per_rank : (rank + 1) * per_rank]
    return [share[start : start + batch_size] for start in range(0, per_rank - batch_size + 1, batch_size)]
