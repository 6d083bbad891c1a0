"""Per-rank shares of an epoch, for data sources read by several processes (torchrun).

Every rank draws the same shuffled order of the epoch from ``(seed, epoch)`` and takes its own
contiguous slice of it: the ranks' shares are disjoint, all of the same length
``size // world_size`` (the last ``size % world_size`` samples of the order sit the epoch out;
a different shuffle leaves out different ones next epoch), and their union is the epoch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def _check(size: int, rank: int, world_size: int, epoch: int) -> None:
    if world_size < 1:
        raise ValueError(f"Expected world_size >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"Expected 0 <= rank < world_size={world_size}, got rank {rank}")
    if epoch < 0:
        raise ValueError(f"Expected epoch >= 0, got {epoch}")
    if size < world_size:
        raise ValueError(f"{size} samples cannot give each of {world_size} ranks one")


def epoch_permutation(size: int, epoch: int, seed: int) -> np.ndarray:
    """The shuffled order of ``range(size)`` in epoch ``epoch``: a function of (seed, epoch) only.

    Args:
        size: number of samples.
        epoch: the epoch (0, 1, ...).
        seed: the run's seed.

    Returns:
        Array of shape (size,), int64.
    """
    return np.random.default_rng([seed, epoch]).permutation(size).astype(np.int64)


def rank_share(
    size: int, rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 0, shuffle: bool = True
) -> np.ndarray:
    """This rank's sample indices for one epoch.

    Args:
        size: number of samples of the data source.
        rank: this process's rank.
        world_size: number of processes.
        epoch: the epoch, which changes the shuffle.
        seed: the run's seed (the same on every rank).
        shuffle: False keeps the source order (every epoch the same).

    Returns:
        Array of shape (size // world_size,), int64, indices into the source.

    Raises:
        ValueError: ``rank`` outside ``[0, world_size)``, ``world_size < 1``, a negative
            epoch, or fewer samples than ranks.
    """
    _check(size, rank, world_size, epoch)
    order = epoch_permutation(size, epoch, seed) if shuffle else np.arange(size, dtype=np.int64)
    per_rank = size // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


class RankSampler(Sampler[int]):
    """A sampler yielding :func:`rank_share`; call :meth:`set_epoch` before each epoch.

    Args:
        size: number of samples of the dataset.
        rank: this process's rank (default: ``torch.distributed``'s, else 0).
        world_size: number of processes (default: ``torch.distributed``'s, else 1).
        seed: the run's seed.
        shuffle: shuffle each epoch.
    """

    def __init__(
        self, size: int, rank: int | None = None, world_size: int | None = None, seed: int = 0, shuffle: bool = True
    ) -> None:
        if rank is None or world_size is None:
            import torch.distributed as dist

            running = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if running else 0) if rank is None else rank
            world_size = (dist.get_world_size() if running else 1) if world_size is None else world_size
        _check(size, rank, world_size, 0)
        self.size, self.rank, self.world_size, self.seed, self.shuffle = size, rank, world_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` from now on."""
        _check(self.size, self.rank, self.world_size, epoch)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(rank_share(self.size, self.rank, self.world_size, self.epoch, self.seed, self.shuffle).tolist())

    def __len__(self) -> int:
        return self.size // self.world_size
