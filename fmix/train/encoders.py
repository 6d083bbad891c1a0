"""What the FR network sees, per method: normalised RGB, all 192 frequency channels, or masked channels."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from fmix.freq import NUM_CHANNELS, FrequencyMask
from fmix.masker.build import masker_from_metadata, public_channel_stats, read_masker_metadata
from fmix.masker.module import FixedKPolicy, Masker

MIXING_METHODS = ("mixup", "adaptive")


class RgbEncoder(nn.Module):
    """Aligned RGB in [0, 255] -> (x - 127.5) / 128 (the ``none`` baseline)."""

    def __init__(self, size: int = 112) -> None:
        super().__init__()
        self.channels, self.size = 3, size

    def forward(self, images: Tensor) -> Tensor:
        return (images - 127.5) / 128.0


class FrequencyEncoder(nn.Module):
    """Aligned RGB -> protected frequency channels (the masker's fused transform, no mixing)."""

    def __init__(self, masker: Masker, input_size: int = 112) -> None:
        super().__init__()
        self.masker = masker
        self.channels = masker.mask.num_kept
        self.size = input_size * masker.upsample // 8

    def forward(self, images: Tensor) -> Tensor:
        return self.masker.masked(images)


def all_channel_masker(aligned: str | Path, public_paths: list[str], upsample: int) -> Masker:
    """The ``freq`` baseline: every channel, DC included, normalised by public statistics."""
    stats, _ = public_channel_stats([Path(aligned) / p for p in public_paths], upsample)
    kept = torch.arange(NUM_CHANNELS)
    mask = FrequencyMask(kept, stats.mean.float(), stats.std.float(), allow_dc=True)
    return Masker(mask, upsample, FixedKPolicy(1, (1,)), (1,))


def encoder_spec(method: str, masker: Masker | None) -> dict:
    """What :func:`encoder_from_spec` needs to rebuild an encoder (stored with the trained model)."""
    if masker is None:
        return {"method": method}
    mask = masker.mask
    return {
        "method": method,
        "upsample": masker.upsample,
        "kept_channels": mask.kept.tolist(),
        "channel_mean": mask.mean.tolist(),
        "channel_std": mask.std.tolist(),
    }


def encoder_from_spec(spec: dict) -> nn.Module:
    """Rebuild the encoder of a trained model."""
    if spec["method"] == "none":
        return RgbEncoder()
    kept = torch.tensor(spec["kept_channels"])
    mask = FrequencyMask(kept, torch.tensor(spec["channel_mean"]), torch.tensor(spec["channel_std"]), allow_dc=spec["method"] == "freq")
    return FrequencyEncoder(Masker(mask, spec["upsample"], FixedKPolicy(1, (1,)), (1,)))


def build_encoder(method: str, masker_path: str | Path | None, aligned: str | Path, public_paths: list[str]) -> tuple[nn.Module, dict]:
    """The encoder of a training method and its spec.

    Args:
        method: ``none``, ``freq``, ``ppfrfd``, ``mixup`` or ``adaptive``.
        masker_path: the exported masker (used by the masking methods).
        aligned: aligned faces folder (for the ``freq`` statistics).
        public_paths: public faces (for the ``freq`` statistics).

    Returns:
        (encoder, spec).
    """
    if method == "none":
        return RgbEncoder(), encoder_spec(method, None)
    if method == "freq":
        upsample = json.loads(read_masker_metadata(masker_path)["upsample"]) if masker_path else 1
        masker = all_channel_masker(aligned, public_paths, upsample)
    else:
        if masker_path is None:
            raise ValueError(f"method {method!r} needs the exported masker (--masker)")
        masker = masker_from_metadata(read_masker_metadata(masker_path))
    return FrequencyEncoder(masker), encoder_spec(method, masker)
