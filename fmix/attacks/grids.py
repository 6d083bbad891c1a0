"""Image grids for the report (docs/design.md §6): original / protected visualisation / reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fmix.checks import check_float, check_int, check_tensor
from fmix.data.images import write_png_atomic


def one_per_identity(identities: list[str], count: int) -> list[int]:
    """A fixed sample for grids: the first face of each of the first ``count`` identities (sorted by name).

    Args:
        identities: identity of every face, in dataset order.
        count: number of identities wanted.

    Returns:
        Indices into ``identities`` (fewer than ``count`` if there are fewer identities).
    """
    check_int(count, "count", minimum=1)
    first: dict[str, int] = {}
    for index, name in enumerate(identities):
        first.setdefault(name, index)
    return [first[name] for name in sorted(first)[:count]]


def image_grid(rows: list[Tensor], padding: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of images into one picture.

    Args:
        rows: each a batch of RGB images in [0, 255] (floats are rounded and clamped); every
            row has the same number of images of the same size.
        padding: pixels between and around images.
        fill: grey level of the padding.

    Shape:
        - rows: each :math:`(N, 3, H, W)`.
        - Output: :math:`(R (H + p) + p, N (W + p) + p, 3)`.

    Returns:
        The grid as a uint8 array.
    """
    if not rows:
        raise ValueError("Expected at least one row of images")
    check_int(padding, "padding", minimum=0)
    shape = None
    for i, row in enumerate(rows):
        row = check_tensor(row, f"rows[{i}]")
        if row.dim() != 4 or row.shape[1] != 3 or row.shape[0] == 0:
            raise ValueError(f"Expected rows[{i}] of shape (N, 3, H, W) with N >= 1, got {tuple(row.shape)}")
        if shape is not None and row.shape != shape:
            raise ValueError(f"Expected every row of shape {tuple(shape)}, got {tuple(row.shape)} for rows[{i}]")
        shape = row.shape
    n, _, h, w = shape
    grid = torch.full((len(rows) * (h + padding) + padding, n * (w + padding) + padding, 3), fill, dtype=torch.uint8)
    for r, row in enumerate(rows):
        pixels = row.detach().cpu().float().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        for c in range(n):
            top, left = padding + r * (h + padding), padding + c * (w + padding)
            grid[top : top + h, left : left + w] = pixels[c]
    return grid.numpy()


def write_attack_grid(
    path: str | Path, originals: Tensor, protected_view: Tensor, recon: Tensor, padding: int = 2
) -> np.ndarray:
    """Write the attack grid PNG: rows original / protected visualisation / reconstruction.

    Args:
        path: the PNG file (written atomically; its folder is created).
        originals: the faces (for a mix: its heaviest constituent).
        protected_view: the protected samples seen as images
            (:func:`fmix.freq.protected_to_image`).
        recon: the attack's reconstructions.
        padding: pixels between images.

    Shape:
        - originals, protected_view, recon: :math:`(N, 3, H, W)` RGB in [0, 255].

    Returns:
        The grid written, uint8 :math:`(H', W', 3)`.
    """
    for name, value in (("originals", originals), ("protected_view", protected_view), ("recon", recon)):
        check_float(check_tensor(value, name), name)
    grid = image_grid([originals, protected_view, recon], padding)
    write_png_atomic(grid, path)
    return grid
