"""Loading aligned faces into tensors."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np

from fmix.data.images import ImageReadError, read_rgb


def read_face_list(csv_path: str | Path) -> list[tuple[str, str]]:
    """Read a split CSV (``path``, ``identity``, ...) written by ``fmix split``.

    Args:
        csv_path: e.g. ``splits/public.csv``.

    Returns:
        (relative path, identity) rows in file order.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"face list not found: {csv_path}")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"path", "identity"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} must have 'path' and 'identity' columns, got {reader.fieldnames}")
        return [(row["path"], row["identity"]) for row in reader]


def load_faces(
    paths: list[Path], size: int | None = None, aligner: Callable[[np.ndarray], np.ndarray | None] | None = None
) -> tuple[np.ndarray, list[int], list[tuple[int, str, str]]]:
    """Decode aligned faces into one uint8 batch, reporting the files that cannot be used.

    Args:
        paths: face image files.
        size: required side of the square faces (None: the first good face's size).
        aligner: for raw photos, photo -> aligned face or None when no face is found
            (e.g. :class:`fmix.data.align.PhotoAligner`).

    Returns:
        (batch of shape (N, H, W, 3) uint8, indices into ``paths`` of the loaded faces,
        (index, status, message) of each skipped file).
    """
    faces, loaded, skipped = [], [], []
    for index, path in enumerate(paths):
        try:
            rgb = read_rgb(path)
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
            skipped.append((index, "wrong_size", f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, expected an aligned {expected}x{expected} face (use --align for photos)"))
            continue
        faces.append(rgb)
        loaded.append(index)
    batch = np.stack(faces) if faces else np.zeros((0, size or 0, size or 0, 3), np.uint8)
    return batch, loaded, skipped
