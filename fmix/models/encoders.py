"""What the FR network sees: the input encoder of a trained model, and its spec stored in ``model.pt``.

Encoders are building blocks; a method (:mod:`fmix.methods`) picks one. Kinds:

- ``rgb``: aligned RGB in [0, 255] -> ``(x - 127.5) / 128`` (``none``, and the pixel-domain methods);
- ``frequency``: the masker's fused transform without mixing (masked or all frequency channels).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmix.freq import DC_CHANNELS, FrequencyMask
from fmix.masker.module import FixedKPolicy, Masker

ENCODER_KINDS = ("rgb", "frequency")


class RgbEncoder(nn.Module):
    """Aligned RGB in [0, 255] -> (x - 127.5) / 128.

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - Output: :math:`(B, 3, H, W)`.
    """

    def __init__(self, size: int = 112) -> None:
        super().__init__()
        self.channels, self.size = 3, size

    def forward(self, images: Tensor) -> Tensor:
        return (images - 127.5) / 128.0


class FrequencyEncoder(nn.Module):
    """Aligned RGB -> protected frequency channels (the masker's fused transform, no mixing).

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - Output: :math:`(B, K, Hu/8, Wu/8)`.
    """

    def __init__(self, masker: Masker, input_size: int = 112) -> None:
        super().__init__()
        self.masker = masker
        self.channels = masker.mask.num_kept
        self.size = input_size * masker.upsample // 8

    def forward(self, images: Tensor) -> Tensor:
        return self.masker.masked(images)


def encoder_spec(method: str, masker: Masker | None) -> dict:
    """What :func:`encoder_from_spec` needs to rebuild an encoder (stored with the trained model).

    Args:
        method: the training method (recorded for the reader).
        masker: the masker of a frequency encoder, or None for RGB.

    Returns:
        A plain dict: ``method``, ``kind`` and, for ``frequency``, upsample, kept channels,
        their statistics and whether DC may be kept.
    """
    if masker is None:
        return {"method": method, "kind": "rgb"}
    mask = masker.mask
    return {
        "method": method,
        "kind": "frequency",
        "upsample": masker.upsample,
        "kept_channels": mask.kept.tolist(),
        "channel_mean": mask.mean.tolist(),
        "channel_std": mask.std.tolist(),
        "allow_dc": bool(set(mask.kept.tolist()) & set(DC_CHANNELS)),
    }


def encoder_from_spec(spec: dict) -> nn.Module:
    """Rebuild the encoder of a trained model from its spec.

    Args:
        spec: :func:`encoder_spec`'s dict (a spec without ``kind``, from before kinds, is read by its method).

    Returns:
        The encoder.

    Raises:
        ValueError: an unknown kind.
    """
    kind = spec.get("kind") or ("rgb" if spec["method"] == "none" else "frequency")
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; known: {', '.join(ENCODER_KINDS)}")
    if kind == "rgb":
        return RgbEncoder()
    allow_dc = spec.get("allow_dc", spec["method"] == "freq")
    mask = FrequencyMask(torch.tensor(spec["kept_channels"]), torch.tensor(spec["channel_mean"]), torch.tensor(spec["channel_std"]), allow_dc=allow_dc)
    return FrequencyEncoder(Masker(mask, spec["upsample"], FixedKPolicy(1, (1,)), (1,)))
