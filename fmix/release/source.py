"""A release of ``fmix mask`` as a face source: protected samples with their published soft labels.

Items are ``(sample, labels, weights)`` (:class:`fmix.data.sources.SoftLabelBatch` per batch), read
by :func:`fmix.data.sources.face_loader` like any other source.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.data.sources import FaceSource
from fmix.release.folder import read_release_folder, shard_path


class ReleaseSource(FaceSource):
    """A release of ``fmix mask``: protected samples with their published soft labels.

    Shards are memory-mapped when first read (at most ``open_shards`` of them per process at a
    time), so a release larger than memory streams; every sample read is checked finite.

    Args:
        folder: the release folder (``run.json``, ``index.csv``, ``shard-NNNNN.npy``).
        k_max: pad the soft labels to this many columns (default: the largest k of the index).
        open_shards: shards kept mapped per process.

    Raises:
        FileNotFoundError, ValueError: as :func:`fmix.release.folder.read_release_folder`; a
            ``k_max`` below a sample's k.
    """

    kind = "release"

    def __init__(self, folder: str | Path, k_max: int | None = None, open_shards: int = 8) -> None:
        self.release = read_release_folder(folder)
        rows = self.release.rows
        widest = max(len(row.labels) for row in rows)
        self.k_max = widest if k_max is None else int(k_max)
        if self.k_max < widest:
            raise ValueError(
                f"k_max={self.k_max} is below the largest k of {self.release.path / 'index.csv'} ({widest})"
            )
        self.shards = np.array([row.shard for row in rows], dtype=np.int64)
        self.rows = np.array([row.row for row in rows], dtype=np.int64)
        labels = np.full((len(rows), self.k_max), -1, dtype=np.int64)
        weights = np.zeros((len(rows), self.k_max), dtype=np.float32)
        for i, row in enumerate(rows):
            labels[i, : len(row.labels)] = row.labels
            weights[i, : len(row.weights)] = row.weights
        self.labels, self.weights = torch.from_numpy(labels), torch.from_numpy(weights)
        self.num_classes = int(labels.max()) + 1
        self.names = [row.name for row in rows]
        shards, counts = np.unique(self.shards, return_counts=True)
        self._rows_per_shard = dict(zip(shards.tolist(), counts.tolist()))
        self.open_shards = max(1, int(open_shards))
        self._mapped: OrderedDict[int, np.ndarray] = OrderedDict()
        self.sample_shape = tuple(self._shard(int(self.shards[0])).shape[1:])

    @property
    def run(self) -> dict:
        """The release's ``run.json``."""
        return self.release.run

    def summary(self) -> dict:
        """The release's ``summary.json`` (empty when it has none)."""
        path = self.release.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:  # to spawned workers without the mappings
        return {**self.__dict__, "_mapped": OrderedDict()}

    def _shard(self, shard: int) -> np.ndarray:
        mapped = self._mapped.get(shard)
        if mapped is not None:
            self._mapped.move_to_end(shard)
            return mapped
        path = shard_path(self.release.path, shard, "npy")
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a shard of `fmix mask`: {err}") from err
        rows = self._rows_per_shard[shard]
        if mapped.ndim != 4 or mapped.shape[0] < rows or not np.issubdtype(mapped.dtype, np.floating):
            raise ValueError(
                f"{path}: holds samples of shape {mapped.shape} ({mapped.dtype}), index.csv lists {rows} rows of (K, h, w) floats"
            )
        if hasattr(self, "sample_shape") and tuple(mapped.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"{path}: holds samples of shape {tuple(mapped.shape[1:])}, the release's first shard {self.sample_shape}"
            )
        self._mapped[shard] = mapped
        while len(self._mapped) > self.open_shards:
            self._mapped.popitem(last=False)
        return mapped

    def sample(self, index: int) -> Tensor:
        """Protected sample ``index`` as :math:`(K, h, w)` float32.

        Raises:
            ValueError: it holds a non-finite value.
        """
        shard, row = int(self.shards[index]), int(self.rows[index])
        sample = np.array(self._shard(shard)[row], dtype=np.float32)
        if not np.isfinite(sample).all():
            raise ValueError(f"{self.release.path}: shard {shard} row {row} holds non-finite values")
        return torch.from_numpy(sample)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.sample(index), self.labels[index], self.weights[index]
