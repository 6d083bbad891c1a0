"""What the FR network sees: the input encoder of a trained model, and its spec stored in ``model.pt``.

Encoders are building blocks; a method (:mod:`fmix.methods`) picks one. Kinds:

- ``rgb``: aligned RGB in [0, 255] -> ``(x - 127.5) / 128`` (``none``, and the pixel-domain methods);
- ``frequency``: the frequency transform (:class:`fmix.freq.transform.FrequencyTransform`: masked or
  all frequency channels, no policy, no mixing);
- ``noisy_frequency``: frequency channels clipped to [-C, C] plus Laplace noise whose per-channel
  scale is learned under a fixed privacy budget (DCTDP, :class:`LaplaceBudgetNoise`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmix.freq import DC_CHANNELS, FrequencyMask
from fmix.freq.transform import FrequencyTransform

ENCODER_KINDS = ("rgb", "frequency", "noisy_frequency")


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
    """Aligned RGB -> protected frequency channels (the frequency transform, no mixing).

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - Output: :math:`(B, K, Hu/8, Wu/8)`.
    """

    def __init__(self, transform: FrequencyTransform, input_size: int = 112) -> None:
        super().__init__()
        self.transform = transform
        self.channels = transform.channels
        self.size = input_size * transform.upsample // 8

    def forward(self, images: Tensor) -> Tensor:
        return self.transform(images)


def add_laplace_noise(x: Tensor, scales: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x`` plus Laplace noise of scale ``scales[c]`` on channel ``c``.

    Args:
        x: the channels.
        scales: the Laplace scale of every channel.
        generator: where the uniform draws come from (None: torch's global generator).

    Shape:
        - x: :math:`(B, K, h, w)`; scales: :math:`(K,)`.
        - Output: :math:`(B, K, h, w)`.
    """
    u = (
        torch.rand(x.shape, generator=generator, dtype=torch.float32, device=x.device).clamp_min(1e-7) - 0.5
    )  # in (-0.5, 0.5): finite noise
    unit = -torch.sign(u) * torch.log1p(-2.0 * u.abs())  # Laplace(0, 1) by inverse CDF
    return x + scales.to(x.dtype)[None, :, None, None] * unit.to(x.dtype)


class LaplaceBudgetNoise(nn.Module):
    """Clip each coefficient to [-C, C], add Laplace noise with a learned per-channel scale, within budget epsilon.

    The Laplace mechanism on one face's clipped coefficients: replacing the face by any other
    changes each coefficient by at most ``2 C`` (its sensitivity), so noise of scale ``b_c`` on
    the ``h w`` coefficients of channel ``c`` costs ``2 C h w / b_c`` and the whole face
    ``epsilon = sum_c 2 C h w / b_c`` (pure epsilon-DP per face, basic composition over its
    coefficients). The budget is split over the channels by a learned softmax ``a = softmax(logits)``:
    ``b_c = 2 C h w / (epsilon a_c)``, so the spent budget is ``epsilon`` exactly whatever the
    logits; training moves the noise to the channels the FR network needs least. Noise is drawn
    (from torch's global generator) in training and evaluation alike: the representation never
    leaves without it.

    Args:
        channels: K, the channels.
        size: h = w, the side of a channel map.
        epsilon: the budget per face, > 0.
        clip: C, > 0.

    Shape:
        - x: :math:`(B, K, h, w)`.
        - Output: :math:`(B, K, h, w)`.

    Raises:
        ValueError: epsilon or clip not positive.
    """

    def __init__(self, channels: int, size: int, epsilon: float, clip: float) -> None:
        super().__init__()
        if not epsilon > 0 or not clip > 0:
            raise ValueError(f"Expected epsilon > 0 and clip > 0, got epsilon={epsilon}, clip={clip}")
        self.channels, self.size, self.epsilon, self.clip = channels, size, float(epsilon), float(clip)
        self.logits = nn.Parameter(torch.zeros(channels))

    def scales(self) -> Tensor:
        """The Laplace scale ``b_c`` of every channel, shape :math:`(K,)`."""
        share = torch.softmax(self.logits.double(), dim=0)
        return (2.0 * self.clip * self.size * self.size / (self.epsilon * share)).to(self.logits.dtype)

    def spent_epsilon(self) -> float:
        """``sum_c 2 C h w / b_c``, computed from the scales themselves (equals ``epsilon`` up to rounding)."""
        return float((2.0 * self.clip * self.size * self.size / self.scales().detach().double()).sum())

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Clip, then add the noise (drawn from ``generator``, or torch's global generator when None)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Expected x of shape (B, {self.channels}, h, w), got {tuple(x.shape)}")
        return add_laplace_noise(x.clamp(-self.clip, self.clip), self.scales(), generator)


class NoisyFrequencyEncoder(nn.Module):
    """Frequency channels (a frequency transform) through :class:`LaplaceBudgetNoise`.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - Output: :math:`(B, K, Hu/8, Wu/8)`.
    """

    def __init__(self, transform: FrequencyTransform, epsilon: float, clip: float, input_size: int = 112) -> None:
        super().__init__()
        self.frequency = FrequencyEncoder(transform, input_size)
        self.channels, self.size = self.frequency.channels, self.frequency.size
        self.noise = LaplaceBudgetNoise(self.channels, self.size, epsilon, clip)

    @property
    def transform(self) -> FrequencyTransform:
        return self.frequency.transform

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.noise(self.frequency(images), generator)


def encoder_spec(method: str, encoder: nn.Module) -> dict:
    """What :func:`encoder_from_spec` needs to rebuild an encoder (stored with the trained model).

    Args:
        method: the training method (recorded for the reader).
        encoder: an encoder of :data:`ENCODER_KINDS`.

    Returns:
        A plain dict: ``method``, ``kind`` and, for the frequency kinds, upsample, kept channels,
        their statistics and whether DC may be kept; for ``noisy_frequency`` also epsilon, clip and
        the learned logits.

    Raises:
        TypeError: an encoder of no known kind.
    """
    if isinstance(encoder, RgbEncoder):
        return {"method": method, "kind": "rgb"}
    if not isinstance(encoder, (FrequencyEncoder, NoisyFrequencyEncoder)):
        raise TypeError(f"Expected an encoder of kind {ENCODER_KINDS}, got {type(encoder).__name__}")
    transform = encoder.transform
    mask = transform.mask
    spec = {
        "method": method,
        "kind": "frequency",
        "upsample": transform.upsample,
        "kept_channels": mask.kept.tolist(),
        "channel_mean": mask.mean.tolist(),
        "channel_std": mask.std.tolist(),
        "allow_dc": bool(set(mask.kept.tolist()) & set(DC_CHANNELS)),
    }
    if isinstance(encoder, NoisyFrequencyEncoder):
        noise = encoder.noise
        spec.update(
            kind="noisy_frequency",
            epsilon=noise.epsilon,
            clip=noise.clip,
            noise_logits=noise.logits.detach().cpu().tolist(),
        )
    return spec


def encoder_from_spec(spec: dict) -> nn.Module:
    """Rebuild the encoder of a trained model from its spec.

    Args:
        spec: :func:`encoder_spec`'s dict (``kind`` and, for the frequency kinds, ``allow_dc``
            required: :class:`fmix.models.artifact.ModelRecord` fills them in for an old ``model.pt``).

    Returns:
        The encoder.

    Raises:
        ValueError: an unknown kind.
        KeyError: a part of the spec is missing.
    """
    kind = spec["kind"]
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; known: {', '.join(ENCODER_KINDS)}")
    if kind == "rgb":
        return RgbEncoder()
    mask = FrequencyMask(
        torch.tensor(spec["kept_channels"]),
        torch.tensor(spec["channel_mean"]),
        torch.tensor(spec["channel_std"]),
        allow_dc=spec["allow_dc"],
    )
    transform = FrequencyTransform(mask, spec["upsample"])
    if kind == "frequency":
        return FrequencyEncoder(transform)
    encoder = NoisyFrequencyEncoder(transform, spec["epsilon"], spec["clip"])
    with torch.no_grad():
        encoder.noise.logits.copy_(torch.tensor(spec["noise_logits"]))
    return encoder
