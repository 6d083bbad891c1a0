"""The adversarial game of DESIGN 3: the strategy network picks k to maximise the FR loss (REINFORCE),
under a Lagrange penalty that keeps un-mixed validation accuracy above a floor (dual ascent)."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch import Tensor

from fmix.masker.protection import MixingConfig, Protection
from fmix.models import BudgetDual, DualVariable, EmaBaseline, StrategyNetwork, effective_reward, policy_loss
from fmix.params import TrainParams

# (mixed inputs, constituent labels, weights) -> per-sample FR loss
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
DIFFICULTY_BINS = 4  # quartiles of the un-mixed loss within a batch


class AdaptiveGame:
    """The strategy network, its optimiser, the REINFORCE baseline and the dual variable nu.

    Args:
        in_channels: channels of the masked anchors.
        k_values: the policy's actions.
        params: training parameters (policy lr, entropy weight, baseline momentum, floor, dual lr).
        protection: how the policy's k are mixed (the trainer's; default: the ``mixing`` defaults
            with ``k_max = max(k_values)``).
    """

    def __init__(self, in_channels: int, k_values: tuple[int, ...], params: TrainParams, protection: Protection | None = None) -> None:
        self.policy = StrategyNetwork(in_channels, k_values)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=params.policy_lr)
        self.baseline = EmaBaseline(params.baseline_momentum)
        self.dual = DualVariable(params.dual_lr, params.min_val_accuracy)
        self.budget = BudgetDual(params.budget_lr, params.target_mean_k) if params.target_mean_k is not None else None
        self.params = params
        self.protection = protection or Protection(None, MixingConfig(max(k_values)), tuple(k_values))

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
        mixed = self.protection.protect_encoded(anchors, labels, k, generator)
        with torch.no_grad():
            reward = loss_fn(mixed.x, labels[mixed.partners], mixed.weights).float()
            unmixed_loss = loss_fn(anchors, labels[:, None], torch.ones_like(labels[:, None], dtype=anchors.dtype)).float()
        if self.params.policy_reference == "unmixed":
            # Per-sample advantage: what mixing costs this sample, not how hard the sample is anyway.
            reward = reward - unmixed_loss
        nu = self.penalty
        loss = policy_loss(log_prob, reward, self.baseline.value, entropy, k, nu, self.params.entropy_weight)
        loss = loss + self.params.difficulty_weight * self.policy.difficulty_loss(anchors, unmixed_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.baseline.update(effective_reward(reward, k, nu))
        if self.budget is not None:
            self.budget.update(k.float().mean().item())
        return {
            "reward": reward.mean().item(),
            "k": k.float().mean().item(),
            "entropy": entropy.mean().item(),
            "k_by_difficulty": difficulty_table(unmixed_loss, k, self.policy.k_values, DIFFICULTY_BINS),
        }

    @property
    def penalty(self) -> float:
        """The price of one more face per sample: ``nu`` (utility floor) + ``lambda`` (mean-k budget)."""
        return self.dual.value + (self.budget.value if self.budget is not None else 0.0)

    def end_epoch(self, val_accuracy: float) -> float:
        """Dual ascent on nu with the epoch's un-mixed validation accuracy; returns the new nu."""
        return self.dual.update(val_accuracy)

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "dual": self.dual.state_dict(),
            "budget": self.budget.state_dict() if self.budget is not None else {},
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.dual.load_state_dict(state["dual"])
        if self.budget is not None:
            self.budget.load_state_dict(state["budget"])


def k_histogram(ks: list[int] | Counter, k_values: tuple[int, ...]) -> dict[str, float]:
    """Fraction of samples per k, every k of the policy listed."""
    counts = Counter(ks)
    total = sum(counts.values()) or 1
    return {str(k): counts.get(k, 0) / total for k in k_values}


def difficulty_table(difficulty: Tensor, k: Tensor, k_values: tuple[int, ...], bins: int) -> list[list[int]]:
    """Counts of each k per difficulty quantile of the batch (row 0: the easiest samples).

    Args:
        difficulty: per-sample difficulty, e.g. the frozen FR network's loss on the un-mixed anchor.
        k: the k drawn for each sample, each in ``k_values``.
        k_values: the policy's actions (the table's columns).
        bins: number of quantile bins (rows).

    Shape:
        - difficulty, k: :math:`(B,)`.

    Returns:
        A ``bins`` x ``len(k_values)`` table of counts.
    """
    if difficulty.shape != k.shape or difficulty.dim() != 1:
        raise ValueError(f"Expected difficulty and k of one shape (B,), got {tuple(difficulty.shape)} and {tuple(k.shape)}")
    if bins < 1:
        raise ValueError(f"Expected bins >= 1, got {bins}")
    rank = difficulty.detach().cpu().argsort().argsort()
    row = rank * bins // max(1, len(rank))
    column = torch.searchsorted(torch.tensor(k_values), k.detach().cpu())
    table = torch.zeros(bins, len(k_values), dtype=torch.long)
    table.index_put_((row, column), torch.ones_like(row), accumulate=True)
    return table.tolist()


def mutual_information(table: list[list[int]]) -> float:
    """Mutual information (bits) between the rows and columns of a contingency table.

    Args:
        table: counts, rows x columns (e.g. :func:`difficulty_table` summed over an epoch).

    Returns:
        ``sum p(r, c) log2(p(r, c) / (p(r) p(c)))``; 0 for an empty table.
    """
    counts = torch.tensor(table, dtype=torch.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    joint = counts / total
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    nonzero = joint > 0
    return float((joint[nonzero] * torch.log2(joint[nonzero] / outer[nonzero])).sum())
