"""Face sources behind one interface, and the data loader that streams them to training.

A *face source* is a map-style torch dataset with a class count. Four kinds:

- :class:`MemorySource`: a :class:`~fmix.data.faces.FaceSet` already decoded into memory (the
  fast path for small sets: a batch is one indexing of the tensor, no per-item work);
- :class:`FolderSource`: an aligned image folder (``fmix align``'s or ``fmix rec export``'s output)
  and a split CSV; each face is decoded when its item is asked for (in the loader's workers);
- :class:`PackSource`: an InsightFace RecordIO face pack (``train.rec``/``train.idx``/``property``,
  :class:`~fmix.data.recordio.FacePack`), each record read and decoded per item;
- :class:`fmix.release.source.ReleaseSource` (in the release layer): a release of ``fmix mask``;
  an item is a protected sample with its published soft label.

Items and batches:

- the face sources give ``(image, label)``: image :math:`(3, H, W)` uint8 RGB, label an int64
  scalar (-1 for a face without one); a batch is a :class:`FaceBatch` of :math:`(B, 3, H, W)` uint8
  and :math:`(B,)` int64 (uint8 moves 4x fewer bytes from the workers than float32;
  :meth:`FaceBatch.float_images` gives the float faces in [0, 255] that the encoders read);
- a release gives ``(sample, labels, weights)``: :math:`(K, h, w)` float32,
  :math:`(k_{max},)` int64 and float32: the sample's published labels and their weights (as
  ``index.csv`` has them, rounded by ``fmix mask``), padded to ``k_max`` with label -1 and weight 0;
  a batch is a :class:`SoftLabelBatch`.

:func:`face_loader` builds the ``DataLoader``: each epoch's order is a function of the run's seed
and the epoch (:func:`fmix.data.sampling.rank_share`: every rank of a DDP run reads a disjoint,
equal share, their union is the epoch), batches are full (the incomplete last one is dropped, as
the trainer's own schedule does), and a run resumed inside an epoch starts at a given batch
without reading the batches before it. Memory is bounded by the batches in flight: at most
``workers * prefetch`` batches (one batch without workers) besides the one being trained on; the
streamed sources hold only their index (paths, record offsets, sample rows) in memory.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fmix.data.sampling import RankSampler


class FaceBatch(NamedTuple):
    """A batch of a face source.

    Attributes:
        images: :math:`(B, 3, H, W)` uint8 RGB.
        labels: :math:`(B,)` int64 (-1: no label).
    """

    images: Tensor
    labels: Tensor

    def float_images(self) -> Tensor:
        """The faces as :math:`(B, 3, H, W)` float32 in [0, 255] (what the input encoders read)."""
        return self.images.float()


class SoftLabelBatch(NamedTuple):
    """A batch of a release: protected samples and their published soft labels.

    Attributes:
        samples: :math:`(B, K, h, w)` float32, the protected samples as released.
        labels: :math:`(B, k_{max})` int64, each sample's published labels, -1 past its k.
        weights: :math:`(B, k_{max})` float32, their published weights, 0 past its k.
    """

    samples: Tensor
    labels: Tensor
    weights: Tensor


def collate_faces(items: Sequence | FaceBatch | SoftLabelBatch) -> FaceBatch | SoftLabelBatch:
    """Stack items of a source into its batch type (a batch a source made itself passes as it is).

    Args:
        items: ``(image, label)`` or ``(sample, labels, weights)`` tuples, or a whole batch (a
            source's ``__getitems__``).

    Returns:
        A :class:`FaceBatch` or :class:`SoftLabelBatch`.
    """
    if isinstance(items, (FaceBatch, SoftLabelBatch)):
        return items
    first = items[0]
    if len(first) == 3:
        return SoftLabelBatch(
            torch.stack([item[0] for item in items]),
            torch.stack([item[1] for item in items]),
            torch.stack([item[2] for item in items]),
        )
    return FaceBatch(
        torch.stack([item[0] for item in items]), torch.tensor([int(item[1]) for item in items], dtype=torch.long)
    )


class FaceSource(Dataset):
    """What every source has: a length, items, a class count and a kind.

    Attributes:
        kind: ``"memory"``, ``"folder"``, ``"pack"`` or ``"release"``.
        num_classes: training classes (labels lie in ``[0, num_classes)``).
    """

    kind = ""
    num_classes = 0

    def __len__(self) -> int:  # pragma: no cover - every source defines it
        raise NotImplementedError

    def describe(self) -> dict:
        """``{"kind", "items", "classes"}`` for logs and summaries."""
        return {"kind": self.kind, "items": len(self), "classes": self.num_classes}


def _num_classes(labels: Sequence[int]) -> int:
    known = [label for label in labels if label >= 0]
    return max(known) + 1 if known else 0


def _chw(face: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1)))


class MemorySource(FaceSource):
    """Faces decoded into memory (:class:`~fmix.data.faces.FaceSet`): a batch is one indexing.

    Args:
        faces: the face set (``images`` :math:`(N, H, W, 3)` uint8).
    """

    kind = "memory"

    def __init__(self, faces) -> None:
        self.faces = faces
        self.num_classes = int(faces.labels.max()) + 1 if len(faces) and int(faces.labels.max()) >= 0 else 0

    @classmethod
    def from_csv(cls, aligned: str | Path, csv_path: str | Path) -> "MemorySource":
        """Decode every face of a split CSV (:func:`fmix.data.faces.load_face_set`)."""
        from fmix.data.faces import load_face_set

        return cls(load_face_set(aligned, csv_path))

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return tuple(self.faces.images.shape[1:3])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.faces.images[index].permute(2, 0, 1).contiguous(), int(self.faces.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> FaceBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.faces.images.index_select(
            0, index
        )  # twice as fast as images[index] on uint8 (benchmarks/bench_loader.py)
        return FaceBatch(images.permute(0, 3, 1, 2).contiguous(), self.faces.labels.index_select(0, index))


# How loader workers start: a fork of a process that already runs threads (ONNX Runtime's, a BLAS pool)
# can inherit a held lock and hang, so workers fork from a clean server process instead.
WORKER_CONTEXT = "forkserver"


def read_faces(source: FaceSource, indices: Sequence[int]) -> FaceBatch:
    """Faces ``indices`` of a source as one batch, read in this process (one indexing for the in-memory source).

    Args:
        source: a face source (items ``(image, label)``).
        indices: the items to read.

    Returns:
        A :class:`FaceBatch`.
    """
    getitems = getattr(source, "__getitems__", None)
    return collate_faces(getitems(list(indices)) if getitems else [source[i] for i in indices])


def read_split_rows(csv_path: str | Path) -> list[tuple[str, int]]:
    """(path, label) rows of a split CSV (``path``, ``identity``[, ``label``]); -1 without a label column.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``path`` column, no row, an absolute path or one with ``..``, a label that is not an integer.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"split file not found: {csv_path} (run `fmix split` first)")
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path} must have a 'path' column, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            path, label = row["path"], row.get("label")
            if not path or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
                raise ValueError(
                    f"{csv_path} line {line}: path {path!r} must be relative to the faces folder, without '..'"
                )
            try:
                rows.append((path, int(label) if label not in (None, "") else -1))
            except ValueError:
                raise ValueError(f"{csv_path} line {line}: label {label!r} is not an integer") from None
    if not rows:
        raise ValueError(f"{csv_path} lists no faces")
    return rows


class FolderSource(FaceSource):
    """An aligned image folder and a split CSV; each face is decoded when its item is read.

    Args:
        aligned: the folder (``fmix align``'s or ``fmix rec export``'s output).
        csv_path: the split CSV (``path``, ``identity``, ``label``), e.g. ``private_train.csv`` (None with ``rows``).
        size: side of the square faces (None: the first face's side, read once here).
        rows: ``(path, label)`` pairs instead of a CSV's (:meth:`of_folder`).

    Raises:
        ValueError: at an item, a face that cannot be read or has another size (naming the file).
    """

    kind = "folder"

    def __init__(
        self, aligned: str | Path, csv_path: str | Path | None, size: int | None = None, rows: list | None = None
    ) -> None:
        self.root = Path(aligned)
        if not self.root.is_dir():
            raise FileNotFoundError(f"aligned folder not found: {self.root}")
        rows = read_split_rows(csv_path) if rows is None else rows
        self.paths = [path for path, _ in rows]
        self.labels = torch.tensor([label for _, label in rows], dtype=torch.long)
        self.num_classes = _num_classes(self.labels.tolist())
        self.size = size if size is not None else self._read(0).shape[0]

    @classmethod
    def of_folder(cls, aligned: str | Path) -> "FolderSource":
        """Every face of an aligned folder (``ROOT/<identity>/<image>``), without a split: one label per identity folder.

        Raises:
            FileNotFoundError: no such folder.
            ValueError: no identity folder with files in it.
        """
        from fmix.data.images import list_identity_folders

        root = Path(aligned)
        folders = list_identity_folders(root)
        rows = [
            (path.relative_to(root).as_posix(), label) for label, files in enumerate(folders.values()) for path in files
        ]
        return cls(root, None, rows=rows)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.size, self.size

    def _read(self, index: int) -> np.ndarray:
        from fmix.data.images import ImageReadError, read_rgb

        path = self.root / self.paths[index]
        try:
            return read_rgb(path)
        except ImageReadError as err:
            raise ValueError(f"face {index} of the split cannot be read: {err}") from err

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        face = self._read(index)
        if face.shape[:2] != (self.size, self.size):
            raise ValueError(
                f"{self.root / self.paths[index]} is {face.shape[1]}x{face.shape[0]}, expected an aligned {self.size}x{self.size} face"
            )
        return _chw(face), int(self.labels[index])


class PackSource(FaceSource):
    """An InsightFace face pack; each record is read (``os.pread``) and decoded when its item is read.

    The pack's reader opens its file once per process, so the source goes to forked or spawned
    loader workers as it is. Labels are the records' class labels; the class count is the
    ``property`` file's.

    Args:
        pack: the pack's folder, or a :class:`~fmix.data.recordio.FacePack`.
        keys: the image keys to serve (default: all of them).
    """

    kind = "pack"

    def __init__(self, pack, keys: Sequence[int] | None = None) -> None:
        from fmix.data.recordio import FacePack

        self.pack = pack if isinstance(pack, FacePack) else FacePack(pack)
        self.keys = self.pack.image_keys if keys is None else list(keys)
        self.num_classes = self.pack.num_classes

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) from ``property``."""
        return self.pack.image_size

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        face, label = self.pack.item(self.keys[index])
        return _chw(face), int(label)


def open_source(kind: str, path: str | Path, csv_path: str | Path | None = None, **options) -> FaceSource:
    """A face source by kind: ``memory`` or ``folder`` (``path`` = aligned folder, ``csv_path`` = split CSV)
    or ``pack`` (``path`` = the pack's folder). A release is read by :class:`fmix.release.source.ReleaseSource`.

    Raises:
        ValueError: an unknown kind, or a folder/memory source without its CSV.
    """
    if kind in ("memory", "folder"):
        if csv_path is None:
            raise ValueError(f"a {kind} source needs the split CSV of its faces")
        return MemorySource.from_csv(path, csv_path) if kind == "memory" else FolderSource(path, csv_path, **options)
    if kind == "pack":
        return PackSource(path, **options)
    raise ValueError(f"unknown face source {kind!r}; known: memory, folder, pack")


class RankBatchSampler(Sampler[list[int]]):
    """Full batches of this rank's share of each epoch (:class:`~fmix.data.sampling.RankSampler`).

    Call :meth:`set_epoch` before each epoch; ``start_batch`` skips the batches a resumed run
    already trained on, without reading them.

    Args:
        size: items of the source.
        batch_size: items per batch on each rank.
        rank: this process's rank (default: ``torch.distributed``'s, else 0).
        world_size: processes (default: ``torch.distributed``'s, else 1).
        seed: the run's seed.
        shuffle: shuffle each epoch (False: source order).
        drop_last: drop the incomplete last batch (the default: every step has a full batch).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1, got {batch_size}")
        self.sampler = RankSampler(size, rank, world_size, seed, shuffle)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.start_batch = 0

    @property
    def rank(self) -> int:
        return self.sampler.rank

    @property
    def world_size(self) -> int:
        return self.sampler.world_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this rank (the same on every rank)."""
        share = len(self.sampler)
        return share // self.batch_size if self.drop_last else math.ceil(share / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use the order of ``epoch`` and start at its batch ``start_batch``."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"Expected 0 <= start_batch <= {self.batches_per_epoch}, got {start_batch}")
        self.sampler.set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        share = list(self.sampler)
        for number in range(self.start_batch, self.batches_per_epoch):
            yield share[number * self.batch_size : (number + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def face_loader(
    source: FaceSource,
    batch_size: int,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    prefetch: int = 2,
    pin_memory: bool = False,
    context: str = WORKER_CONTEXT,
) -> DataLoader:
    """The ``DataLoader`` of a source: this rank's full batches, shuffled per epoch from the seed.

    Before each epoch call ``loader.batch_sampler.set_epoch(epoch, start_batch)`` (or use
    :func:`epoch_batches`). Workers stay up between epochs; the in-memory source batches by one
    indexing in the main process whatever ``workers`` says (its faces are already decoded).

    Args:
        source: the face source.
        batch_size: items per batch on each rank.
        seed: the run's seed: the order of each epoch is a function of (seed, epoch).
        rank: this process's rank (default: ``torch.distributed``'s, else 0).
        world_size: processes (default: ``torch.distributed``'s, else 1).
        workers: loader worker processes that read and decode items (0: in this process).
        shuffle: shuffle each epoch.
        drop_last: drop each epoch's incomplete last batch.
        prefetch: batches each worker reads ahead: at most ``workers * prefetch`` batches in flight.
        pin_memory: pin batches in page-locked memory (CUDA training).
        context: how workers start: ``"forkserver"`` (the default, :data:`WORKER_CONTEXT`), ``"spawn"``
            or ``"fork"``. Every source pickles without open files or mappings, so all three work.

    Returns:
        A ``DataLoader`` yielding :class:`FaceBatch` (or :class:`SoftLabelBatch` for a release),
        whose ``batch_sampler`` is a :class:`RankBatchSampler`.
    """
    if workers < 0:
        raise ValueError(f"Expected workers >= 0, got {workers}")
    sampler = RankBatchSampler(len(source), batch_size, rank, world_size, seed, shuffle, drop_last)
    workers = 0 if isinstance(source, MemorySource) else workers
    options = (
        dict(prefetch_factor=prefetch, persistent_workers=True, multiprocessing_context=context) if workers else {}
    )
    return DataLoader(
        source, batch_sampler=sampler, num_workers=workers, collate_fn=collate_faces, pin_memory=pin_memory, **options
    )


def epoch_batches(loader: DataLoader, epoch: int, start_batch: int = 0) -> Iterator[FaceBatch | SoftLabelBatch]:
    """Iterate the batches of ``epoch`` from ``start_batch`` (sets the loader's epoch first)."""
    loader.batch_sampler.set_epoch(epoch, start_batch)
    return iter(loader)
