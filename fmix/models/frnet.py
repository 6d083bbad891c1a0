"""The FR network: backbone + margin head (+ the teacher projection of embedding distillation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.models.heads import MarginHead
from fmix.models.iresnet import build_backbone
from fmix.params import TrainParams

TEACHER_SIZE = 128  # dlib's descriptor


class TeacherProjection(nn.Module):
    """Linear map from the FR embedding to the teacher's descriptor space, and the cosine loss.

    Args:
        embedding_size: the FR network's embedding size.
        teacher_size: the teacher's descriptor size (128 for dlib).
    """

    def __init__(self, embedding_size: int, teacher_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(embedding_size, teacher_size, bias=False)

    def forward(self, embeddings: Tensor, targets: Tensor) -> Tensor:
        """Per-sample ``1 - cos(W e, t)``.

        Shape:
            - embeddings: :math:`(B, E)`.
            - targets: :math:`(B, D)`.
            - Output: :math:`(B,)` float32.
        """
        if targets.shape[0] != embeddings.shape[0]:
            raise ValueError(f"Expected one teacher target per sample, got {targets.shape[0]} for {embeddings.shape[0]}")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return 1.0 - F.cosine_similarity(self.linear(embeddings.float()), targets.float(), dim=1)


class FRNet(nn.Module):
    """Backbone + margin head (+ teacher projection); ``forward`` returns the per-sample loss.

    Args:
        backbone: the embedding network.
        head: the margin head (class centres).
        teacher: the projection to the teacher's descriptor space, or None.
        distill_weight: weight of the distillation loss.
    """

    def __init__(self, backbone: nn.Module, head: MarginHead, teacher: TeacherProjection | None = None, distill_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone, self.head, self.teacher, self.distill_weight = backbone, head, teacher, distill_weight

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor | None = None, targets: Tensor | None = None) -> Tensor:
        """Per-sample loss of (mixed) inputs with their constituents' labels and weights.

        Shape:
            - x: :math:`(B, C, h, w)`.
            - labels, weights: :math:`(B,)` or :math:`(B, K)`.
            - targets: :math:`(B, D)` teacher descriptors, or None.
            - Output: :math:`(B,)`.
        """
        embeddings = self.backbone(x)
        loss = self.head(embeddings, labels, weights)
        if targets is not None and self.teacher is not None:
            loss = loss + self.distill_weight * self.teacher(embeddings, targets)
        return loss


def build_net(params: TrainParams, in_channels: int, input_size: int, num_classes: int) -> FRNet:
    """The FR network of ``params`` for inputs of ``in_channels`` x ``input_size`` x ``input_size``.

    Args:
        params: the ``train`` parameters (backbone, width, strides, norm, embedding, head, distillation).
        in_channels: channels of the encoder's output.
        input_size: side of the encoder's output.
        num_classes: training identities.

    Returns:
        The network (on the CPU).
    """
    backbone = build_backbone(params.backbone, in_channels, input_size, params.embedding_size, params.width, params.strides, params.norm)
    teacher = TeacherProjection(params.embedding_size, TEACHER_SIZE) if params.distill_weight > 0 else None
    return FRNet(backbone, MarginHead(params.embedding_size, num_classes, params.head, params.scale, params.margin), teacher, params.distill_weight)
