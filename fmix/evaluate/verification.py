"""Face verification metrics (docs/design.md §6): k-fold accuracy, TAR at fixed FAR, ROC AUC.

A pair is predicted "same identity" when its score is *strictly above* the threshold. Candidate
thresholds are the midpoints between consecutive distinct scores, the smallest score minus 1
and the largest score, so every distinct split of the sorted scores is tried once; ties
in accuracy go to the smallest threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor

FARS = {"tar_at_far_1e-3": 1e-3, "tar_at_far_1e-4": 1e-4}


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(f"Expected {name} to be an array or a tensor, got {type(x).__name__}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"Expected {name} of shape (N,), got {x.shape}")
    return x


def _check_inputs(scores: object, same: object, folds: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, same, folds = _to_numpy(scores, "scores"), _to_numpy(same, "same"), _to_numpy(folds, "folds")
    if not len(scores) == len(same) == len(folds):
        raise ValueError(
            f"Expected scores, same and folds of one length, got {len(scores)}, {len(same)} and {len(folds)}"
        )
    if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(scores.dtype, np.integer):
        raise TypeError(f"Expected real scores, got dtype {scores.dtype}")
    if same.dtype != np.bool_:
        raise TypeError(f"Expected same with a bool dtype, got {same.dtype}")
    if not np.issubdtype(folds.dtype, np.integer):
        raise TypeError(f"Expected folds with an integer dtype, got {folds.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("Expected finite scores, got NaN or infinity")
    if not same.any():
        raise ValueError("Expected at least one positive (same identity) pair, got none")
    if same.all():
        raise ValueError("Expected at least one negative (different identities) pair, got none")
    if len(np.unique(folds)) < 2:
        raise ValueError(f"Expected at least 2 folds, got {len(np.unique(folds))}")
    return scores, same, folds


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Thresholds that realise every distinct split of ``scores`` (rule: same iff score > t).

    Args:
        scores: pair scores, (N,), N >= 1.

    Returns:
        Increasing thresholds: the smallest score minus 1 (accept all), the midpoints between
        consecutive distinct scores, and the largest score (reject all).
    """
    unique = np.unique(scores)
    return np.concatenate([[unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2.0, [unique[-1]]])


def accuracy_at(scores: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of "same iff score > t" for each threshold ``t``.

    Args:
        scores: (N,) pair scores.
        same: (N,) bool, True for same-identity pairs.
        thresholds: (T,) thresholds.

    Returns:
        (T,) accuracies in [0, 1].
    """
    positives, negatives = np.sort(scores[same]), np.sort(scores[~same])
    accepted_positives = len(positives) - np.searchsorted(positives, thresholds, side="right")
    rejected_negatives = np.searchsorted(negatives, thresholds, side="right")
    return (accepted_positives + rejected_negatives) / len(scores)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold of highest accuracy (smallest such threshold on ties).

    Args:
        scores: (N,) pair scores.
        same: (N,) bool.

    Returns:
        ``(threshold, accuracy)``.
    """
    thresholds = candidate_thresholds(scores)
    accuracies = accuracy_at(scores, same, thresholds)
    best = int(np.argmax(accuracies))
    return float(thresholds[best]), float(accuracies[best])


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> float | None:
    """True accept rate at a false accept rate, over all pairs.

    The threshold is the ``(n + 1)``-th highest negative score with ``n = floor(far * N_neg)``,
    so at most ``n`` negatives score above it. A FAR below ``1 / N_neg`` cannot be measured.

    Args:
        scores: (N,) pair scores.
        same: (N,) bool.
        far: the false accept rate, in (0, 1].

    Returns:
        The fraction of positives scoring above the threshold, or None if ``far < 1 / N_neg``.
    """
    negatives = np.sort(scores[~same])[::-1]
    allowed = int(np.floor(far * len(negatives) + 1e-9))  # 1e-9: far * N exactly integral
    if allowed < 1:
        return None
    if allowed >= len(negatives):
        return 1.0
    return float(np.mean(scores[same] > negatives[allowed]))


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U); tied scores count one half.

    Args:
        scores: (N,) pair scores.
        same: (N,) bool, with at least one True and one False.

    Returns:
        AUC in [0, 1].
    """
    ranks = rankdata(scores, method="average")
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def verification_metrics(
    scores: np.ndarray | Tensor, same: np.ndarray | Tensor, folds: np.ndarray | Tensor
) -> dict[str, Any]:
    """Verification accuracy over folds, TAR at FAR 1e-3 and 1e-4, ROC AUC.

    Each fold's threshold maximises accuracy on the *other* folds and is scored on that fold
    (the LFW protocol with 10 folds; here as many folds as ``folds`` holds). The standard
    deviation is the population one (ddof=0), as in the LFW/insightface evaluations.

    Args:
        scores: similarity of each pair (higher = more alike).
        same: True for same-identity pairs.
        folds: fold id of each pair, at least 2 distinct ids.

    Shape:
        - scores, same, folds: :math:`(N,)`.

    Returns:
        A dict: ``accuracy_mean``, ``accuracy_std``, ``fold_accuracies`` and
        ``fold_thresholds`` (lists in increasing fold id), ``best_threshold`` and
        ``best_accuracy`` (over all pairs), ``tar_at_far_1e-3``, ``tar_at_far_1e-4`` (None
        when not measurable), ``min_measurable_far`` (``1 / num_negative``), ``auc``,
        ``num_positive``, ``num_negative``.
    """
    scores, same, folds = _check_inputs(scores, same, folds)
    fold_ids = np.unique(folds)
    fold_accuracies, fold_thresholds = [], []
    for fold in fold_ids:
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], same[~test])
        fold_thresholds.append(threshold)
        fold_accuracies.append(float(accuracy_at(scores[test], same[test], np.array([threshold]))[0]))
    threshold, accuracy = best_threshold(scores, same)
    num_negative = int((~same).sum())
    metrics: dict[str, Any] = {
        "accuracy_mean": float(np.mean(fold_accuracies)),
        "accuracy_std": float(np.std(fold_accuracies)),
        "fold_accuracies": fold_accuracies,
        "fold_thresholds": fold_thresholds,
        "best_threshold": threshold,
        "best_accuracy": accuracy,
    }
    for key, far in FARS.items():
        metrics[key] = tar_at_far(scores, same, far)
    metrics.update(
        min_measurable_far=1.0 / num_negative,
        auc=roc_auc(scores, same),
        num_positive=int(same.sum()),
        num_negative=num_negative,
    )
    return metrics


def cosine_scores(emb_a: Tensor, emb_b: Tensor) -> Tensor:
    """Cosine similarity of paired embeddings.

    Args:
        emb_a: embeddings of the first image of each pair.
        emb_b: embeddings of the second image.

    Shape:
        - emb_a, emb_b: :math:`(N, E)`.
        - Output: :math:`(N,)`, float32 (float64 for float64 inputs).

    Returns:
        ``<a / |a|, b / |b|>`` per pair.
    """
    for emb, name in ((emb_a, "emb_a"), (emb_b, "emb_b")):
        if not isinstance(emb, Tensor):
            raise TypeError(f"Expected {name} to be a torch.Tensor, got {type(emb).__name__}")
        if not emb.is_floating_point():
            raise TypeError(f"Expected {name} with a floating dtype, got {emb.dtype}")
    if emb_a.dim() != 2 or emb_a.shape != emb_b.shape:
        raise ValueError(
            f"Expected emb_a and emb_b of one shape (N, E), got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (emb_a.dtype, emb_b.dtype) else torch.float32
    a = F.normalize(emb_a.to(dtype), dim=1)
    b = F.normalize(emb_b.to(device=emb_a.device, dtype=dtype), dim=1)
    return (a * b).sum(1)


def paired_fold_difference(fold_accuracies_a: list[float], fold_accuracies_b: list[float]) -> dict[str, float]:
    """Paired comparison of two models on the same verification folds (a minus b).

    The folds hold the same pairs for both models, so the per-fold differences cancel the
    folds' own difficulty; the fold spread of either model alone overstates the noise.

    Args:
        fold_accuracies_a: accuracy of model a per fold.
        fold_accuracies_b: accuracy of model b on the same folds, in the same order.

    Returns:
        ``mean`` and ``std`` (ddof=1) of the per-fold differences, their standard error
        ``sem``, ``t`` = mean / sem (inf when every fold differs by the same nonzero amount),
        and ``wins``: the folds where a is better.
    """
    a, b = np.asarray(fold_accuracies_a, dtype=np.float64), np.asarray(fold_accuracies_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"Expected two equal-length lists of at least 2 fold accuracies, got {len(a)} and {len(b)}")
    diff = a - b
    std = float(diff.std(ddof=1))
    sem = std / np.sqrt(len(diff))
    mean = float(diff.mean())
    t = mean / sem if sem > 0 else (0.0 if mean == 0 else float(np.copysign(np.inf, mean)))
    return {
        "mean": mean,
        "std": std,
        "sem": float(sem),
        "t": float(t),
        "wins": int((diff > 0).sum()),
        "folds": len(diff),
    }
