"""Margin heads (ArcFace, CosFace) with mixed labels (docs/design.md §3, ``L0``).

A mixed sample ``x = sum_i w_i * m(a_i)`` carries ``K`` labels ``y_i`` with weights ``w_i`` on
the simplex. Its loss is ``sum_i w_i * CE(margin_logits(f(x), y_i), y_i)``: each term applies
the margin to its own target class only.

With ``cos_j`` the cosine between the embedding and class centre ``j``:

- ArcFace: target logit ``s * cos(theta + m) = s * (cos * cos(m) - sin * sin(m))`` where
  ``cos > cos(pi - m)``, else ``s * (cos - m * sin(pi - m))`` (insightface's fallback, which
  keeps the target logit decreasing in theta when theta + m would pass pi);
- CosFace: target logit ``s * (cos - m)``;
- every other class: ``s * cos_j``.

Cosines, margins and log-softmax run in float32 with autocast disabled, so fp16/bf16
embeddings give the float32 loss up to their rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.checks import check_float, check_int, check_integer, check_number, check_tensor

KINDS = ("arcface", "cosface")
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35}
COS_EPS = 1e-7
SIMPLEX_TOLERANCE = 1e-3


class MarginHead(nn.Module):
    """Class centres and the mixed-label ArcFace/CosFace loss.

    Args:
        embedding_size: embedding dimension.
        num_classes: number of training identities.
        kind: ``"arcface"`` (additive angular margin) or ``"cosface"`` (additive cosine margin).
        s: logit scale.
        m: margin; None gives 0.5 for ArcFace and 0.35 for CosFace.

    Example:
        >>> import torch
        >>> head = MarginHead(8, 3)
        >>> head(torch.randn(2, 8), torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0.6, 0.4], [1.0, 0.0]])).shape
        torch.Size([2])
    """

    def __init__(
        self, embedding_size: int, num_classes: int, kind: str = "arcface", s: float = 64.0, m: float | None = None
    ) -> None:
        super().__init__()
        self.embedding_size = check_int(embedding_size, "embedding_size", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        if kind not in KINDS:
            raise ValueError(f"Expected kind in {KINDS}, got {kind!r}")
        if check_number(s, "s") <= 0:
            raise ValueError(f"Expected s > 0, got {s}")
        m = DEFAULT_MARGINS[kind] if m is None else check_number(m, "m")
        if kind == "arcface" and not 0.0 <= m < math.pi / 2:
            raise ValueError(f"Expected an ArcFace margin m in [0, pi/2), got {m}")
        if kind == "cosface" and m < 0.0:
            raise ValueError(f"Expected a CosFace margin m >= 0, got {m}")
        self.kind, self.s, self.m = kind, float(s), float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, 0.0, 0.01)

    # ----------------------------------------------------------------------- checks

    def _check_embeddings(self, embeddings: object) -> Tensor:
        embeddings = check_tensor(embeddings, "embeddings")
        check_float(embeddings, "embeddings")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"Expected embeddings of shape (B, {self.embedding_size}), got {tuple(embeddings.shape)}")
        return embeddings

    def _check_targets(self, labels: object, weights: object, batch: int) -> tuple[Tensor, Tensor]:
        labels = check_tensor(labels, "labels")
        check_integer(labels, "labels")
        if weights is None:
            if labels.shape != (batch,):
                raise ValueError(f"Expected labels of shape ({batch},) when weights is None, got {tuple(labels.shape)}")
            labels = labels.unsqueeze(1)
            weights = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
        else:
            weights = check_tensor(weights, "weights")
            check_float(weights, "weights")
            if labels.dim() != 2 or labels.shape[0] != batch or weights.shape != labels.shape:
                raise ValueError(
                    f"Expected labels and weights of one shape ({batch}, K), got {tuple(labels.shape)} and {tuple(weights.shape)}"
                )
            weights = weights.float()
            if weights.numel() and (weights.min() < 0 or (weights.sum(1) - 1).abs().max() > SIMPLEX_TOLERANCE):
                raise ValueError("Expected weights on the simplex: non-negative rows summing to 1")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"Expected labels in [0, {self.num_classes - 1}], got [{labels.min()}, {labels.max()}]")
        return labels.long(), weights

    # ----------------------------------------------------------------------- computation

    def cosines(self, embeddings: Tensor) -> Tensor:
        """Cosines to every class centre, clamped inside (-1, 1).

        Args:
            embeddings: FR network outputs.

        Shape:
            - embeddings: :math:`(B, E)`.
            - Output: :math:`(B, num\\_classes)`, float32.
        """
        return _cosines(self._check_embeddings(embeddings), self.weight)

    def forward(self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Per-sample mixed-label margin loss.

        Args:
            embeddings: FR network outputs, any floating dtype.
            labels: class of each constituent in [0, num_classes); (B,) when ``weights`` is None.
            weights: label weights, rows on the simplex; None for un-mixed samples.

        Shape:
            - embeddings: :math:`(B, E)`.
            - labels, weights: :math:`(B, K)`, or labels :math:`(B,)` and weights None.
            - Output: :math:`(B,)`.

        Returns:
            ``sum_i weights[:, i] * CE(margin_logits(embeddings, labels[:, i]), labels[:, i])``
            in float32.
        """
        embeddings = self._check_embeddings(embeddings)
        labels, weights = self._check_targets(labels, weights, embeddings.shape[0])
        return margin_loss(self.weight, embeddings, labels, weights, self.kind, self.s, self.m)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Scaled cosines without margin, for closed-set accuracy and evaluation.

        Args:
            embeddings: FR network outputs.

        Shape:
            - embeddings: :math:`(B, E)`.
            - Output: :math:`(B, num\\_classes)`, float32.

        Returns:
            ``s * cos(embedding, centre_j)``.
        """
        with torch.autocast(device_type=check_tensor(embeddings, "embeddings").device.type, enabled=False):
            return self.s * self.cosines(embeddings)

    def centres(self) -> Tensor:
        """The L2-normalised class centres (identity templates for inversion attacks), detached.

        Shape:
            - Output: :math:`(num\\_classes, E)`, float32.

        Returns:
            One unit vector per class.
        """
        return F.normalize(self.weight.detach().float(), dim=1)


def _cosines(embeddings: Tensor, centres: Tensor) -> Tensor:
    """Float32 cosines of embeddings (B, E) to centres (C, E), clamped inside (-1, 1)."""
    cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(centres.float(), dim=1).t()
    return cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)


def _target_cosine(cos: Tensor, kind: str, m: float) -> Tensor:
    """The margin-adjusted cosine of a target class (elementwise)."""
    if kind == "cosface":
        return cos - m
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=COS_EPS))
    cos_theta_plus_m = cos * math.cos(m) - sin * math.sin(m)
    threshold = math.cos(math.pi - m)
    return torch.where(cos > threshold, cos_theta_plus_m, cos - math.sin(math.pi - m) * m)


def margin_loss(
    centres: Tensor, embeddings: Tensor, labels: Tensor, weights: Tensor, kind: str, s: float, m: float
) -> Tensor:
    """The mixed-label margin loss of :class:`MarginHead` as a function of its centres (no input checks).

    Pure tensor code without data-dependent branches, so ``torch.func`` can take per-sample
    gradients of it (DP-SGD).

    Args:
        centres: the class centres.
        embeddings: FR network outputs.
        labels: class of each constituent (int64).
        weights: label weights (float).
        kind: ``"arcface"`` or ``"cosface"``.
        s: logit scale.
        m: margin.

    Shape:
        - centres: :math:`(C, E)`; embeddings: :math:`(B, E)`; labels, weights: :math:`(B, K)`.
        - Output: :math:`(B,)` float32.

    Returns:
        ``sum_i weights[:, i] * CE(margin_logits(embeddings, labels[:, i]), labels[:, i])``.
    """
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        cos = _cosines(embeddings, centres)
        logits = s * cos
        loss = cos.new_zeros(cos.shape[0])
        for i in range(labels.shape[1]):  # K <= k_max columns; each uses its own target margin
            target = labels[:, i : i + 1]
            margin_logit = s * _target_cosine(cos.gather(1, target), kind, m)
            term = -F.log_softmax(logits.scatter(1, target, margin_logit), dim=1).gather(1, target).squeeze(1)
            loss = loss + weights[:, i].to(cos.device) * term
    return loss
