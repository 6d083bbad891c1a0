"""What the FR network sees: the input encoder of a trained model, and its spec stored in ``model.pt``.

Encoders are building blocks; a method (:mod:`fmix.methods`) picks one. Kinds:

- ``rgb``: aligned RGB in [0, 255] -> ``(x - 127.5) / 128`` (``none``, and the pixel-domain methods);
- ``frequency``: the frequency transform (:class:`fmix.freq.transform.FrequencyTransform`: masked or
  all frequency channels, no policy, no mixing);
- ``noisy_frequency``: frequency channels clipped to [-C, C] plus Laplace noise whose per-channel
  (or per-coefficient) scale is learned under a fixed privacy budget (DCTDP, :class:`LaplaceBudgetNoise`).
"""

from __future__ import annotations

import math

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
    """``x`` plus Laplace noise of scale ``scales[c]`` on channel ``c`` (or ``scales[c, i, j]`` on each coefficient).

    Args:
        x: the channels.
        scales: the Laplace scale of every channel, or of every coefficient.
        generator: where the uniform draws come from (None: torch's global generator).

    Shape:
        - x: :math:`(B, K, h, w)`; scales: :math:`(K,)` or :math:`(K, h, w)`.
        - Output: :math:`(B, K, h, w)`.
    """
    u = (
        torch.rand(x.shape, generator=generator, dtype=torch.float32, device=x.device).clamp_min(1e-7) - 0.5
    )  # in (-0.5, 0.5): finite noise
    unit = -torch.sign(u) * torch.log1p(-2.0 * u.abs())  # Laplace(0, 1) by inverse CDF
    scales = scales.to(x.dtype)
    return x + (scales[None, :, None, None] if scales.dim() == 1 else scales[None]) * unit.to(x.dtype)


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

    DCTDP's public code (TFace ``tasks/dctdp/utils.py``) differs in two ways, both available here:
    one softmax share per coefficient (``per_coefficient``: ``b_i = s_c / (epsilon a_i)``, the
    softmax over all ``K h w`` coefficients) and a nominal sensitivity ``s_c`` that no clip
    enforces (``sensitivity``; theirs is 1 in raw DCT units, never computed from data). The budget
    formula then holds for ``s_c`` (:meth:`nominal_epsilon`), but the epsilon spent
    (:meth:`spent_epsilon`) is computed from the clip alone: ``sum_i 2 C / b_i``, unbounded
    (``inf``) without a clip.

    Args:
        channels: K, the channels.
        size: h = w, the side of a channel map.
        epsilon: the budget per face, > 0.
        clip: C, > 0; None: not clipped (only with ``sensitivity``).
        sensitivity: the nominal sensitivity of each channel's coefficients, in the channels' units;
            None: ``2 C``, the bound the clip gives.
        per_coefficient: one learned budget share per coefficient instead of per channel.

    Shape:
        - x: :math:`(B, K, h, w)`.
        - sensitivity: :math:`(K,)`.
        - Output: :math:`(B, K, h, w)`.

    Raises:
        ValueError: epsilon or clip not positive, neither clip nor sensitivity, or a sensitivity
            of the wrong shape or not positive.
    """

    def __init__(
        self,
        channels: int,
        size: int,
        epsilon: float,
        clip: float | None,
        sensitivity: Tensor | None = None,
        per_coefficient: bool = False,
    ) -> None:
        super().__init__()
        if not epsilon > 0 or not (clip is None or clip > 0):
            raise ValueError(f"Expected epsilon > 0 and clip > 0, got epsilon={epsilon}, clip={clip}")
        if clip is None and sensitivity is None:
            raise ValueError("Expected a sensitivity when clip is None: nothing bounds the coefficients")
        if sensitivity is not None and (sensitivity.shape != (channels,) or not bool((sensitivity > 0).all())):
            raise ValueError(
                f"Expected a positive sensitivity of shape ({channels},), got shape {tuple(sensitivity.shape)}"
            )
        self.channels, self.size, self.epsilon = channels, size, float(epsilon)
        self.clip = None if clip is None else float(clip)
        self.per_coefficient = per_coefficient
        nominal = torch.full((channels,), 2.0 * clip) if sensitivity is None else sensitivity
        self.register_buffer("sensitivity", nominal.double(), persistent=False)
        self.logits = nn.Parameter(torch.zeros((channels, size, size) if per_coefficient else (channels,)))

    def scales(self) -> Tensor:
        """The Laplace scale ``b`` of every channel, shape :math:`(K,)`, or of every coefficient, :math:`(K, h, w)`."""
        share = torch.softmax(self.logits.double().flatten(), dim=0).view(self.logits.shape)
        if self.per_coefficient:
            scales = self.sensitivity[:, None, None] / (self.epsilon * share)
        else:
            scales = self.sensitivity * self.size * self.size / (self.epsilon * share)
        return scales.to(self.logits.dtype)

    def _epsilon(self, sensitivity: Tensor) -> float:
        per_channel = 1.0 if self.per_coefficient else float(self.size * self.size)
        inverse = per_channel / self.scales().detach().double()
        return float((sensitivity.view(-1, *[1] * (inverse.dim() - 1)) * inverse).sum())

    def nominal_epsilon(self) -> float:
        """``sum_i s_c / b_i`` for the nominal sensitivity (equals ``epsilon`` up to rounding)."""
        return self._epsilon(self.sensitivity)

    def spent_epsilon(self) -> float:
        """``sum_i 2 C / b_i``, computed from the scales themselves; ``inf`` without a clip."""
        if self.clip is None:
            return math.inf
        return self._epsilon(torch.full_like(self.sensitivity, 2.0 * self.clip))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Clip, then add the noise (drawn from ``generator``, or torch's global generator when None)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"Expected x of shape (B, {self.channels}, h, w), got {tuple(x.shape)}")
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return add_laplace_noise(x, self.scales(), generator)


class NoisyFrequencyEncoder(nn.Module):
    """Frequency channels (a frequency transform) through :class:`LaplaceBudgetNoise`.

    Args:
        transform: the frequency transform (kept channels, normalised by their statistics).
        epsilon: the budget per face.
        clip: C in normalised units; None: not clipped.
        sensitivity: a nominal sensitivity per coefficient in raw DCT units (TFace's 1.0), turned
            into each channel's normalised units by its std; None: ``2 C``.
        per_coefficient: one learned budget share per coefficient.
        raw_units: hand the noisy channels on in raw DCT units (each times its std), divided by the
            stds' root mean square, as TFace feeds its backbone raw coefficients: the channels with
            little signal (and most noise) stay small. A fixed rescaling: the noisy channels the
            attacks see (normalised) hold the same information.
        input_size: side of the aligned faces.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255].
        - Output: :math:`(B, K, Hu/8, Wu/8)`.
    """

    def __init__(
        self,
        transform: FrequencyTransform,
        epsilon: float,
        clip: float | None,
        sensitivity: float | None = None,
        per_coefficient: bool = False,
        raw_units: bool = False,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        self.frequency = FrequencyEncoder(transform, input_size)
        self.channels, self.size = self.frequency.channels, self.frequency.size
        self.raw_sensitivity = None if sensitivity is None else float(sensitivity)
        std = transform.mask.std.double()
        nominal = None if sensitivity is None else float(sensitivity) / std
        self.noise = LaplaceBudgetNoise(self.channels, self.size, epsilon, clip, nominal, per_coefficient)
        self.raw_units = raw_units
        self.register_buffer("unit_scale", (std / std.square().mean().sqrt()).float(), persistent=False)

    @property
    def transform(self) -> FrequencyTransform:
        return self.frequency.transform

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = self.noise(self.frequency(images), generator)
        return x * self.unit_scale.to(x.dtype)[None, :, None, None] if self.raw_units else x


def encoder_spec(method: str, encoder: nn.Module) -> dict:
    """What :func:`encoder_from_spec` needs to rebuild an encoder (stored with the trained model).

    Args:
        method: the training method (recorded for the reader).
        encoder: an encoder of :data:`ENCODER_KINDS`.

    Returns:
        A plain dict: ``method``, ``kind`` and, for the frequency kinds, upsample, kept channels,
        their statistics and whether DC may be kept; for ``noisy_frequency`` also epsilon, clip,
        the nominal sensitivity (raw DCT units or None), ``per_coefficient``, ``raw_units`` and the
        learned logits.

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
            sensitivity=encoder.raw_sensitivity,
            per_coefficient=noise.per_coefficient,
            raw_units=encoder.raw_units,
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
    encoder = NoisyFrequencyEncoder(
        transform,
        spec["epsilon"],
        spec["clip"],
        spec.get("sensitivity"),
        spec.get("per_coefficient", False),
        spec.get("raw_units", False),
    )
    with torch.no_grad():
        encoder.noise.logits.copy_(torch.tensor(spec["noise_logits"]))
    return encoder
