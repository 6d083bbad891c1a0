"""Statistics of a k policy: the k histogram, k against per-sample difficulty, and their mutual information.

What ``train_log.jsonl`` and the report show about the k a method drew (:mod:`fmix.train.trainer`,
:mod:`fmix.pipeline.report`) and what the adaptive game tallies per policy step
(:mod:`fmix.methods.adaptive_game`).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor


def k_histogram(ks: list[int] | Counter | dict[int, int], k_values: tuple[int, ...]) -> dict[str, float]:
    """Fraction of samples per k, every k of the policy listed.

    Args:
        ks: the k of each sample, or counts per k.
        k_values: the histogram's columns.
    """
    counts = Counter(ks)
    total = sum(counts.values()) or 1
    return {str(k): counts.get(k, 0) / total for k in k_values}


def difficulty_table(difficulty: Tensor, k: Tensor, k_values: tuple[int, ...], bins: int) -> list[list[int]]:
    """Counts of each k per difficulty quantile of the batch (row 0: the easiest samples).

    Args:
        difficulty: per-sample difficulty, e.g. the frozen FR network's loss on the un-mixed anchor.
        k: the k drawn for each sample, each in ``k_values``.
        k_values: the policy's actions (the table's columns).
        bins: number of quantile bins (rows).

    Shape:
        - difficulty, k: :math:`(B,)`.

    Returns:
        A ``bins`` x ``len(k_values)`` table of counts.
    """
    if difficulty.shape != k.shape or difficulty.dim() != 1:
        raise ValueError(
            f"Expected difficulty and k of one shape (B,), got {tuple(difficulty.shape)} and {tuple(k.shape)}"
        )
    if bins < 1:
        raise ValueError(f"Expected bins >= 1, got {bins}")
    rank = difficulty.detach().cpu().argsort().argsort()
    row = rank * bins // max(1, len(rank))
    column = torch.searchsorted(torch.tensor(k_values), k.detach().cpu())
    table = torch.zeros(bins, len(k_values), dtype=torch.long)
    table.index_put_((row, column), torch.ones_like(row), accumulate=True)
    return table.tolist()


def mutual_information(table: list[list[int]]) -> float:
    """Mutual information (bits) between the rows and columns of a contingency table.

    Args:
        table: counts, rows x columns (e.g. :func:`difficulty_table` summed over an epoch).

    Returns:
        ``sum p(r, c) log2(p(r, c) / (p(r) p(c)))``; 0 for an empty table.
    """
    counts = torch.tensor(table, dtype=torch.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    joint = counts / total
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nonzero = joint > 0
    return float((joint[nonzero] * torch.log2(joint[nonzero] / outer[nonzero])).sum())
