"""Conditional PatchGAN discriminator (pix2pix, docs/design.md §5), scaled down for small faces.

The condition (protected channels at ``h x w``) is projected by a 1x1 convolution to a few
channels, resized to the image size (nearest) and concatenated with the image. The body is
pix2pix's: 4x4 convolutions, stride 2 for all but the last two, channels doubling (at most
``8 * width``), no normalisation on the first layer; with ``layers = 3`` each output score
sees a 70x70 patch, as in pix2pix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.checks import check_float, check_int, check_tensor


class PatchDiscriminator(nn.Module):
    """Scores (condition, image) pairs patch by patch: real pairs high, reconstructions low.

    Args:
        cond_channels: channels ``C`` of the condition (the protected sample).
        width: channels of the first layer.
        layers: number of stride-2 layers (3: 70x70 receptive field).
        cond_features: channels the condition is projected to.

    Shape:
        - cond: :math:`(B, C, h, w)`, any ``h, w``.
        - image: :math:`(B, 3, H, W)`, RGB in [0, 255].
        - Output: :math:`(B, 1, H', W')` logits, one per patch.
    """

    def __init__(self, cond_channels: int, width: int = 32, layers: int = 3, cond_features: int = 8) -> None:
        super().__init__()
        check_int(cond_channels, "cond_channels", minimum=1)
        check_int(width, "width", minimum=1)
        check_int(layers, "layers", minimum=1)
        check_int(cond_features, "cond_features", minimum=1)
        self.cond_channels = cond_channels
        self.project = nn.Conv2d(cond_channels, cond_features, 1)
        blocks: list[nn.Module] = [nn.Conv2d(3 + cond_features, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for i in range(1, layers + 1):
            out = min(width * 2**i, 8 * width)
            stride = 2 if i < layers else 1
            blocks += [
                nn.Conv2d(channels, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.body = nn.Sequential(*blocks)

    def forward(self, cond: Tensor, image: Tensor) -> Tensor:
        cond, image = check_tensor(cond, "cond"), check_tensor(image, "image")
        check_float(cond, "cond")
        check_float(image, "image")
        if cond.dim() != 4 or cond.shape[1] != self.cond_channels:
            raise ValueError(f"Expected cond of shape (B, {self.cond_channels}, h, w), got {tuple(cond.shape)}")
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != cond.shape[0]:
            raise ValueError(f"Expected image of shape ({cond.shape[0]}, 3, H, W), got {tuple(image.shape)}")
        projected = F.interpolate(self.project(cond), size=image.shape[-2:], mode="nearest")
        return self.body(torch.cat([image / 127.5 - 1.0, projected], dim=1))
