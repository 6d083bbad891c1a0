"""Loading aligned faces into arrays, and face sets (split CSVs) into memory."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from fmix.data.images import ImageReadError, read_rgb


def read_face_list(csv_path: str | Path) -> list[tuple[str, str]]:
    """Read a split CSV (``path``, ``identity``, ...) written by ``fmix split``.

    Args:
        csv_path: e.g. ``splits/public.csv``.

    Returns:
        (relative path, identity) rows in file order.

    Raises:
        ValueError: the file is not UTF-8 CSV with ``path`` and ``identity`` columns, a row lacks
            one, or a path is absolute or climbs out of its folder (``..``).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"face list not found: {csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"path", "identity"} <= set(reader.fieldnames):
                raise ValueError(f"{csv_path} must have 'path' and 'identity' columns, got {reader.fieldnames}")
            rows = [(row["path"], row["identity"], reader.line_num) for row in reader]
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path} is not UTF-8 text: {err}") from err
    for path, identity, line in rows:
        if not path or not identity:
            raise ValueError(f"{csv_path} line {line}: a row needs both a path and an identity")
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise ValueError(
                f"{csv_path} line {line}: path {path!r} must be relative to the faces folder, without '..'"
            )
    return [(path, identity) for path, identity, _ in rows]


def load_faces(
    paths: list[Path],
    size: int | None = None,
    aligner: Callable[[np.ndarray], np.ndarray | None] | None = None,
    reader: Callable[[Path], np.ndarray] = read_rgb,
) -> tuple[np.ndarray, list[int], list[tuple[int, str, str]]]:
    """Decode aligned faces into one uint8 batch, reporting the files that cannot be used.

    Args:
        paths: face image files.
        size: required side of the square faces (None: the first good face's size).
        aligner: for raw photos, photo -> aligned face or None when no face is found
            (e.g. :class:`fmix.data.align.PhotoAligner`).
        reader: path -> RGB array, raising :class:`~fmix.data.images.ImageReadError`
            (:func:`~fmix.data.images.read_rgb`, or :func:`~fmix.data.images.read_rgb_fast`: the same arrays).

    Returns:
        (batch of shape (N, H, W, 3) uint8, indices into ``paths`` of the loaded faces,
        (index, status, message) of each skipped file).
    """
    faces, loaded, skipped = [], [], []
    for index, path in enumerate(paths):
        try:
            rgb = reader(path)
        except ImageReadError as err:
            skipped.append((index, err.status, str(err)))
            continue
        if aligner is not None:
            rgb = aligner(rgb)
            if rgb is None:
                skipped.append((index, "no_face", f"{path}: no face found"))
                continue
        expected = size or (faces[0].shape[0] if faces else rgb.shape[0])
        if rgb.shape[:2] != (expected, expected):
            skipped.append(
                (
                    index,
                    "wrong_size",
                    f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned {expected}x{expected} face (use --align for photos)",
                )
            )
            continue
        faces.append(rgb)
        loaded.append(index)
    batch = np.stack(faces) if faces else np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return batch, loaded, skipped


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

    def chw_images(self) -> Tensor:
        """Every face as (N, 3, H, W) uint8, contiguous (what the reconstruction attacks fit on)."""
        return self.images.permute(0, 3, 1, 2).contiguous()

    def float_images(self, index: Tensor) -> Tensor:
        """Faces ``index`` as (B, 3, H, W) float32 in [0, 255]."""
        return (
            self.images[index].permute(0, 3, 1, 2).float().contiguous()
        )  # channels-last strides crash CPU conv backward


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
