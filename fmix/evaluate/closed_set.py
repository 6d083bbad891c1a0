"""Closed-set identification: un-mixed faces against the head's class centres (validation accuracy)."""

from __future__ import annotations

import torch
from torch import nn

from fmix.data.faces import FaceSet


@torch.no_grad()
def closed_set_accuracy(
    encoder: nn.Module, net: nn.Module, faces: FaceSet, device: torch.device, batch_size: int = 256
) -> float:
    """Top-1 identity accuracy of un-mixed faces against the head's class centres.

    Args:
        encoder: images -> network inputs.
        net: a module with ``backbone`` and ``head`` (``head.logits``); left in training mode.
        faces: labelled faces.
        device: where the network runs.
        batch_size: faces per forward pass.

    Returns:
        The fraction of faces whose top logit is their label.

    Raises:
        ValueError: no faces.
    """
    if len(faces) == 0:
        raise ValueError("Expected at least one face for the closed-set accuracy")
    net.eval()
    correct = 0
    for start in range(0, len(faces), batch_size):
        index = torch.arange(start, min(start + batch_size, len(faces)))
        logits = net.head.logits(net.backbone(encoder(faces.float_images(index).to(device))))
        correct += (logits.argmax(dim=1).cpu() == faces.labels[index]).sum().item()
    net.train()
    return correct / len(faces)
