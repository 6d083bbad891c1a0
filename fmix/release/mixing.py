"""The mixing of a one-use release, row by row into the storage dtype: the numbers of
:meth:`~fmix.masker.protection.Protection.protect_groups`, bit for bit, at a fraction of its cost.

``protect_groups`` builds every intermediate of a shard at full size (a gathered copy of the batch
per column, the weighted sums, a float32 +-1 tensor of the sign mask, the noise, the mixes) and
``fmix mask`` then converts the mixes to float16: some ten passes over 35-70 MB per shard, each
into freshly allocated (page-faulted) memory. :func:`mix_groups` draws the same
random parts from the same generator in the same order (groups, weights, the sign mask's bytes,
the noise) and computes each released sample on its own in a small float32 buffer that stays in
the cache, with the same float32 operations in the same order (``w_0 x_0``, ``+ w_j x_j`` for
every column up to the largest group, ``/ ||w||``, ``* sign``, ``+ noise``), then rounds it once
into the shard's dtype.

:func:`release_groups` masks a release's batch a few faces at a time into a buffer its thread
keeps (:meth:`~fmix.masker.onnx_masker.OnnxMasker.run_into`); with a strategy network, whose k
costs far more than the masking, only the faces that start a group have their k drawn
(:func:`fmix.freq.mixing.draw_groups_on_demand`: a face that joins a group never uses its own), one face per call
(:meth:`~fmix.masker.onnx_masker.OnnxMasker.policy_k`): about one face in mean k. ONNX Runtime
on the CPU computes a face as it computes it in the whole batch (checked on a probe batch by
:meth:`~fmix.masker.onnx_masker.OnnxMasker.split_graph`, else the whole graph runs on the whole
batch). ``tests/release/test_release_reproducible.py`` holds all of it equal to ``protect_groups``
and the releases equal to those written before.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from fmix.freq import draw_groups, mix_weights
from fmix.freq.mixing import draw_groups_on_demand
from fmix.masker.onnx_masker import OnnxMasker
from fmix.masker.protection import GroupedBatch, Protection, mix_noise


def release_groups(
    masker: OnnxMasker,
    faces: np.ndarray,
    labels: Tensor,
    generator: torch.Generator,
    dtype: str = "float32",
    noise_scale: np.ndarray | None = None,
) -> GroupedBatch:
    """``masker.protection.protect_groups(images, labels, generator)`` of the faces, the samples in ``dtype``.

    Where the masker computes each face as it computes it in the batch (:attr:`OnnxMasker.per_face`:
    ONNX Runtime on the CPU), the faces are masked a few at a time into a buffer this thread
    keeps for its next batch; with a strategy network, only the faces that start a group have
    their k drawn (:attr:`OnnxMasker.policy_session`).

    Args:
        masker: the release's masker.
        faces: the batch, uint8 RGB.
        labels: identity label of every face.
        generator: the batch's generator.
        dtype: of the samples (see :func:`mix_groups`).
        noise_scale: per label, the factor on the noise of a mix holding it (see :func:`mix_groups`).

    Shape:
        - faces: :math:`(B, S, S, 3)`; labels: :math:`(B,)`.
    """
    protection = masker.protection
    if not masker.per_face:
        images = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32))
        masked, k = protection.mask(images, generator)
        return mix_groups(protection, masked, k, labels, generator, dtype, noise_scale)
    graph = _MaskInto(masker, faces)
    # Protection.mask with this graph draws what it draws with the masker's (policy noise, channel order).
    masked, k = Protection(graph, protection.mixing, protection.k_values).mask(torch.from_numpy(faces), generator)
    return mix_groups(protection, masked, graph.k_of if k is None else k, labels, generator, dtype, noise_scale)


class _MaskInto:
    """A graph for :meth:`Protection.mask` on uint8 faces: masks them into this thread's buffer.

    Its k: the masker's for every face, or None with a policy session (then :meth:`k_of`, face by face).
    """

    buffers = threading.local()

    def __init__(self, masker: OnnxMasker, faces: np.ndarray) -> None:
        self.masker, self.faces = masker, faces
        self.masked: np.ndarray | None = None
        self.noise: np.ndarray | None = None

    def __call__(self, images: Tensor, policy_noise: Tensor) -> tuple[Tensor, Tensor | None]:
        masker, batch = self.masker, len(self.faces)
        side = masker.input_size * masker.upsample // 8
        shape = (batch, len(masker.settings["kept_channels"]), side, side)
        buffer = getattr(self.buffers, "masked", None)
        if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < batch:
            buffer = self.buffers.masked = np.empty(shape, np.float32)
        self.masked, self.noise = buffer[:batch], policy_noise.numpy()
        if masker.policy_session is not None:
            masker.run_into(self.faces, None, self.masked, None)
            return torch.from_numpy(self.masked), None
        k = np.empty(batch, np.int64)
        masker.run_into(self.faces, self.noise, self.masked, k)
        return torch.from_numpy(self.masked), torch.from_numpy(k)

    def k_of(self, face: int) -> int:
        """The k the masker draws for ``face`` with its policy noise."""
        one = slice(face, face + 1)
        return int(self.masker.policy_k(self.faces[one], self.masked[one], self.noise[one])[0])


def sign_mask_bytes(samples: int, shape: tuple[int, ...], generator: torch.Generator) -> np.ndarray:
    """The random bytes :func:`fmix.freq.draw_sign_mask` draws for a sign mask, one call, same order.

    Bit ``i % 8`` of byte ``i // 8`` is the sign of coefficient ``i`` (row-major over the samples):
    1 keeps it, 0 flips it.
    """
    numel = samples * math.prod(shape)
    octets = torch.randint(0, 256, (-(-numel // 8), 1), generator=generator, device=generator.device, dtype=torch.uint8)
    return octets.numpy().reshape(-1)


def mix_groups(
    protection: Protection,
    masked: Tensor,
    k: Tensor | Callable[[int], int],
    labels: Tensor,
    generator: torch.Generator,
    dtype: str = "float32",
    noise_scale: np.ndarray | None = None,
) -> GroupedBatch:
    """:meth:`Protection.protect_groups` after its masking, the samples in ``dtype``.

    Args:
        protection: the protection (its ``mixing`` configuration).
        masked: what :meth:`Protection.mask` returned for the batch (after its draws from ``generator``).
        k: the k the policy drew for every face, or the function that gives it for one face
            (asked for the faces that start a group only: :func:`fmix.freq.mixing.draw_groups_on_demand`).
        labels: identity label of every face.
        generator: the batch's generator, as ``mask`` left it.
        dtype: dtype of the returned samples: ``float32`` (the numbers of ``protect_groups``) or
            ``float16`` (those numbers rounded once, as ``astype`` rounds them).
        noise_scale: per label, a factor on the noise (``mask.noise_photos``): a mix's noise is
            multiplied by its constituents' largest factor (None: ``protect_groups``' noise).

    Shape:
        - masked: :math:`(B, K, h, w)` float32; k, labels: :math:`(B,)`; noise_scale: :math:`(L,)`, L > every label.

    Returns:
        The :class:`GroupedBatch` of ``protect_groups``, its ``x`` in ``dtype``.

    Raises:
        ValueError: the protection does not mix.
    """
    config = protection.mixing
    if config is None:
        raise ValueError("a one-use-per-face release mixes: this protection has no mixing configuration")
    if callable(k):
        groups = draw_groups_on_demand(
            labels, lambda face: min(k(face), config.k_max), config.k_max, generator, protection.smallest_group
        )
    else:
        groups = draw_groups(labels, k.clamp(max=config.k_max), config.k_max, generator, protection.smallest_group)
    weights = mix_weights(groups.size, config.k_max, config.weight_law, config.cap, generator)
    count, shape = groups.size.numel(), tuple(masked.shape[1:])
    octets = sign_mask_bytes(count, shape, generator) if config.sign_flip else None
    noise = mix_noise((count, *shape), config.noise, generator).numpy() if config.noise != 0 else None
    unused = torch.arange(config.k_max)[None, :] >= groups.size[:, None]
    constituent_labels = labels[groups.members].masked_fill(unused, -1)
    if noise is not None and noise_scale is not None:
        factors = torch.from_numpy(noise_scale)[constituent_labels.clamp(min=0)].masked_fill(unused, 0.0)
        noise *= factors.max(dim=1).values.numpy().reshape(-1, *[1] * len(shape))
    columns = max(int(groups.size.max()), 1) if count else 1
    weights32 = weights.to(masked.dtype)[:, :columns]
    # The divisor of apply_mixing, computed as it computes it (same shape, same reduction).
    norm = weights32[:, :, None, None, None].square().sum(dim=1).sqrt().reshape(-1).numpy() if config.rescale else None
    x = masked.detach().cpu().contiguous().numpy()
    out = np.empty((count, *shape), dtype=np.dtype(dtype))
    _RowPlan(x, groups.members[:, :columns].numpy(), weights32.numpy(), norm, octets, noise, out).run(0, count)
    return GroupedBatch(
        torch.from_numpy(out),
        groups.size,
        constituent_labels,
        weights,
        groups.fallback,
        groups.members,
        groups.leftover,
    )


class _RowPlan:
    """Computes rows ``start:stop`` of the mixes into ``out``, one sample at a time."""

    def __init__(self, x, members, weights, norm, octets, noise, out) -> None:
        self.x, self.members, self.weights, self.norm = x, members, weights, norm
        self.octets, self.noise, self.out = octets, noise, out
        self.size = math.prod(x.shape[1:])

    def run(self, start: int, stop: int) -> None:
        x, members, weights = self.x, self.members, self.weights
        shape = x.shape[1:]
        mixed = np.empty(shape, np.float32)
        term = np.empty(shape, np.float32)
        sign = np.empty(shape, np.float32)
        for row in range(start, stop):
            np.multiply(weights[row, 0], x[members[row, 0]], out=mixed)
            for column in range(1, members.shape[1]):
                np.multiply(weights[row, column], x[members[row, column]], out=term)
                np.add(mixed, term, out=mixed)
            if self.norm is not None:
                np.divide(mixed, self.norm[row], out=mixed)
            if self.octets is not None:
                self._sign(row, sign)
                np.multiply(mixed, sign, out=mixed)
            if self.noise is not None:
                np.add(mixed, self.noise[row], out=mixed)
            self.out[row] = mixed  # one rounding into the storage dtype (none for float32)

    def _sign(self, row: int, sign: np.ndarray) -> None:
        """+1 or -1 for every coefficient of ``row``: its bits of the sign mask's bytes, times 2, minus 1."""
        first, last = row * self.size, (row + 1) * self.size
        bits = np.unpackbits(self.octets[first // 8 : -(-last // 8)], bitorder="little")
        np.multiply(
            bits[first % 8 : first % 8 + self.size].reshape(sign.shape), np.float32(2.0), out=sign, casting="unsafe"
        )
        np.subtract(sign, np.float32(1.0), out=sign)
