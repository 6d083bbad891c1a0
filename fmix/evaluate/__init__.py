"""Evaluation: verification metrics and InsightFace verification sets (DESIGN 6)."""

from fmix.evaluate.insightface_bin import (
    RestrictedUnpickler,
    VerificationBin,
    decode_image,
    read_insightface_bin,
    restricted_load,
)
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
    "RestrictedUnpickler",
    "VerificationBin",
    "accuracy_at",
    "best_threshold",
    "candidate_thresholds",
    "cosine_scores",
    "decode_image",
    "paired_fold_difference",
    "read_insightface_bin",
    "restricted_load",
    "roc_auc",
    "tar_at_far",
    "verification_metrics",
]
