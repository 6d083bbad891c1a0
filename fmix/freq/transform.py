"""The frequency transform on its own: aligned RGB -> upsample -> block DCT -> kept channels -> normalised.

One fused convolution, deterministic, with no k policy and no mixing. The exportable masker
(:class:`fmix.masker.module.Masker`) wraps it and adds the policy; the FR encoders of the
frequency methods (:mod:`fmix.models.encoders`) use it as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.freq.dct import block_dct_conv
from fmix.freq.masking import FrequencyMask


def fused_mask_conv(mask: FrequencyMask, upsample: int) -> tuple[Tensor, Tensor, int, int]:
    """Fold colour conversion, block DCT, channel selection and normalisation into one convolution.

    ``mask(block_dct(x, u)) == conv2d(pad(x), weight, bias, stride)`` with edge-replicate
    padding: all four steps are affine in the RGB input, so each kept channel ``(plane c,
    frequency f)`` is the DCT kernel of ``f`` applied to ``sum_r M[c, r] x_r``, plus constants.
    One convolution writes only the kept channels, once (no 192-channel intermediate).

    Args:
        mask: the channel selection and normalisation.
        upsample: factor ``u`` of the transform.

    Shape:
        - Output: weight :math:`(K, 3, t, t)`, bias :math:`(K,)`.

    Returns:
        ``(weight, bias, stride, padding)``, weight and bias in float64.
    """
    kernel, matrix, offset, stride, padding = block_dct_conv(upsample, torch.float64)
    plane, frequency = mask.kept // 64, mask.kept % 64
    taps = kernel[frequency, 0]  # (K, t, t)
    mean, std = mask.mean.double(), mask.std.double()
    weight = matrix[plane][:, :, None, None] * taps[:, None] / std[:, None, None, None]
    bias = (offset[plane] * taps.sum(dim=(1, 2)) - mean) / std
    return weight, bias, stride, padding


class FrequencyTransform(nn.Module):
    """Aligned RGB faces -> their kept block-DCT channels, normalised (``mask(block_dct(images, u))``).

    Args:
        mask: channel selection and normalisation.
        upsample: bilinear factor ``u`` before the block DCT.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255], float.
        - Output: :math:`(B, K, Hu/8, Wu/8)`, K = ``mask.num_kept``.
    """

    def __init__(self, mask: FrequencyMask, upsample: int) -> None:
        super().__init__()
        self.mask = mask
        self.upsample = upsample
        weight, bias, self.stride, self.padding = fused_mask_conv(mask, upsample)
        self.register_buffer("weight", weight)  # float64; cast to the input dtype per call
        self.register_buffer("bias", bias)

    @property
    def channels(self) -> int:
        """K, the kept channels."""
        return self.mask.num_kept

    def forward(self, images: Tensor) -> Tensor:
        if self.padding:
            images = F.pad(images, (self.padding,) * 4, mode="replicate")
        return F.conv2d(images, self.weight.to(images.dtype), self.bias.to(images.dtype), stride=self.stride)
