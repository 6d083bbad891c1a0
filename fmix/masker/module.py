"""The exportable masker: the frequency transform (:class:`fmix.freq.transform.FrequencyTransform`) + the k policy, one module.

Everything deterministic lives here and goes into ``masker.onnx``. The random parts of a
protected sample (policy draw, channel permutation, partners, weights, signs) come from
:mod:`fmix.masker.protection`, shared by the torch and the ONNX Runtime paths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fmix.freq import FrequencyMask
from fmix.freq.transform import FrequencyTransform


class FixedKPolicy(nn.Module):
    """The policy "always k": a one-hot categorical over ``k_values``.

    Args:
        k: the constant number of mixed faces.
        k_values: the categories of the policy.
    """

    def __init__(self, k: int, k_values: tuple[int, ...]) -> None:
        super().__init__()
        if k not in k_values:
            raise ValueError(f"k={k} must be one of k_values={list(k_values)}")
        self.register_buffer("probs", torch.tensor([float(v == k) for v in k_values]))

    def forward(self, masked: Tensor, progress: Tensor) -> Tensor:
        """Probabilities of shape (B, len(k_values)), the same one-hot row for every sample."""
        return self.probs.to(masked.dtype).expand(masked.shape[0], -1)


class StrategyPolicy(nn.Module):
    """A strategy network's logits turned into probabilities (for export).

    Args:
        network: the strategy network.
        signal: the module computing its per-sample outside signal from the masked faces (the
            FR network's confidence), or None when the network reads none.
    """

    def __init__(self, network: nn.Module, signal: nn.Module | None = None) -> None:
        super().__init__()
        self.network, self.signal = network, signal

    def forward(self, masked: Tensor, progress: Tensor) -> Tensor:
        signal = self.signal(masked) if self.signal is not None else None
        return torch.softmax(self.network(masked, progress, signal).float(), dim=1).to(masked.dtype)


def sample_k(probs: Tensor, noise: Tensor, k_values: Tensor) -> Tensor:
    """Draw one k per sample from its categorical by inverse CDF with given uniform noise.

    Deterministic given ``noise`` and made of cumsum / compare / sum / gather only, so the same
    draw happens in torch and inside the ONNX graph.

    Args:
        probs: per-sample probabilities over ``k_values`` (rows sum to 1).
        noise: uniform numbers in [0, 1), one per sample.
        k_values: the k of each category.

    Shape:
        - probs: :math:`(B, N)`.
        - noise: :math:`(B,)`.
        - k_values: :math:`(N,)`.
        - Output: :math:`(B,)` int64.

    Returns:
        The chosen k of every sample.
    """
    below = probs.cumsum(dim=1) <= noise[:, None].to(probs.dtype)
    index = below.sum(dim=1).clamp(max=k_values.numel() - 1)
    return k_values[index]


class Masker(nn.Module):
    """Aligned RGB faces -> protected frequency channels and the k the policy picks for each.

    Args:
        mask: channel selection and normalisation.
        upsample: bilinear factor ``u`` before the block DCT.
        policy: module mapping (masked, progress) to probabilities over ``k_values``.
        k_values: the k of each policy category.
        progress: the training-progress input given to the policy at export time.

    Shape:
        - images: :math:`(B, 3, H, W)` RGB in [0, 255], float.
        - policy_noise: :math:`(B,)` uniform in [0, 1).
        - Output: masked :math:`(B, K, Hu/8, Wu/8)` and k :math:`(B,)` int64.
    """

    def __init__(
        self, mask: FrequencyMask, upsample: int, policy: nn.Module, k_values: tuple[int, ...], progress: float = 1.0
    ) -> None:
        super().__init__()
        self.transform = FrequencyTransform(mask, upsample)
        self.policy = policy
        self.register_buffer("k_values", torch.tensor(k_values, dtype=torch.long))
        self.register_buffer("progress", torch.tensor([progress]))

    @property
    def mask(self) -> FrequencyMask:
        """The channel selection and normalisation (the transform's)."""
        return self.transform.mask

    @property
    def upsample(self) -> int:
        """The transform's ``u``."""
        return self.transform.upsample

    def masked(self, images: Tensor) -> Tensor:
        """The protected channels of un-mixed faces (no policy): ``mask(block_dct(images))``."""
        return self.transform(images)

    def forward(self, images: Tensor, policy_noise: Tensor) -> tuple[Tensor, Tensor]:
        masked = self.masked(images)
        progress = self.progress.to(masked.dtype).expand(masked.shape[0])
        return masked, sample_k(self.policy(masked, progress), policy_noise, self.k_values)
