"""Turn protected frequency samples back into viewable images (docs/design.md §6, S1 / S2)."""

from __future__ import annotations

import torch
from torch import Tensor

from fmix.checks import check_float, check_tensor
from fmix.freq.dct import block_idct
from fmix.freq.masking import FrequencyMask


def protected_to_image(
    masked: Tensor,
    mask: FrequencyMask,
    upsample: int = 1,
    permutation: Tensor | None = None,
) -> Tensor:
    """Inverse transform of protected samples, with the dropped channels set to zero.

    Un-permutes (if ``permutation`` is given) and un-normalises the kept channels with
    :meth:`FrequencyMask.inverse`, fills the dropped channels (DC included) with zeros and
    applies :func:`fmix.freq.block_idct`. For ``u > 1`` it returns the least-squares image at
    the input resolution (``downsample_to_input=True``). A mixed sample is un-normalised
    correctly too (without a sign mask), since its weights sum to 1.

    Args:
        masked: protected samples (output of ``mask``, possibly mixed).
        mask: the masker that produced them.
        upsample: factor ``u`` of the block DCT, in {1, 2, 4, 8}.
        permutation: the per-sample channel permutation used by ``mask``, if any.

    Shape:
        - masked: :math:`(B, K, h, w)`.
        - Output: :math:`(B, 3, 8h/u, 8w/u)`.

    Returns:
        RGB images clamped to [0, 255], same dtype as ``masked``.
    """
    freq = mask.inverse(masked, permutation)
    return block_idct(freq, upsample, clamp=True, downsample_to_input=True)


def to_uint8_hwc(image: Tensor) -> Tensor:
    """Round float images on the [0, 255] scale to uint8 in channels-last layout.

    Args:
        image: RGB image(s), floating dtype; values are clamped to [0, 255].

    Shape:
        - Input: :math:`(B, 3, H, W)` or :math:`(3, H, W)`.
        - Output: :math:`(B, H, W, 3)` or :math:`(H, W, 3)`.

    Returns:
        uint8 tensor on the same device (``.cpu().numpy()`` gives arrays for PIL).
    """
    image = check_tensor(image, "image")
    check_float(image, "image")
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"Expected image of shape (B, 3, H, W) or (3, H, W), got {tuple(image.shape)}")
    pixels = image.detach().round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).contiguous()
