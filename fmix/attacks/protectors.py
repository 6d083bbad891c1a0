"""How the attacker makes (protected, original) training pairs from public faces (DESIGN 5).

A *protector* is a callable ``(images, labels, generator) -> ProtectedPairs``: it protects a
batch of public faces and says which faces of the batch each sample was made of, so the
attack can train toward the heaviest constituent of a mix.

- White-box: :class:`MaskerProtector` with the real masker (transform, masking, normalisation,
  policy) and the real :class:`~fmix.masker.protect.MixingConfig`.
- Black-box: :func:`surrogate_protector`, a masker built with the default parameters and a
  guessed k from public statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.freq import RunningChannelStats, apply_mixing, random_channel_permutation, sample_mixing
from fmix.masker.build import build_masker, mixing_config
from fmix.masker.module import Masker
from fmix.masker.protect import MixingConfig
from fmix.params import ExportParams


class ProtectedPairs(NamedTuple):
    """Protected samples and their constituents within the batch.

    ``x[b] = sum_j weights[b, j] * protect(images[partners[b, j]])`` (up to a sign mask);
    un-mixed samples have ``partners[b] = (b,)`` and ``weights[b] = (1,)``.
    """

    x: Tensor
    partners: Tensor
    weights: Tensor

    def heaviest(self) -> Tensor:
        """Index into the batch of each sample's heaviest constituent, shape :math:`(B,)`."""
        column = self.weights.argmax(dim=1, keepdim=True)
        return self.partners.gather(1, column)[:, 0]


Protector = Callable[[Tensor, Tensor, torch.Generator], ProtectedPairs]


class MaskerProtector:
    """Protect a batch with a masker and (optionally) Frequency MixUp, keeping the partners.

    Draws from ``generator`` in the order of :func:`fmix.masker.protect.protect_batch` (policy
    noise, channel permutation, then partners, weights and signs), so the same seed gives the
    same samples as the data owner's ``fmix mask``.

    Args:
        masker: the masker; its policy picks k per sample.
        mixing: the mixing configuration, or None to mask without mixing.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - labels: :math:`(B,)` identity labels (partners prefer other identities).
        - Output: x :math:`(B, K, h, w)`; partners, weights :math:`(B, k_{max})`.
    """

    def __init__(self, masker: Masker, mixing: MixingConfig | None = None) -> None:
        self.masker = masker.eval()
        self.mixing = mixing

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> ProtectedPairs:
        batch = images.shape[0]
        noise = torch.rand(batch, generator=generator)
        masked, k = self.masker(images, noise)
        config = self.mixing
        if config is not None and config.permute_channels:
            permutation = random_channel_permutation(batch, masked.shape[1], generator)
            masked = torch.gather(masked, 1, permutation[:, :, None, None].expand_as(masked))
        if config is None:
            return ProtectedPairs(masked, torch.arange(batch)[:, None], torch.ones(batch, 1))
        sign_shape = tuple(masked.shape[1:]) if config.sign_flip else None
        draw = sample_mixing(labels, k, config.k_max, config.weight_law, config.cap, sign_shape, generator)
        mixed = apply_mixing(masked, draw.partners, draw.weights, draw.sign, config.rescale)
        return ProtectedPairs(mixed, draw.partners, draw.weights)


def surrogate_protector(stats: RunningChannelStats, k: int | None = 2, params: ExportParams | None = None) -> MaskerProtector:
    """Black-box protector: the default masking algorithm with a guessed k.

    Args:
        stats: channel statistics of the attacker's public faces
            (:func:`fmix.masker.build.public_channel_stats`).
        k: the guessed number of mixed faces, or None to mask without mixing.
        params: the guessed masking parameters (default: :class:`~fmix.params.ExportParams`).

    Returns:
        The protector.
    """
    params = params or ExportParams()
    if k is not None:
        params = dataclasses.replace(params, k=k, k_values=tuple(sorted(set(params.k_values) | {k})))
    masker = build_masker(params, stats)
    return MaskerProtector(masker, mixing_config(params) if k is not None and k > 1 else None)
