"""Privacy metrics: image similarity (SSIM, PSNR, best constituent, free floors) and Score_pp (docs/design.md §6)."""

from fmix.metrics.image import best_constituent_ssim, free_floor, mix_floor, psnr, ssim, ssim_separable
from fmix.metrics.privacy import PrivacyRow, score_pp

__all__ = [
    "PrivacyRow",
    "best_constituent_ssim",
    "free_floor",
    "mix_floor",
    "psnr",
    "score_pp",
    "ssim",
    "ssim_separable",
]
