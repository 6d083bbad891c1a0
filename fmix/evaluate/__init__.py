"""Evaluation: verification metrics (docs/design.md §6); InsightFace .bin sets are read by :mod:`fmix.data.insightface_bin`."""

from fmix.evaluate.verification import (
    FARS,
    accuracy_at,
    best_threshold,
    candidate_thresholds,
    cosine_scores,
    paired_fold_difference,
    roc_auc,
    tar_at_far,
    verification_metrics,
)

__all__ = [
    "FARS",
    "accuracy_at",
    "best_threshold",
    "candidate_thresholds",
    "cosine_scores",
    "paired_fold_difference",
    "roc_auc",
    "tar_at_far",
    "verification_metrics",
]
