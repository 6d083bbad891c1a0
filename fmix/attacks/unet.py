"""U-Net generator inverting protected frequency channels back to RGB faces (docs/design.md §5).

The input is ``C`` frequency channels on the block grid: ``14 x 14`` for ``u = 1`` (one
position per 8x8 pixel block), ``112 x 112`` for ``u = 8`` (one position per pixel). The
network has three parts:

- a U-Net at the input resolution (encoder of stride-2 convolutions, decoder with skip
  connections), which sees the context that dropped channels must be guessed from;
- an upsampling head (``log2(out / in)`` PixelShuffle x2 stages) to the output resolution;
- a *block skip*: a 1x1 convolution of the raw input to ``(3 + skip_channels) s^2`` values
  per position, rearranged by PixelShuffle(``s``), ``s = out / in``. Its first 3 channels are
  a learned linear per-block decoding added to the output; the block DCT is linear per block,
  so this path alone can represent the inverse transform of the kept channels (up to the
  output squashing). The others feed the last convolution beside the head's features.

The output is ``127.5 (1 + tanh(linear + correction))``: RGB in [0, 255]. The correction's
last convolution starts at zero, so training starts from the linear decoding and the U-Net
learns what the masking removed. BatchNorm throughout (eval mode for inversion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.checks import check_float, check_int, check_tensor


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _default_levels(side: int, smallest: int = 4) -> int:
    levels = 0
    while side > smallest:
        side = (side + 1) // 2
        levels += 1
    return levels


class _Up(nn.Module):
    """Upsample to the skip's size (odd sizes included), concatenate it, two convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_block(c_in + c_skip, c_out), _conv_block(c_out, c_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.body(torch.cat([x, skip], dim=1))


class _PixelShuffleUp(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.refine = _conv_block(c_out, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.refine(F.leaky_relu(self.shuffle(self.expand(x)), 0.2))


class UNetGenerator(nn.Module):
    """Protected frequency channels -> RGB face.

    Args:
        in_channels: number ``C`` of protected channels.
        in_size: side of the input maps (14 for ``u = 1``, 112 for ``u = 8``).
        out_size: side of the output face; ``out_size / in_size`` must be a power of 2 (1 to 64).
        width: channels of the first U-Net level; level ``i`` has ``width * 2**i`` (at most
            ``8 * width``); the upsampling head halves it at each stage (at least
            ``head_min``).
        levels: number of stride-2 levels of the U-Net (default: halve until the side is <= 4).
        skip_channels: channels per output pixel of the block skip fed to the last convolution,
            besides its 3 linear RGB channels.
        head_min: fewest channels of an upsampling stage.

    Shape:
        - Input: :math:`(B, C, in\\_size, in\\_size)`.
        - Output: :math:`(B, 3, out\\_size, out\\_size)` in [0, 255].
    """

    def __init__(
        self,
        in_channels: int,
        in_size: int = 14,
        out_size: int = 112,
        width: int = 48,
        levels: int | None = None,
        skip_channels: int = 8,
        head_min: int = 16,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("in_size", in_size),
            ("out_size", out_size),
            ("width", width),
            ("head_min", head_min),
        ):
            check_int(value, name, minimum=1)
        check_int(skip_channels, "skip_channels", minimum=0)
        scale = out_size // in_size
        if out_size % in_size or scale & (scale - 1) or scale > 64:
            raise ValueError(f"Expected out_size / in_size to be a power of 2 up to 64, got {out_size} / {in_size}")
        levels = _default_levels(in_size) if levels is None else check_int(levels, "levels", minimum=0)
        self.in_channels, self.in_size, self.out_size, self.scale = in_channels, in_size, out_size, scale

        widths = [min(width * 2**i, 8 * width) for i in range(levels + 1)]
        self.stem = nn.Sequential(_conv_block(in_channels, width), _conv_block(width, width))
        self.down = nn.ModuleList(
            nn.Sequential(_conv_block(widths[i], widths[i + 1], stride=2), _conv_block(widths[i + 1], widths[i + 1]))
            for i in range(levels)
        )
        self.up = nn.ModuleList(_Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(levels)))
        stages, channels = [], width
        for _ in range(scale.bit_length() - 1):
            stages.append(_PixelShuffleUp(channels, max(channels // 2, head_min)))
            channels = max(channels // 2, head_min)
        self.head = nn.Sequential(*stages)
        self.skip_channels = skip_channels
        self.block_skip = nn.Conv2d(in_channels, (3 + skip_channels) * scale * scale, 1)
        self.shuffle = nn.PixelShuffle(scale)
        self.out = nn.Sequential(_conv_block(channels + skip_channels, channels), nn.Conv2d(channels, 3, 3, padding=1))
        # Start as the block skip's linear decoding; the U-Net learns a correction on top.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = check_tensor(x, "x")
        check_float(x, "x")
        wanted = (self.in_channels, self.in_size, self.in_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != wanted:
            raise ValueError(f"Expected x of shape (B, {', '.join(map(str, wanted))}), got {tuple(x.shape)}")
        features = [self.stem(x)]
        for down in self.down:
            features.append(down(features[-1]))
        y = features.pop()
        for up in self.up:
            y = up(y, features.pop())
        linear, skip = self.shuffle(self.block_skip(x)).split([3, self.skip_channels], dim=1)
        z = linear + self.out(torch.cat([self.head(y), skip], dim=1))
        return 127.5 * (1.0 + z.tanh())
