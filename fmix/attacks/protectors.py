"""How the attacker makes (protected, original) training pairs from public faces (docs/design.md §5).

A *protector* is a callable ``(images, labels, generator) -> ProtectedPairs``: it protects a
batch of public faces and says which faces of the batch each sample was made of, so the
attack can train toward the heaviest constituent of a mix.

- White-box: :class:`MaskerProtector` with the real masker (transform, masking, normalisation,
  policy) and the real :class:`~fmix.masker.protection.MixingConfig`, through the owner's
  :class:`~fmix.masker.protection.Protection`.
- Black-box: :func:`surrogate_protector`, a masker built with the default parameters and a
  guessed k from public statistics.

Methods without a masker are attacked through the trained model's own protection:

- :class:`PixelMixProtector` (``protection = "pixels"``, InstaHide): RGB faces mixed in the pixel
  domain with the model's mixing (k, weight law, cap, sign mask), through the owner's
  :class:`~fmix.masker.protection.Protection`;
- :class:`NoisyFrequencyProtector` (``protection = "noisy"``, DCTDP): a masker's frequency channels,
  clipped, plus Laplace noise at given per-channel scales (white-box: the model's learned scales).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.freq import RunningChannelStats
from fmix.freq.transform import FrequencyTransform
from fmix.masker.build import build_masker
from fmix.masker.module import Masker
from fmix.masker.protection import MixingConfig, Protection
from fmix.models.encoders import NoisyFrequencyEncoder, RgbEncoder, add_laplace_noise
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
            return _unmixed(masked)
        batch = self.protection.protect(images, labels, generator)
        return ProtectedPairs(batch.x, batch.partners, batch.weights)


def _unmixed(x: Tensor) -> ProtectedPairs:
    return ProtectedPairs(x, torch.arange(x.shape[0])[:, None], torch.ones(x.shape[0], 1))


class PixelMixProtector:
    """Mix RGB faces in the pixel domain as a model trained on them did (InstaHide).

    The faces go through the RGB encoding ``(x - 127.5) / 128``, then through the owner's
    :class:`~fmix.masker.protection.Protection` with ``mixing``: partners, weights and the sign mask
    are drawn from ``generator`` in that order, as in training. The attacker knows k, the weight
    law, the cap and that a sign mask is applied, never the owner's draws.

    Args:
        mixing: the mixing configuration (weight law, cap, sign mask, rescaling).
        k: faces per sample, in [1, ``mixing.k_max``].

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - labels: :math:`(B,)` identity labels (partners prefer other identities).
        - Output: x :math:`(B, 3, H, W)`; partners, weights :math:`(B, k_{max})`.

    Raises:
        ValueError: k outside [1, ``mixing.k_max``].
    """

    def __init__(self, mixing: MixingConfig, k: int) -> None:
        if not 1 <= k <= mixing.k_max:
            raise ValueError(f"Expected k in [1, {mixing.k_max}] (the mixing's k_max), got {k}")
        self.mixing, self.k = mixing, k
        self.encoder = RgbEncoder()
        self.protection = Protection(None, mixing, (k,))

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> ProtectedPairs:
        batch = self.protection.protect_encoded(self.encoder(images), labels, self.k, generator)
        return ProtectedPairs(batch.x, batch.partners, batch.weights)


def sign_blind(protector: Protector) -> Protector:
    """The protector's samples as an attacker who knows of the sign mask reads them: ``|x|``.

    A random sign per coefficient carries no information about the faces, so the attacker drops
    it before the inversion network sees the samples (Carlini et al., 2021, start from ``|x|`` too).
    """

    def protect(images: Tensor, labels: Tensor, generator: torch.Generator) -> ProtectedPairs:
        pairs = protector(images, labels, generator)
        return pairs._replace(x=pairs.x.abs())

    return protect


def pixel_mix_to_image(x: Tensor) -> Tensor:
    """What a pixel-domain mix shows: its absolute value, which removes the sign mask.

    Carlini et al. (2021) start their attack on InstaHide from ``|x|``; shown as an image of
    ``|x|`` in [0, 1] (``x`` is a mix of faces encoded as ``(face - 127.5) / 128``).

    Shape:
        - x: :math:`(B, 3, H, W)`.
        - Output: :math:`(B, 3, H, W)` in [0, 255].
    """
    return (255.0 * x.abs()).clamp(0.0, 255.0)


class NoisyFrequencyProtector:
    """A frequency transform's channels, clipped, plus Laplace noise per channel, un-mixed (DCTDP).

    Args:
        transform: the transform, channel masking and normalisation.
        scales: the Laplace scale of every kept channel (or of every coefficient).
        clip: coefficients are clipped to [-clip, clip] before the noise (None: not clipped).

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255]; labels: :math:`(B,)` (unused).
        - scales: :math:`(K,)` or :math:`(K, h, w)`.
        - Output: x :math:`(B, K, h, w)`; partners, weights :math:`(B, 1)`.

    Raises:
        ValueError: the scales do not match the transform's channels, or a negative scale.
    """

    def __init__(self, transform: FrequencyTransform, scales: Tensor, clip: float | None = None) -> None:
        if scales.dim() not in (1, 3) or scales.shape[0] != transform.mask.num_kept or bool((scales < 0).any()):
            raise ValueError(
                f"Expected {transform.mask.num_kept} non-negative scales (one per kept channel), got shape {tuple(scales.shape)}"
            )
        self.transform, self.scales, self.clip = transform.eval(), scales.detach().float(), clip

    @classmethod
    def from_encoder(cls, encoder: NoisyFrequencyEncoder) -> "NoisyFrequencyProtector":
        """The white-box protector of a trained model's noisy encoder: its transform, learned scales and clip."""
        return cls(encoder.transform, encoder.noise.scales(), encoder.noise.clip)

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> ProtectedPairs:
        x = self.transform(images)
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return _unmixed(add_laplace_noise(x, self.scales, generator))


def surrogate_protector(
    stats: RunningChannelStats,
    k: int | None = 2,
    params: ExportParams | None = None,
    mixing: MixingParams | None = None,
    channels: int | None = None,
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
            number, the guess keeps that many highest-energy channels of it instead (``ppfrfd_faithful``'s choice).

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
        masker = build_masker(
            dataclasses.replace(params, keep_lowest_energy=None, keep_highest_energy=channels), stats, mixing
        )
    return MaskerProtector(masker, MixingConfig.from_params(mixing) if k is not None and k > 1 else None)
