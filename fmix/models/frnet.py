"""The FR network: backbone + margin head; ``forward`` returns the per-sample (mixed-label) loss."""

from __future__ import annotations

from torch import Tensor, nn

from fmix.models.heads import MarginHead
from fmix.models.iresnet import build_backbone
from fmix.params import TrainParams


class FRNet(nn.Module):
    """Backbone + margin head; ``forward`` returns the per-sample loss.

    Args:
        backbone: the embedding network.
        head: the margin head (class centres).
    """

    def __init__(self, backbone: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Per-sample loss of (mixed) inputs with their constituents' labels and weights.

        Shape:
            - x: :math:`(B, C, h, w)`.
            - labels, weights: :math:`(B,)` or :math:`(B, K)`.
            - Output: :math:`(B,)`.
        """
        return self.head(self.backbone(x), labels, weights)


def build_net(
    params: TrainParams, in_channels: int, input_size: int, num_classes: int, sign_invariant: bool = False
) -> FRNet:
    """The FR network of ``params`` for inputs of ``in_channels`` x ``input_size`` x ``input_size``.

    Args:
        params: the ``train`` parameters (backbone, width, strides, norm, embedding, head).
        in_channels: channels of the encoder's output.
        input_size: side of the encoder's output.
        num_classes: training identities.
        sign_invariant: the backbone reads ``|x|`` (the method mixes under a sign mask).

    Returns:
        The network (on the CPU).
    """
    backbone = build_backbone(
        params.backbone,
        in_channels,
        input_size,
        params.embedding_size,
        params.width,
        params.strides,
        params.norm,
        sign_invariant=sign_invariant,
    )
    return FRNet(backbone, MarginHead(params.embedding_size, num_classes, params.head, params.scale, params.margin))
