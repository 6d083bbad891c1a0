"""A release as the un-mixing attacks read it: per shard, the samples and the published labels and weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fmix.release.folder import read_release_folder


@dataclass
class ReleasedShard:
    """One shard as the attacker reads it: samples, and per row the published labels and weights."""

    samples: Tensor
    labels: list[list[int]]
    weights: list[list[float]]


@dataclass
class Release:
    """A released folder: its ``run.json`` and shards."""

    folder: Path
    run: dict
    shards: dict[int, ReleasedShard]

    @property
    def recorded_seed(self) -> int | None:
        return self.run.get("randomness", {}).get("seed")


def read_release(folder: str | Path) -> Release:
    """Read a folder written by ``fmix mask`` through :func:`fmix.release.folder.read_release_folder`.

    Args:
        folder: the release (``run.json``, ``index.csv``, ``shard-*.npy``), its schema checked.

    Returns:
        The release.
    """
    folder_data = read_release_folder(folder)
    shards = {}
    for shard, rows in folder_data.shards().items():
        samples = torch.from_numpy(folder_data.load_shard(shard, len(rows)))
        shards[shard] = ReleasedShard(samples, [row.labels for row in rows], [row.weights for row in rows])
    return Release(folder_data.path, folder_data.run, shards)
