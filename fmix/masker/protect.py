"""The random parts of protection, in one place for the torch and the ONNX Runtime paths.

Order of draws from the generator, per batch: policy noise (B,), then the channel
permutation (if enabled), then partners, weights and sign mask (:func:`fmix.freq.sample_mixing`).
The same seed and batch give the same protected samples on either path.

Two ways to mix a batch: :func:`protect_batch` makes one sample per face with partners from the
batch (each face is in about ``k`` samples: training inside the loop, where nothing leaves the
owner), and :func:`protect_groups` partitions the batch so each face is in exactly one sample
(what a release uses: no system of equations links its samples).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.freq import apply_mixing, draw_groups, mix_weights, random_channel_permutation, sample_mixing
from fmix.freq.mixing import _draw_sign


@dataclass(frozen=True)
class MixingConfig:
    """How protected training samples are mixed (stored in the masker's metadata)."""

    k_max: int
    weight_law: str = "dirichlet"
    cap: float | None = 0.65
    sign_flip: bool = False
    permute_channels: bool = False
    rescale: bool = True  # variance-preserving mixes (divide by the weights' L2 norm)

    def to_dict(self) -> dict:
        return asdict(self)


class ProtectedBatch(NamedTuple):
    """Protected samples with their mixed labels.

    ``labels[b, j]`` is the identity label of constituent ``j`` of sample ``b`` with weight
    ``weights[b, j]`` (beyond ``k[b]``: label -1, weight 0); which images were mixed is not kept.
    ``fallback[b]`` is True where the batch had too few other identities, so a partner shares
    the anchor's identity.
    """

    x: Tensor
    k: Tensor
    labels: Tensor
    weights: Tensor
    fallback: Tensor


GraphFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def protect_batch(graph: GraphFn, images: Tensor, labels: Tensor, config: MixingConfig, generator: torch.Generator, mix: bool = True) -> ProtectedBatch:
    """Mask a batch with the deterministic graph, then apply the random parts.

    Args:
        graph: (images, policy_noise) -> (masked, k): a :class:`~fmix.masker.module.Masker` or
            an ONNX Runtime session wrapper.
        images: aligned RGB faces in [0, 255].
        labels: identity label of every face.
        config: the mixing configuration.
        generator: CPU generator, seeded by the caller.
        mix: False masks without mixing (k = 1; verification and enrolment faces).

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - labels: :math:`(B,)`.
        - Output: x :math:`(B, K, h, w)`; k :math:`(B,)`; labels and weights :math:`(B, k_{max})`.

    Returns:
        The protected batch (on the CPU).
    """
    batch = images.shape[0]
    masked, k = _mask(graph, images, config, generator)
    if not mix:
        weights = torch.zeros(batch, config.k_max)
        weights[:, 0] = 1.0
        same = labels[:, None].expand(-1, config.k_max).clone()
        return ProtectedBatch(masked, torch.ones_like(k), same, weights, torch.zeros(batch, dtype=torch.bool))
    sign_shape = tuple(masked.shape[1:]) if config.sign_flip else None
    draw = sample_mixing(labels, k, config.k_max, config.weight_law, config.cap, sign_shape, generator)
    mixed = apply_mixing(masked, draw.partners, draw.weights, draw.sign, config.rescale)
    unused = torch.arange(config.k_max)[None, :] >= k[:, None]
    constituent_labels = labels[draw.partners].masked_fill(unused, -1)
    return ProtectedBatch(mixed, k, constituent_labels, draw.weights, draw.fallback)


def _mask(graph: GraphFn, images: Tensor, config: MixingConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The graph's masking and k (policy noise drawn first), then the optional channel permutation."""
    noise = torch.rand(images.shape[0], generator=generator)
    masked, k = graph(images, noise)
    if config.permute_channels:
        permutation = random_channel_permutation(images.shape[0], masked.shape[1], generator)
        masked = torch.gather(masked, 1, permutation[:, :, None, None].expand_as(masked))
    return masked, k


class GroupedBatch(NamedTuple):
    """Released samples of a batch partitioned into groups (one use per face).

    ``members[g, j]`` is the batch index of constituent ``j`` of sample ``g`` (beyond ``k[g]``:
    label -1, weight 0); ``leftover`` lists the faces that went into no sample.
    """

    x: Tensor
    k: Tensor
    labels: Tensor
    weights: Tensor
    fallback: Tensor
    members: Tensor
    leftover: Tensor


def protect_groups(graph: GraphFn, images: Tensor, labels: Tensor, config: MixingConfig, generator: torch.Generator) -> GroupedBatch:
    """Mask a batch, partition it into groups of the policy's k, and mix each group once.

    Draws, in order: policy noise (B,), the channel permutation (if enabled), the groups
    (:func:`fmix.freq.draw_groups`, the group size being the k the policy drew for the face
    that starts it), the weights, then the sign mask.

    Args:
        graph: (images, policy_noise) -> (masked, k).
        images: aligned RGB faces in [0, 255].
        labels: identity label of every face.
        config: the mixing configuration.
        generator: CPU generator.

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - labels: :math:`(B,)`.
        - Output: x :math:`(G, K, h, w)` with :math:`G \\approx B / mean(k)`; k, fallback
          :math:`(G,)`; labels, weights and members :math:`(G, k_{max})`.

    Returns:
        The released samples (on the CPU).
    """
    masked, k = _mask(graph, images, config, generator)
    groups = draw_groups(labels, k.clamp(max=config.k_max), config.k_max, generator)
    weights = mix_weights(groups.size, config.k_max, config.weight_law, config.cap, generator)
    sign = _draw_sign(groups.size.numel(), tuple(masked.shape[1:]), generator, masked.device, masked.dtype) if config.sign_flip else None
    columns = max(int(groups.size.max()), 1) if groups.size.numel() else 1  # skip the all-zero columns
    mixed = apply_mixing(masked, groups.members[:, :columns], weights[:, :columns], sign, config.rescale)
    unused = torch.arange(config.k_max)[None, :] >= groups.size[:, None]
    constituent_labels = labels[groups.members].masked_fill(unused, -1)
    return GroupedBatch(mixed, groups.size, constituent_labels, weights, groups.fallback, groups.members, groups.leftover)
