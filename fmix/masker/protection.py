"""Protection in one object: the mask (with its upsampling and k policy), the mixing configuration, the draws.

:class:`Protection` is how every path protects faces: training (:mod:`fmix.train`, on faces the
method's encoder already masked), ``fmix mask`` (a release, through the exported masker on ONNX
Runtime) and the attacks (the white-box attacker's copy of the owner's protection). It holds:

- ``graph``: (images, policy_noise) -> (masked, k), a :class:`~fmix.masker.module.Masker` (mask,
  upsample and k policy in one module) or an ONNX Runtime session wrapper; None when the caller
  encodes the faces itself (training);
- ``mixing``: the :class:`MixingConfig` (k_max, weight law, cap, sign mask, channel permutation,
  rescaling), or None for masking without mixing.

Order of draws from the generator, per batch: policy noise (B,), then the channel permutation (if
enabled), then partners, weights and sign mask (:func:`fmix.freq.sample_mixing`). The same seed
and batch give the same protected samples on every path. Where the generator comes from is the
caller's business: a release draws it from :class:`fmix.release.randomness.ReleaseRandomness`
(the OS CSPRNG by default, or a secret key; no seed recorded).

Two ways to mix a batch: :meth:`Protection.protect` makes one sample per face with partners from
the batch (each face is in about ``k`` samples: training inside the loop, where nothing leaves the
owner, and the attacks' training pairs), and :meth:`Protection.protect_groups` partitions the batch
so each face is in exactly one sample (what a release uses: no system of equations links its
samples).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from fmix.freq import apply_mixing, draw_groups, draw_sign_mask, mix_weights, random_channel_permutation, sample_mixing
from fmix.freq.mixing import LAWS, mix_as_matrix
from fmix.params import MixingParams


@dataclass(frozen=True)
class MixingConfig:
    """How protected samples are mixed (stored in the masker's metadata as ``mixing``).

    Args:
        k_max: the most faces in one mix (columns of partners and weights).
        weight_law: ``"dirichlet"`` or ``"instahide"`` (:func:`fmix.freq.mix_weights`).
        cap: the largest mixing weight (None: no cap).
        sign_flip: a random +-1 per coefficient after mixing (InstaHide).
        permute_channels: a random channel order per sample before mixing (PPFR-FD).
        rescale: divide mixes by the weights' L2 norm (same variance as an un-mixed face).
        noise: std of the Gaussian noise added to every coefficient of a mix, after the sign mask
            (0: none). Un-mixed samples get none.

    Raises:
        ValueError: k_max < 1, an unknown weight law or negative noise.
    """

    k_max: int
    weight_law: str = "dirichlet"
    cap: float | None = 0.65
    sign_flip: bool = False
    permute_channels: bool = False
    rescale: bool = True
    noise: float = 0.0

    def __post_init__(self) -> None:
        if type(self.k_max) is not int or self.k_max < 1:
            raise ValueError(f"Expected k_max an integer >= 1, got {self.k_max!r}")
        if self.weight_law not in LAWS:
            raise ValueError(f"Expected weight_law in {LAWS}, got {self.weight_law!r}")
        for name in ("sign_flip", "permute_channels", "rescale"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"Expected {name} true or false, got {getattr(self, name)!r}")
        if self.cap is not None and not (_is_finite_number(self.cap) and 0 < self.cap <= 1):
            raise ValueError(f"Expected cap null or a number in (0, 1], got {self.cap!r}")
        if not (_is_finite_number(self.noise) and self.noise >= 0):
            raise ValueError(f"Expected noise a finite number >= 0, got {self.noise!r}")

    @classmethod
    def from_params(cls, params: MixingParams) -> "MixingConfig":
        """The configuration of the ``mixing`` params section (k_max: its largest k)."""
        return cls(
            max(params.k_values),
            params.weight_law,
            params.cap,
            params.sign_flip,
            params.permute_channels,
            params.rescale,
            params.noise,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _is_finite_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _with_noise(mixed: Tensor, noise: Tensor | None) -> Tensor:
    return mixed if noise is None else mixed + noise.to(mixed.device, mixed.dtype)


class ReplayedDraws(NamedTuple):
    """The random parts of a protected batch (:meth:`Protection.replay_draws`); ``None`` where not drawn."""

    permutation: Tensor | None
    partners: Tensor
    weights: Tensor
    sign: Tensor | None
    noise: Tensor | None


class ProtectedBatch(NamedTuple):
    """Protected samples with their mixed labels.

    ``labels[b, j]`` is the identity label of constituent ``j`` of sample ``b`` with weight
    ``weights[b, j]`` (beyond ``k[b]``: label -1, weight 0). ``partners[b, j]`` is the constituent's
    index in the batch: it stays in memory (training's soft labels, the attacks' targets) and is
    never written into a release. ``fallback[b]`` is True where the batch had too few other
    identities, so a partner shares the anchor's identity.
    """

    x: Tensor
    k: Tensor
    labels: Tensor
    weights: Tensor
    fallback: Tensor
    partners: Tensor


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


GraphFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _mix_used_columns(
    x: Tensor, partners: Tensor, weights: Tensor, sign: Tensor | None, sizes: Tensor, rescale: bool
) -> Tensor:
    """:func:`~fmix.freq.apply_mixing` over the first ``max(sizes)`` columns only: the others weigh 0
    in every row, so the mix is the same for less work (``sizes``: faces per row)."""
    columns = max(int(sizes.max()), 1) if sizes.numel() else 1
    return apply_mixing(x, partners[:, :columns], weights[:, :columns], sign, rescale)


def mix_noise(shape: tuple[int, ...] | torch.Size, std: float, generator: torch.Generator) -> Tensor:
    """The noise a mix gets (``mixing.noise``, drawn last): ``std`` times float32 standard normals from ``generator`` (CPU)."""
    return std * torch.randn(shape, generator=generator, dtype=torch.float32)


class Protection:
    """The owner's protection: masking graph (mask, upsample, k policy) and mixing.

    Args:
        graph: (images, policy_noise) -> (masked, k): a :class:`~fmix.masker.module.Masker`, an
            ONNX Runtime wrapper, or None when faces come already encoded (:meth:`protect_encoded`).
        mixing: the mixing configuration, or None to mask without mixing.
        k_values: the k the policy may choose (None: ``graph.k_values`` when the graph has them).

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - labels: :math:`(B,)` identity labels (partners prefer other identities).
    """

    def __init__(
        self, graph: GraphFn | None, mixing: MixingConfig | None, k_values: tuple[int, ...] | None = None
    ) -> None:
        self.graph, self.mixing = graph, mixing
        if k_values is None and graph is not None and hasattr(graph, "k_values"):
            k_values = tuple(torch.as_tensor(graph.k_values).tolist())
        self.k_values = k_values

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], graph: GraphFn) -> "Protection":
        """The protection an exported masker describes: its graph and the ``mixing`` of its metadata.

        Args:
            metadata: the masker's metadata (JSON strings, as ``masker.onnx`` stores them).
            graph: the masker itself (torch or ONNX Runtime) or one rebuilt from the metadata.

        Raises:
            ValueError: the metadata lacks ``mixing`` or ``k_values``.
        """
        missing = [key for key in ("mixing", "k_values") if key not in metadata]
        if missing:
            raise ValueError(f"masker metadata lacks {', '.join(missing)}: not a masker of `fmix export`")
        return cls(graph, MixingConfig(**json.loads(metadata["mixing"])), tuple(json.loads(metadata["k_values"])))

    @property
    def smallest_group(self) -> int:
        """The fewest faces a released sample mixes: the policy's smallest k (2 when the k values are unknown)."""
        return max(2, min(self.k_values)) if self.k_values else 2

    @property
    def k_max(self) -> int:
        """Columns of partners and weights (1 without mixing)."""
        return self.mixing.k_max if self.mixing is not None else 1

    # ------------------------------------------------------------------ steps
    def mask(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The graph's masking and k (policy noise drawn first), then the optional channel permutation.

        Raises:
            ValueError: the protection has no graph (its faces come encoded).
        """
        if self.graph is None:
            raise ValueError("this protection has no masking graph: give it encoded faces (protect_encoded)")
        masked, k = self.graph(images, self._draw_policy_noise(images.shape[0], generator))
        return self.permute(masked, generator), k

    def permute(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random channel order per sample when ``mixing.permute_channels`` (else ``x`` unchanged)."""
        permutation = self._draw_permutation(x.shape[0], x.shape[1], generator)
        if permutation is None:
            return x
        return torch.gather(x, 1, permutation.to(x.device)[:, :, None, None].expand_as(x))

    # Every random draw of a protection goes through these, in this order: policy noise, channel
    # permutation, mixing (partners or groups, weights, signs), then the mixes' noise.
    @staticmethod
    def _draw_policy_noise(batch: int, generator: torch.Generator) -> Tensor:
        return torch.rand(batch, generator=generator)

    def _draw_permutation(self, batch: int, channels: int, generator: torch.Generator) -> Tensor | None:
        if self.mixing is None or not self.mixing.permute_channels:
            return None
        return random_channel_permutation(batch, channels, generator)

    def _draw_noise(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> Tensor | None:
        return None if self.mixing.noise == 0 else mix_noise(shape, self.mixing.noise, generator)

    def replay_draws(
        self, labels: Tensor, k: Tensor, sample_shape: tuple[int, ...], generator: torch.Generator
    ) -> "ReplayedDraws":
        """The random draws :meth:`protect` makes on a batch, in its order, without faces or a graph.

        What a seed-replay attack needs (:func:`fmix.attacks.unmix.regenerate_secrets`): with the
        generator the owner used, the partners, weights, signs and noise of every sample.

        Args:
            labels: the identity label of every face (the anchors).
            k: faces per sample, as the policy drew them.
            sample_shape: (K, h, w) of one masked face.
            generator: CPU generator, as the owner seeded it.

        Shape:
            - labels, k: :math:`(B,)`.

        Raises:
            ValueError: the protection does not mix.
        """
        if self.mixing is None:
            raise ValueError("this protection does not mix (no mixing configuration)")
        self._draw_policy_noise(labels.shape[0], generator)
        permutation = self._draw_permutation(labels.shape[0], sample_shape[0], generator)
        config = self.mixing
        draw = sample_mixing(
            labels,
            k,
            config.k_max,
            config.weight_law,
            config.cap,
            tuple(sample_shape) if config.sign_flip else None,
            generator,
        )
        noise = self._draw_noise((labels.shape[0], *sample_shape), generator)
        return ReplayedDraws(permutation, draw.partners, draw.weights, draw.sign, noise)

    def mix(self, x: Tensor, labels: Tensor, k: Tensor | int, generator: torch.Generator) -> ProtectedBatch:
        """Mix encoded samples: partners, weights and sign mask drawn and applied, then the noise (``mixing.noise``).

        Args:
            x: encoded (masked, permuted) samples.
            labels: identity labels.
            k: faces per sample in [1, k_max] (an int applies to every sample).
            generator: CPU generator.

        Shape:
            - x: :math:`(B, C, h, w)`; labels, k: :math:`(B,)`.
            - Output: x :math:`(B, C, h, w)`; labels, weights, partners :math:`(B, k_{max})`.

        Raises:
            ValueError: the protection does not mix.
        """
        config = self.mixing
        if config is None:
            raise ValueError("this protection does not mix (no mixing configuration)")
        if isinstance(k, int):
            k = torch.full((x.shape[0],), k, dtype=torch.long)
        k = k.to(labels.device)
        sign_shape = tuple(x.shape[1:]) if config.sign_flip else None
        draw = sample_mixing(
            labels, k, config.k_max, config.weight_law, config.cap, sign_shape, generator, dtype=x.dtype
        )
        partners, weights = draw.partners.to(x.device), draw.weights.to(x.device)
        sign = None if draw.sign is None else draw.sign.to(x.device)
        mixed = _with_noise(
            mix_as_matrix(x, partners, weights, sign, config.rescale), self._draw_noise(x.shape, generator)
        )
        unused = torch.arange(config.k_max, device=labels.device)[None, :] >= k[:, None]
        constituent_labels = labels[draw.partners].masked_fill(unused, -1)
        return ProtectedBatch(mixed, k, constituent_labels, draw.weights, draw.fallback, draw.partners)

    def unmixed(self, x: Tensor, labels: Tensor) -> ProtectedBatch:
        """Encoded samples as a batch of single constituents (k = 1, weight 1)."""
        batch, columns = x.shape[0], self.k_max
        weights = torch.zeros(batch, columns, device=labels.device)
        weights[:, 0] = 1.0
        same = labels[:, None].expand(-1, columns).clone()
        partners = torch.arange(batch, device=labels.device)[:, None].expand(-1, columns).clone()
        return ProtectedBatch(
            x,
            torch.ones(batch, dtype=torch.long, device=labels.device),
            same,
            weights,
            torch.zeros(batch, dtype=torch.bool, device=labels.device),
            partners,
        )

    # ------------------------------------------------------------------ whole batches
    def protect_encoded(
        self, x: Tensor, labels: Tensor, k: Tensor | int, generator: torch.Generator, mix: bool = True
    ) -> ProtectedBatch:
        """Protect faces an encoder already masked (training): permutation, then mixing.

        Args:
            x: encoded faces.
            labels: identity labels.
            k: faces per sample (ignored without mixing).
            generator: CPU generator.
            mix: False (or no mixing configuration): permutation only.

        Shape:
            - x: :math:`(B, C, h, w)`; labels: :math:`(B,)`.
        """
        x = self.permute(x, generator)
        return self.mix(x, labels, k, generator) if mix and self.mixing is not None else self.unmixed(x, labels)

    def protect(self, images: Tensor, labels: Tensor, generator: torch.Generator, mix: bool = True) -> ProtectedBatch:
        """Mask a batch with the graph, then mix it with the k the policy drew (one sample per face).

        Args:
            images: aligned RGB faces in [0, 255].
            labels: identity label of every face.
            generator: CPU generator, seeded by the caller.
            mix: False masks without mixing (k = 1; verification and enrolment faces).

        Shape:
            - images: :math:`(B, 3, H, W)`; labels: :math:`(B,)`.
            - Output: x :math:`(B, K, h, w)`; k :math:`(B,)`; labels, weights, partners :math:`(B, k_{max})`.

        Returns:
            The protected batch (on the CPU for a CPU graph).
        """
        masked, k = self.mask(images, generator)
        if not mix or self.mixing is None:
            return self.unmixed(masked, labels)
        return self.mix(masked, labels, k, generator)

    def protect_groups(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> GroupedBatch:
        """Mask a batch, partition it into groups of the policy's k, and mix each group once.

        Draws, in order: policy noise (B,), the channel permutation (if enabled), the groups
        (:func:`fmix.freq.draw_groups`, the group size being the k the policy drew for the face
        that starts it), the weights, the sign mask, then the noise.

        Shape:
            - images: :math:`(B, 3, H, W)`; labels: :math:`(B,)`.
            - Output: x :math:`(G, K, h, w)` with :math:`G \\approx B / mean(k)`; k, fallback
              :math:`(G,)`; labels, weights and members :math:`(G, k_{max})`.

        Raises:
            ValueError: the protection does not mix.
        """
        config = self.mixing
        if config is None:
            raise ValueError("a one-use-per-face release mixes: this protection has no mixing configuration")
        masked, k = self.mask(images, generator)
        groups = draw_groups(labels, k.clamp(max=config.k_max), config.k_max, generator, self.smallest_group)
        weights = mix_weights(groups.size, config.k_max, config.weight_law, config.cap, generator)
        sign = (
            draw_sign_mask(groups.size.numel(), tuple(masked.shape[1:]), generator, masked.device, masked.dtype)
            if config.sign_flip
            else None
        )
        mixed = _mix_used_columns(masked, groups.members, weights, sign, groups.size, config.rescale)
        mixed = _with_noise(mixed, self._draw_noise(mixed.shape, generator))
        unused = torch.arange(config.k_max)[None, :] >= groups.size[:, None]
        constituent_labels = labels[groups.members].masked_fill(unused, -1)
        return GroupedBatch(
            mixed, groups.size, constituent_labels, weights, groups.fallback, groups.members, groups.leftover
        )
