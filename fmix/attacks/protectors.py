"""How the attacker makes (protected, original) training pairs from public faces (DESIGN 5).

A *protector* is a callable ``(images, labels, generator) -> ProtectedPairs``: it protects a
batch of public faces and says which faces of the batch each sample was made of, so the
attack can train toward the heaviest constituent of a mix.

- White-box: :class:`MaskerProtector` with the real masker (transform, masking, normalisation,
  policy) and the real :class:`~fmix.masker.protection.MixingConfig`, through the owner's
  :class:`~fmix.masker.protection.Protection`.
- Black-box: :func:`surrogate_protector`, a masker built with the default parameters and a
  guessed k from public statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.freq import RunningChannelStats
from fmix.masker.build import build_masker
from fmix.masker.module import Masker
from fmix.masker.protection import MixingConfig, Protection
from fmix.params import ExportParams, MixingParams


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
    """Protect a batch through the owner's :class:`~fmix.masker.protection.Protection`, keeping the partners.

    Draws from ``generator`` exactly as :meth:`fmix.masker.protection.Protection.protect` (policy
    noise, channel permutation, then partners, weights and signs), so the same seed gives the same
    samples as the data owner's protection.

    Args:
        masker: the masker; its policy picks k per sample.
        mixing: the mixing configuration, or None to mask without mixing (and without permutation).
        mix: False masks without mixing, with the configuration's channel permutation if it has one.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - labels: :math:`(B,)` identity labels (partners prefer other identities).
        - Output: x :math:`(B, K, h, w)`; partners, weights :math:`(B, k_{max})` (:math:`(B, 1)` unmixed).
    """

    def __init__(self, masker: Masker, mixing: MixingConfig | None = None, mix: bool = True) -> None:
        self.masker = masker.eval()
        self.mixing = mixing if mix else None
        self.protection = Protection(self.masker, mixing)

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> ProtectedPairs:
        if self.mixing is None:
            masked, _ = self.protection.mask(images, generator)
            return ProtectedPairs(masked, torch.arange(images.shape[0])[:, None], torch.ones(images.shape[0], 1))
        batch = self.protection.protect(images, labels, generator)
        return ProtectedPairs(batch.x, batch.partners, batch.weights)


def surrogate_protector(
    stats: RunningChannelStats, k: int | None = 2, params: ExportParams | None = None, mixing: MixingParams | None = None, channels: int | None = None
) -> MaskerProtector:
    """Black-box protector: the default masking algorithm with a guessed k.

    Args:
        stats: channel statistics of the attacker's public faces
            (:func:`fmix.masker.build.public_channel_stats`), at the transform's upsample factor.
        k: the guessed number of mixed faces, or None to mask without mixing.
        params: the guessed masking parameters (default: :class:`~fmix.params.ExportParams`); give
            the ``upsample`` the released maps show.
        mixing: the guessed mixing (default: :class:`~fmix.params.MixingParams`).
        channels: the channels the released samples have: when the default masking keeps another
            number, the guess keeps that many lowest-energy channels instead (PPFR-FD's choice).

    Returns:
        The protector.

    Raises:
        ValueError: more channels than the default masking leaves (from :func:`fmix.freq.select_channels`).
    """
    params, mixing = params or ExportParams(), mixing or MixingParams()
    if k is not None:
        params = dataclasses.replace(params, k=k)
        mixing = dataclasses.replace(mixing, k_values=tuple(sorted(set(mixing.k_values) | {k})))
    masker = build_masker(params, stats, mixing)
    if channels is not None and masker.mask.num_kept != channels:
        masker = build_masker(dataclasses.replace(params, keep_lowest_energy=channels), stats, mixing)
    return MaskerProtector(masker, MixingConfig.from_params(mixing) if k is not None and k > 1 else None)
