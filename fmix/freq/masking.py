"""Frequency masking: channel selection, normalisation and channel permutation (docs/design.md §2.3).

A masker keeps a subset of the 192 block-DCT channels (always dropping the DC channels),
normalises each kept channel with statistics computed on public data, and may shuffle the kept
channels with a per-sample permutation. :class:`FrequencyMask` applies it with index_select /
gather / arithmetic only, so it traces and exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fmix.checks import (
    check_float,
    check_int,
    check_integer,
    check_shape_bchw,
    check_tensor,
    is_tracing,
)
from fmix.freq.dct import DC_CHANNELS, NUM_CHANNELS, low_frequency_channels

STD_FLOOR = 1e-6


# --------------------------------------------------------------------------- selection


def _check_channel_list(channels: Iterable[int], name: str) -> set[int]:
    result = set()
    for channel in channels:
        if not 0 <= check_int(channel, f"every entry of {name}") < NUM_CHANNELS:
            raise ValueError(f"Expected {name} entries in [0, {NUM_CHANNELS - 1}], got {channel}")
        result.add(channel)
    return result


def _check_energy(energy: object) -> Tensor:
    energy = check_tensor(energy, "energy")
    if energy.shape != (NUM_CHANNELS,):
        raise ValueError(f"Expected energy of shape ({NUM_CHANNELS},), got {tuple(energy.shape)}")
    check_float(energy, "energy")
    if not torch.isfinite(energy).all():
        raise ValueError("Expected finite energy values, got NaN or infinity")
    return energy


def _by_energy(candidates: list[int], count: int, energy: Tensor, highest: bool, name: str) -> list[int]:
    if not 1 <= count <= len(candidates):
        raise ValueError(f"Expected {name} in [1, {len(candidates)}] (the channels not otherwise dropped), got {count}")
    # Stable sort: equal energies keep the lower channel index first.
    order = torch.sort(energy.detach().cpu()[candidates], stable=True, descending=highest).indices[:count]
    return [candidates[i] for i in order.tolist()]


def select_channels(
    drop: Iterable[int] | None = None,
    low_freq_threshold: int | None = None,
    keep_lowest_energy: int | None = None,
    energy: Tensor | None = None,
    keep_highest_energy: int | None = None,
) -> Tensor:
    """Indices of the kept frequency channels.

    The options combine in this order:

    1. start from all 192 channels;
    2. remove the channels listed in ``drop``;
    3. remove the channels with ``p + q <= low_freq_threshold`` in every colour plane
       (the default of docs/design.md §2.3: 2, i.e. 18 channels);
    4. if ``keep_lowest_energy=N``, keep only the ``N`` remaining channels of lowest
       ``energy``; if ``keep_highest_energy=N``, the ``N`` of highest ``energy`` (PPFR-FD style:
       36 channels, the most informative once the visually dominant low frequencies are gone).

    The DC channels (0, 64, 128) must end up dropped: a selection that keeps one raises.

    Args:
        drop: channel indices to drop.
        low_freq_threshold: drop channels with ``p + q`` up to this value, >= 0.
        keep_lowest_energy: number of channels to keep by lowest energy, >= 1.
        energy: per-channel energy, e.g. :func:`channel_energy` or
            :attr:`RunningChannelStats.energy` on public data; required with
            ``keep_lowest_energy`` or ``keep_highest_energy``.
        keep_highest_energy: number of channels to keep by highest energy, >= 1 (not with
            ``keep_lowest_energy``).

    Shape:
        - energy: :math:`(192,)`.
        - Output: :math:`(K,)`.

    Returns:
        Sorted int64 tensor of kept channel indices (on the CPU).

    Raises:
        ValueError: invalid indices or counts, nothing kept, a DC channel kept, both keep counts
            given, or ``energy`` missing / given without a keep count.
    """
    dropped = _check_channel_list(drop or (), "drop")
    if low_freq_threshold is not None:
        dropped |= set(low_frequency_channels(low_freq_threshold))
    candidates = [c for c in range(NUM_CHANNELS) if c not in dropped]
    if keep_lowest_energy is not None and keep_highest_energy is not None:
        raise ValueError("keep_lowest_energy and keep_highest_energy exclude each other")
    highest = keep_highest_energy is not None
    name = "keep_highest_energy" if highest else "keep_lowest_energy"
    count = keep_highest_energy if highest else keep_lowest_energy
    if count is not None:
        if energy is None:
            raise ValueError(f"{name} needs the per-channel energy tensor")
        candidates = _by_energy(candidates, check_int(count, name), _check_energy(energy), highest, name)
    elif energy is not None:
        raise ValueError("energy is only used with keep_lowest_energy or keep_highest_energy")
    if not candidates:
        raise ValueError("The selection drops every channel")
    kept_dc = sorted(set(candidates) & set(DC_CHANNELS))
    if kept_dc:
        raise ValueError(f"DC channels {DC_CHANNELS} must be dropped, but the selection keeps {kept_dc}")
    return torch.tensor(sorted(candidates), dtype=torch.long)


# --------------------------------------------------------------------------- statistics


def _check_frequency_batch(freq: object, name: str = "freq", channels: int | None = None) -> Tensor:
    freq = check_tensor(freq, name)
    check_shape_bchw(freq, name, channels)
    check_float(freq, name)
    return freq


def channel_energy(freq: Tensor) -> Tensor:
    """Mean squared coefficient of every channel, over batch and space.

    Args:
        freq: frequency channels, e.g. from :func:`fmix.freq.block_dct`.

    Shape:
        - Input: :math:`(B, C, h, w)`.
        - Output: :math:`(C,)`.

    Returns:
        The per-channel energy, same dtype as ``freq``.
    """
    freq = _check_frequency_batch(freq)
    return freq.square().mean(dim=(0, 2, 3))


def _check_kept(kept: object, channels: int) -> Tensor:
    kept = check_tensor(kept, "kept")
    check_integer(kept, "kept")
    if kept.dim() != 1 or kept.numel() == 0:
        raise ValueError(f"Expected kept of shape (K,) with K >= 1, got {tuple(kept.shape)}")
    if kept.min() < 0 or kept.max() >= channels:
        raise ValueError(f"Expected kept indices in [0, {channels - 1}], got {kept.tolist()}")
    if kept.unique().numel() != kept.numel():
        raise ValueError(f"Expected distinct kept indices, got {kept.tolist()}")
    return kept.long()


def channel_stats(freq: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the kept channels over batch and space.

    The standard deviation is the population one (divisor ``B h w``), floored at 1e-6 so that
    it can divide. For statistics over more data than one batch, use
    :class:`RunningChannelStats`, which gives the same numbers.

    Args:
        freq: frequency channels.
        kept: indices of the channels to describe.

    Shape:
        - freq: :math:`(B, C, h, w)`.
        - kept: :math:`(K,)`.
        - Output: two tensors of shape :math:`(K,)`.

    Returns:
        ``(mean, std)``, same dtype as ``freq``.
    """
    freq = _check_frequency_batch(freq)
    kept = _check_kept(kept, freq.shape[1]).to(freq.device)
    selected = freq.index_select(1, kept)
    var, mean = torch.var_mean(selected, dim=(0, 2, 3), correction=0)
    return mean, var.sqrt().clamp_min(STD_FLOOR)


class RunningChannelStats:
    """Per-channel mean, standard deviation and energy accumulated over many batches.

    Keeps the count, mean and sum of squared deviations of every channel in float64 on the
    CPU and merges batches with Chan et al.'s parallel update, which avoids the cancellation
    of a raw sum of squares. After any number of :meth:`update` calls the properties equal
    :func:`channel_stats` / :func:`channel_energy` of the concatenated batches.

    Args:
        num_channels: number of channels ``C`` of the batches.
    """

    def __init__(self, num_channels: int = NUM_CHANNELS) -> None:
        if check_int(num_channels, "num_channels") < 1:
            raise ValueError(f"Expected num_channels >= 1, got {num_channels}")
        self.num_channels = num_channels
        self.count = 0
        self._mean = torch.zeros(num_channels, dtype=torch.float64)
        self._m2 = torch.zeros(num_channels, dtype=torch.float64)

    def update(self, freq: Tensor) -> None:
        """Add a batch of frequency channels of shape :math:`(B, C, h, w)`."""
        freq = _check_frequency_batch(freq, channels=self.num_channels)
        values = freq.detach().to(dtype=torch.float64)
        n = values.shape[0] * values.shape[2] * values.shape[3]
        if n == 0:
            return
        var, mean = torch.var_mean(values, dim=(0, 2, 3), correction=0)
        mean, m2 = mean.cpu(), var.cpu() * n
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError("RunningChannelStats has seen no data; call update() first")

    @property
    def mean(self) -> Tensor:
        """Per-channel mean, float64, shape :math:`(C,)`."""
        self._require_data()
        return self._mean.clone()

    @property
    def std(self) -> Tensor:
        """Per-channel population standard deviation floored at 1e-6, float64, :math:`(C,)`."""
        self._require_data()
        return (self._m2 / self.count).sqrt().clamp_min(STD_FLOOR)

    @property
    def energy(self) -> Tensor:
        """Per-channel mean squared value, float64, shape :math:`(C,)`."""
        self._require_data()
        return self._m2 / self.count + self._mean.square()

    def stats(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` of the channels ``kept``, as :func:`channel_stats` returns them."""
        kept = _check_kept(kept, self.num_channels).cpu()
        return self.mean[kept], self.std[kept]


# --------------------------------------------------------------------------- masking


def random_channel_permutation(batch: int, k: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """One uniformly random permutation of ``k`` channels per sample.

    Made as the argsort of uniform noise, so it is vectorised and reproducible with a seeded
    generator.

    Args:
        batch: number of samples ``B``, >= 0.
        k: number of channels ``K``, >= 1.
        generator: source of randomness; its device is used when ``device`` is not given.
        device: device of the result (default: the generator's, else CPU).

    Shape:
        - Output: :math:`(B, K)`.

    Returns:
        int64 tensor whose rows are permutations of ``0..K-1``.
    """
    if check_int(batch, "batch") < 0:
        raise ValueError(f"Expected batch >= 0, got {batch}")
    if check_int(k, "k") < 1:
        raise ValueError(f"Expected k >= 1, got {k}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    noise = torch.rand(batch, k, generator=generator, device=device)
    return noise.argsort(dim=1)


def _check_permutation(permutation: object, batch: int, k: int, verify_rows: bool) -> Tensor:
    permutation = check_tensor(permutation, "permutation")
    check_integer(permutation, "permutation")
    if permutation.shape != (batch, k):
        raise ValueError(f"Expected permutation of shape ({batch}, {k}), got {tuple(permutation.shape)}")
    if verify_rows:
        expected = torch.arange(k, device=permutation.device).expand(batch, k)
        if not torch.equal(permutation.sort(dim=1).values, expected):
            raise ValueError(f"Expected every row of permutation to be a permutation of 0..{k - 1}")
    return permutation.long()


def _expand_index(index: Tensor, like: Tensor) -> Tensor:
    return index[:, :, None, None].expand(-1, -1, like.shape[2], like.shape[3])


class FrequencyMask(nn.Module):
    """Keep, normalise and optionally shuffle frequency channels.

    ``forward`` maps the 192 block-DCT channels to the ``K`` kept ones, each normalised as
    ``(x - mean) / std`` with statistics from public data, then, if a per-sample permutation
    is given, reorders them as ``out[b, j] = normalised[b, permutation[b, j]]``. ``inverse``
    undoes this and puts zeros in the dropped channels.

    The buffers ``kept``, ``mean`` and ``std`` are saved in the state dict, so the statistics
    travel with the masker.

    Args:
        kept: indices of the kept channels, e.g. from :func:`select_channels`.
        mean: per-kept-channel mean (default 0).
        std: per-kept-channel standard deviation, > 0 (default 1).
        allow_dc: allow keeping DC channels; only for the all-channel ``freq`` baseline, the
            masker of the method must drop them.

    Shape:
        - kept, mean, std: :math:`(K,)`.
    """

    kept: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        kept: Tensor,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        allow_dc: bool = False,
    ) -> None:
        super().__init__()
        kept = _check_kept(kept, NUM_CHANNELS).cpu()
        kept_dc = sorted(set(kept.tolist()) & set(DC_CHANNELS))
        if kept_dc and not allow_dc:
            raise ValueError(f"DC channels {DC_CHANNELS} must be dropped, but kept contains {kept_dc}")
        k = kept.numel()
        mean = torch.zeros(k) if mean is None else self._check_stat(mean, "mean", k)
        std = torch.ones(k) if std is None else self._check_stat(std, "std", k)
        if (std <= 0).any():
            raise ValueError("Expected std > 0 for every kept channel")
        self.register_buffer("kept", kept)
        self.register_buffer("mean", mean.detach().to(torch.float32).cpu().clone())
        self.register_buffer("std", std.detach().to(torch.float32).cpu().clone())

    @staticmethod
    def _check_stat(value: object, name: str, k: int) -> Tensor:
        value = check_tensor(value, name)
        check_float(value, name)
        if value.shape != (k,):
            raise ValueError(f"Expected {name} of shape ({k},), got {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError(f"Expected finite {name} values")
        return value

    @classmethod
    def from_state_dict(cls, state: dict, allow_dc: bool = False) -> FrequencyMask:
        """Rebuild a mask from :meth:`state_dict` output (keys ``kept``, ``mean``, ``std``)."""
        missing = {"kept", "mean", "std"} - set(state)
        if missing:
            raise ValueError(f"State dict of a FrequencyMask lacks {sorted(missing)}")
        return cls(state["kept"], state["mean"], state["std"], allow_dc=allow_dc)

    @property
    def num_kept(self) -> int:
        """Number ``K`` of kept channels."""
        return self.kept.numel()

    def forward(self, freq: Tensor, permutation: Tensor | None = None) -> Tensor:
        """Masked, normalised (and permuted) channels.

        Args:
            freq: the 192 block-DCT channels, floating dtype.
            permutation: optional per-sample channel order, e.g. from
                :func:`random_channel_permutation`.

        Shape:
            - freq: :math:`(B, 192, h, w)`.
            - permutation: :math:`(B, K)`.
            - Output: :math:`(B, K, h, w)`.

        Returns:
            The protected channels, same dtype as ``freq``.
        """
        tracing = is_tracing()
        if not tracing:
            freq = _check_frequency_batch(freq, channels=NUM_CHANNELS)
        mean, std = self._stats_like(freq)
        out = (freq.index_select(1, self.kept) - mean) / std
        if permutation is not None:
            if not tracing:
                permutation = _check_permutation(permutation, freq.shape[0], self.num_kept, False)
            out = torch.gather(out, 1, _expand_index(permutation, out))
        return out

    def inverse(self, masked: Tensor, permutation: Tensor | None = None) -> Tensor:
        """Undo :meth:`forward`: un-permute, un-normalise, zero-fill the dropped channels.

        Args:
            masked: output of :meth:`forward` (or a mix of such outputs).
            permutation: the permutation given to :meth:`forward`, if any.

        Shape:
            - masked: :math:`(B, K, h, w)`.
            - permutation: :math:`(B, K)`.
            - Output: :math:`(B, 192, h, w)`.

        Returns:
            The 192 channels with the dropped ones set to 0.
        """
        masked = _check_frequency_batch(masked, "masked", self.num_kept)
        if permutation is not None:
            permutation = _check_permutation(permutation, masked.shape[0], self.num_kept, True)
            index = _expand_index(permutation, masked)
            masked = torch.zeros_like(masked).scatter(1, index, masked)
        mean, std = self._stats_like(masked)
        values = masked * std + mean
        batch, _, h, w = masked.shape
        full = values.new_zeros(batch, NUM_CHANNELS, h, w)
        return full.index_copy(1, self.kept, values)

    def _stats_like(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean.to(dtype=x.dtype)[None, :, None, None]
        std = self.std.to(dtype=x.dtype)[None, :, None, None]
        return mean, std

    def extra_repr(self) -> str:
        return f"num_kept={self.num_kept}"
