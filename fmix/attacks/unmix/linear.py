"""The linear algebra of un-mixing: the mixing system of a shard, least squares, the decorrelation score."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def solve(system: Tensor, samples: Tensor) -> Tensor:
    """Least-squares (minimum-norm) masked faces ``m`` with ``system @ m = samples``, flattened per face."""
    flat = samples.reshape(samples.shape[0], -1).double()
    solution = torch.linalg.pinv(system.double()) @ flat  # small pseudo-inverse, then one matmul
    return solution.float().reshape(system.shape[1], *samples.shape[1:])


def mix_system(weights: list[list[float]], partners: list[list[int]], norms: np.ndarray) -> np.ndarray:
    batch = len(weights)
    system = np.zeros((batch, batch))
    for row, row_weights in enumerate(weights):
        for column, weight in zip([row] + partners[row], row_weights):
            system[row, column] += weight / norms[row]
    return system


def decorrelation(gram: np.ndarray) -> float | np.ndarray:
    """Sum of squared cosines between different estimated faces (0 for orthogonal faces).

    Shape:
        - gram: :math:`(..., B, B)`, one Gram matrix or a stack of them.
        - Output: a float, or :math:`(...)` for a stack.
    """
    diagonal = np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 1e-12)
    root = np.sqrt(diagonal)
    cosines = gram / (root[..., :, None] * root[..., None, :])
    scores = np.square(cosines).sum(axis=(-2, -1)) - np.square(np.diagonal(cosines, axis1=-2, axis2=-1)).sum(axis=-1)
    return float(scores) if gram.ndim == 2 else scores


def solve_linked(system: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``system^-1 samples`` (least squares where the system is singular)."""
    try:
        return np.linalg.solve(system, samples)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(system, samples, rcond=None)[0]


def link_system(weights: list[list[float]], partners: list[list[int]], norms: np.ndarray) -> np.ndarray:
    """``W`` with row ``b`` the anchor's weight at ``b`` and the partners' at theirs; a row without partners is the sample itself."""
    batch = len(weights)
    system = np.zeros((batch, batch))
    for row, (row_weights, row_partners) in enumerate(zip(weights, partners)):
        if not row_partners:
            system[row, row] = 1.0
            continue
        for column, weight in zip([row] + list(row_partners), row_weights):
            system[row, column] += weight / norms[row]
    return system
