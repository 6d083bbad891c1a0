"""IResNet backbones (insightface ``IBasicBlock`` style) for RGB faces and block-DCT inputs.

The network is a stem (conv3x3 stride 1, norm, PReLU), four stages of ``IBasicBlock`` and an
embedding head (norm, dropout, flatten, FC, BatchNorm1d). Each stage starts with a stride of 1
or 2 (the *stride plan*), so the same family serves 112x112 RGB faces and the much smaller
frequency inputs (192 or K kept channels at 14x14 for ``u=1``). The FC input size follows from
``input_size`` and the plan.

Stride presets (:data:`STRIDE_PRESETS`), with the sides of the input and of stages 1-4 (a
3x3/stride-2 convolution with padding 1 maps a side ``n`` to ``ceil(n / 2)``):

- ``rgb112``: (2, 2, 2, 2), 112 -> 56 -> 28 -> 14 -> 7 (RGB, insightface);
- ``freq112``: (2, 2, 2, 2), 112 -> 56 -> 28 -> 14 -> 7 (block DCT, ``u=8``);
- ``freq56``: (2, 2, 2, 2), 56 -> 28 -> 14 -> 7 -> 4 (block DCT, ``u=4``);
- ``freq28``: (1, 2, 2, 2), 28 -> 28 -> 14 -> 7 -> 4 (block DCT, ``u=2``);
- ``freq14``: (1, 1, 2, 2), 14 -> 14 -> 14 -> 7 -> 4 (block DCT, ``u=1``);
- ``freq14_fast``: (1, 2, 2, 2), 14 -> 14 -> 7 -> 4 -> 2 (``u=1``, about 3x cheaper).

A 14x14 DCT map already has the resolution of insightface's third stage, so the ``u=1``
presets downsample later; every preset ends on a 2x2 to 7x7 map. :data:`DEFAULT_PRESETS`
picks one from the input side when no plan is given.

``norm="group"`` replaces every BatchNorm2d by GroupNorm and drops the BatchNorm1d on the
embedding (the margin head L2-normalises it anyway), so no layer depends on batch statistics:
statistics gathered on mixed training batches but applied to un-mixed test faces are a suspect
for accuracy loss, and this choice lets an experiment rule it in or out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fmix.checks import check_int, check_number, check_tensor, is_tracing

DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),  # insightface's R100 (fmix.models.backbone_import loads its weights)
}
STRIDE_PRESETS = {
    "rgb112": (2, 2, 2, 2),
    "freq112": (2, 2, 2, 2),
    "freq56": (2, 2, 2, 2),
    "freq28": (1, 2, 2, 2),
    "freq14": (1, 1, 2, 2),
    "freq14_fast": (1, 2, 2, 2),
}
DEFAULT_PRESETS = {112: "rgb112", 56: "freq56", 28: "freq28", 14: "freq14"}
BASE_WIDTHS = (64, 128, 256, 512)
MIN_WIDTH = 8
NORMS = ("batch", "group")
MAX_GROUPS = 32
EPS = 1e-5


# --------------------------------------------------------------------------- building blocks


def _norm2d(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with 32 groups (fewer when 32 does not divide ``channels``)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=EPS)
    return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels, eps=EPS)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def downsampled_side(side: int, stride: int) -> int:
    """Output side of a 3x3 convolution with padding 1 (or a 1x1 one without padding).

    Args:
        side: input side in pixels.
        stride: 1 or 2.

    Returns:
        ``ceil(side / stride)``.
    """
    return (side - 1) // stride + 1


MIN_CHANNELS_LAST_WIDTH = 16  # narrowest stage that runs in channels_last


class IBasicBlock(nn.Module):
    """Insightface residual block: norm, conv3x3, norm, PReLU, conv3x3 (stride), norm, + shortcut.

    The shortcut is the identity, or a strided conv1x1 + norm when the shape changes.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the second convolution, 1 or 2.
        norm: ``"batch"`` or ``"group"``.

    Shape:
        - Input: :math:`(B, in\\_planes, H, W)`.
        - Output: :math:`(B, planes, \\lceil H / stride \\rceil, \\lceil W / stride \\rceil)`.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.bn1 = _norm2d(norm, in_planes)
        self.conv1 = _conv3x3(in_planes, planes)
        self.bn2 = _norm2d(norm, planes)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = _norm2d(norm, planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                _norm2d(norm, planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


# --------------------------------------------------------------------------- argument checks


def resolve_strides(strides: str | tuple[int, ...] | list[int] | None, input_size: int) -> tuple[int, int, int, int]:
    """The stride plan of the four stages.

    Args:
        strides: a preset name of :data:`STRIDE_PRESETS`, an explicit sequence of four strides
            in {1, 2}, or None for the default preset of ``input_size``
            (:data:`DEFAULT_PRESETS`).
        input_size: input side in pixels.

    Returns:
        Four strides.
    """
    if strides is None:
        if input_size not in DEFAULT_PRESETS:
            raise ValueError(
                f"No default stride plan for input_size={input_size} (defaults exist for "
                f"{sorted(DEFAULT_PRESETS)}); pass strides as a preset name of "
                f"{sorted(STRIDE_PRESETS)} or a tuple of four strides in {{1, 2}}"
            )
        return STRIDE_PRESETS[DEFAULT_PRESETS[input_size]]
    if isinstance(strides, str):
        if strides not in STRIDE_PRESETS:
            raise ValueError(f"Unknown stride preset {strides!r}; expected one of {sorted(STRIDE_PRESETS)}")
        return STRIDE_PRESETS[strides]
    if not isinstance(strides, (tuple, list)):
        raise TypeError(
            f"Expected strides to be a preset name, a tuple of four ints or None, got {type(strides).__name__}"
        )
    plan = tuple(strides)
    if len(plan) != 4 or any(isinstance(s, bool) or s not in (1, 2) for s in plan):
        raise ValueError(f"Expected strides to be four values in {{1, 2}} (one per stage), got {plan}")
    return tuple(int(s) for s in plan)  # type: ignore[return-value]


def stage_widths(width: float) -> tuple[int, int, int, int]:
    """Channels of the four stages: ``(64, 128, 256, 512) * width``, rounded, at least 8.

    Args:
        width: width multiplier, > 0.

    Returns:
        Four channel counts.
    """
    if check_number(width, "width") <= 0:
        raise ValueError(f"Expected width > 0, got {width}")
    return tuple(max(MIN_WIDTH, int(round(base * width))) for base in BASE_WIDTHS)  # type: ignore[return-value]


# --------------------------------------------------------------------------- network


class IResNet(nn.Module):
    """IResNet feature extractor producing face embeddings.

    Args:
        layers: blocks per stage, four positive ints (see :data:`DEPTHS`).
        in_channels: input channels (3 for RGB, 192 or the kept-channel count for block DCT).
        input_size: side of the square input; fixes the FC input size.
        embedding_size: embedding dimension.
        width: width multiplier of the stage channels (see :func:`stage_widths`).
        strides: stride plan (see :func:`resolve_strides`).
        norm: ``"batch"`` (insightface) or ``"group"`` (no batch statistics anywhere).
        dropout: dropout probability before the FC layer.
        sign_invariant: read the input's magnitude ``|x|`` [ours]: under a random sign per
            coefficient (``mixing.sign_flip``) the information is in the magnitudes, and a
            convolution over randomly signed inputs learns nothing.

    Shape:
        - Input: :math:`(B, in\\_channels, input\\_size, input\\_size)`.
        - Output: :math:`(B, embedding\\_size)`.

    Example:
        >>> import torch
        >>> net = IResNet((2, 2, 2, 2), in_channels=192, input_size=14, width=0.125)
        >>> net.feature_map_size, net.eval()(torch.rand(2, 192, 14, 14)).shape
        (4, torch.Size([2, 512]))
    """

    def __init__(
        self,
        layers: tuple[int, ...] | list[int],
        in_channels: int,
        input_size: int,
        embedding_size: int = 512,
        width: float = 1.0,
        strides: str | tuple[int, ...] | list[int] | None = None,
        norm: str = "batch",
        dropout: float = 0.0,
        sign_invariant: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(layers, (tuple, list)) or len(layers) != 4:
            raise ValueError(f"Expected layers to be four block counts, got {layers!r}")
        for count in layers:
            check_int(count, "every block count of layers", minimum=1)
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.input_size = check_int(input_size, "input_size", minimum=1)
        self.embedding_size = check_int(embedding_size, "embedding_size", minimum=1)
        if norm not in NORMS:
            raise ValueError(f"Expected norm in {NORMS}, got {norm!r}")
        if not 0.0 <= check_number(dropout, "dropout") < 1.0:
            raise ValueError(f"Expected dropout in [0, 1), got {dropout}")
        self.strides = resolve_strides(strides, input_size)
        self.widths = stage_widths(width)
        self.norm = norm
        self.sign_invariant = bool(sign_invariant)

        side = input_size
        for stride in self.strides:
            side = downsampled_side(side, stride)
        self.feature_map_size = side
        self.fc_in_features = self.widths[-1] * side * side

        self.conv1 = _conv3x3(in_channels, self.widths[0])
        self.bn1 = _norm2d(norm, self.widths[0])
        self.prelu = nn.PReLU(self.widths[0])
        stages, planes_in = [], self.widths[0]
        for blocks, planes, stride in zip(layers, self.widths, self.strides):
            stage = [IBasicBlock(planes_in, planes, stride, norm)]
            stage += [IBasicBlock(planes, planes, 1, norm) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = _norm2d(norm, self.widths[-1])
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.fc_in_features, embedding_size)
        if norm == "batch":
            # insightface: BatchNorm1d on the embedding with its scale frozen at 1.
            self.features: nn.Module = nn.BatchNorm1d(embedding_size, eps=EPS)
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False
        else:
            self.features = nn.Identity()
        self._init_weights()
        # NHWC convolutions: about 1.3x faster on CPU (benchmarks/bench_channels_last.py). Not below 16
        # channels: the backward of a strided 1x1 convolution then crashes on CPU (torch 2.14, 112x112 input).
        self.channels_last = self.widths[0] >= MIN_CHANNELS_LAST_WIDTH  # a bool: the module stays deep-copyable
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)  # insightface's initialisation
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)

    def _check_input(self, x: object) -> Tensor:
        x = check_tensor(x, "input")
        wanted = (self.in_channels, self.input_size, self.input_size)
        if not is_tracing() and (x.dim() != 4 or tuple(x.shape[1:]) != wanted):
            raise ValueError(
                f"Expected input of shape (B, {self.in_channels}, {self.input_size}, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"Expected input with a floating dtype, got {x.dtype}")
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self._check_input(x)
        if self.sign_invariant:
            x = x.abs()
        if self.channels_last and not is_tracing():
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


def build_backbone(
    name: str,
    in_channels: int,
    input_size: int,
    embedding_size: int = 512,
    width: float = 1.0,
    strides: str | tuple[int, ...] | list[int] | None = None,
    norm: str = "batch",
    dropout: float = 0.0,
    sign_invariant: bool = False,
) -> IResNet:
    """Build an IResNet by name.

    Args:
        name: one of :data:`DEPTHS` (``"iresnet18"``, ``"iresnet34"``, ``"iresnet50"``, ``"iresnet100"``).
        in_channels: input channels.
        input_size: side of the square input.
        embedding_size: embedding dimension.
        width: width multiplier.
        strides: stride plan: preset name, four strides or None (default for ``input_size``).
        norm: ``"batch"`` or ``"group"``.
        dropout: dropout probability before the FC layer.
        sign_invariant: read ``|x|`` (inputs under a random sign mask).

    Returns:
        The network, see :class:`IResNet`.
    """
    if name not in DEPTHS:
        raise ValueError(f"Unknown backbone {name!r}; expected one of {sorted(DEPTHS)}")
    return IResNet(DEPTHS[name], in_channels, input_size, embedding_size, width, strides, norm, dropout, sign_invariant)
