"""In-memory face sets and the seeded, resumable order of training batches."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.data.faces import load_faces


@dataclass
class FaceSet:
    """Aligned faces held in memory.

    ``images`` is (N, H, W, 3) uint8, ``labels`` (N,) int64 (or -1 without labels),
    ``paths`` the faces' paths relative to the aligned folder.
    """

    images: Tensor
    labels: Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def float_images(self, index: Tensor) -> Tensor:
        """Faces ``index`` as (B, 3, H, W) float32 in [0, 255]."""
        return self.images[index].permute(0, 3, 1, 2).float().contiguous()  # channels-last strides crash CPU conv backward


def load_face_set(aligned: str | Path, csv_path: str | Path) -> FaceSet:
    """Load the faces of a split CSV (columns path, identity[, label]); unreadable files fail loudly.

    Args:
        aligned: output folder of ``fmix align``.
        csv_path: e.g. ``private_train.csv``.

    Returns:
        The face set; labels from the ``label`` column, else -1.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"split file not found: {csv_path} (run `fmix split` first)")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{csv_path} lists no faces")
    paths = [row["path"] for row in rows]
    faces, loaded, skipped = load_faces([Path(aligned) / p for p in paths])
    if skipped:
        raise ValueError(f"{len(skipped)} faces of {csv_path} cannot be read, e.g. {skipped[0][2]}")
    labels = [int(row["label"]) if row.get("label") not in (None, "") else -1 for row in rows]
    return FaceSet(torch.from_numpy(np.ascontiguousarray(faces)), torch.tensor(labels, dtype=torch.long), paths)


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

