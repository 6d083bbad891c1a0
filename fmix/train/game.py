"""The adversarial game of DESIGN 3: the strategy network picks k to maximise the FR loss (REINFORCE),
under a Lagrange penalty that keeps un-mixed validation accuracy above a floor (dual ascent)."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch import Tensor

from fmix.freq import frequency_mixup
from fmix.models import DualVariable, EmaBaseline, StrategyNetwork, effective_reward, policy_loss
from fmix.params import TrainParams

# (mixed inputs, constituent labels, weights) -> per-sample FR loss
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class AdaptiveGame:
    """The strategy network, its optimiser, the REINFORCE baseline and the dual variable nu.

    Args:
        in_channels: channels of the masked anchors.
        k_values: the policy's actions.
        params: training parameters (policy lr, entropy weight, baseline momentum, floor, dual lr,
            mixing law and cap).
    """

    def __init__(self, in_channels: int, k_values: tuple[int, ...], params: TrainParams) -> None:
        self.policy = StrategyNetwork(in_channels, k_values)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=params.policy_lr)
        self.baseline = EmaBaseline(params.baseline_momentum)
        self.dual = DualVariable(params.dual_lr, params.min_val_accuracy)
        self.params = params
        self.k_max = max(k_values)

    def to(self, device: torch.device) -> "AdaptiveGame":
        self.policy.to(device)
        return self

    @torch.no_grad()
    def choose_k(self, anchors: Tensor, progress: float, generator: torch.Generator) -> Tensor:
        """k for each anchor of an FR step (the policy is not updated)."""
        return self.policy.sample(anchors, progress, generator)[0]

    def policy_step(self, anchors: Tensor, labels: Tensor, progress: float, generator: torch.Generator, loss_fn: LossFn) -> dict:
        """One REINFORCE step: reward = per-sample FR loss of the mixed batch (FR frozen), minus nu * k.

        Args:
            anchors: masked, un-mixed faces of the batch.
            labels: their identity labels.
            progress: training progress in [0, 1].
            generator: source of the k draws and of the mixing.
            loss_fn: the frozen FR loss (no gradient flows into the FR network).

        Returns:
            Statistics of the step (mean reward, mean k, entropy).
        """
        k, log_prob, entropy = self.policy.sample(anchors, progress, generator)
        mixed = frequency_mixup(
            anchors, labels, k, self.k_max, self.params.mix_law, self.params.mix_cap, generator=generator, rescale=self.params.mix_rescale
        )
        with torch.no_grad():
            reward = loss_fn(mixed.x, labels[mixed.partners], mixed.weights).float()
        nu = self.dual.value
        loss = policy_loss(log_prob, reward, self.baseline.value, entropy, k, nu, self.params.entropy_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.baseline.update(effective_reward(reward, k, nu))
        return {"reward": reward.mean().item(), "k": k.float().mean().item(), "entropy": entropy.mean().item()}

    def end_epoch(self, val_accuracy: float) -> float:
        """Dual ascent on nu with the epoch's un-mixed validation accuracy; returns the new nu."""
        return self.dual.update(val_accuracy)

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "dual": self.dual.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.dual.load_state_dict(state["dual"])


def k_histogram(ks: list[int] | Counter, k_values: tuple[int, ...]) -> dict[str, float]:
    """Fraction of samples per k, every k of the policy listed."""
    counts = Counter(ks)
    total = sum(counts.values()) or 1
    return {str(k): counts.get(k, 0) / total for k in k_values}
