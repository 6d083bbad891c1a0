"""REINFORCE for the strategy network: the policy loss, its baseline and the Lagrange multiplier.

docs/design.md §3: the policy maximises the FR network's per-sample loss (reward ``r``) with REINFORCE
(``L1``), regularised by an entropy bonus and a Lagrange penalty ``nu * k`` (``L2``) whose
multiplier ``nu >= 0`` rises by dual ascent while validation accuracy is below a floor.

The penalty ``nu * E[k]`` depends on the policy only through the sampled ``k``, so its gradient
needs the score-function estimator too: it enters as part of the *effective reward*
``r - nu * k`` (:func:`effective_reward`). The policy optimiser minimises (:func:`policy_loss`)::

    loss = -mean((r - nu * k - b).detach() * log_prob) - entropy_weight * mean(entropy)

whose gradient is an unbiased estimate of ``-grad(E[r] - nu * E[k] + entropy_weight * H)`` for
any baseline ``b`` that does not depend on the sampled actions. The baseline should track the
effective reward: update :class:`EmaBaseline` with ``effective_reward(r, k, nu)``.

[ours] A mean-k budget adds its own price of k to ``nu``: the one that makes the policy's expected
mean k the target (:func:`budget_price`), of either sign.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fmix.checks import check_float, check_number, check_tensor


def _check_per_sample(x: object, name: str, batch: int | None = None) -> Tensor:
    x = check_tensor(x, name)
    if x.dim() != 1 or (batch is not None and x.shape[0] != batch):
        wanted = f"({batch},)" if batch is not None else "(B,)"
        raise ValueError(f"Expected {name} of shape {wanted}, got {tuple(x.shape)}")
    return x


def _as_baseline(baseline: float | Tensor, batch: int) -> float | Tensor:
    if isinstance(baseline, Tensor):
        if baseline.dim() > 1 or (baseline.dim() == 1 and baseline.shape[0] != batch):
            raise ValueError(f"Expected baseline of shape () or ({batch},), got {tuple(baseline.shape)}")
        return baseline.detach().float()
    return check_number(baseline, "baseline")


def effective_reward(reward: Tensor, k: Tensor, price: float) -> Tensor:
    """The reward the policy maximises under the Lagrange penalty: ``reward - price * k``.

    Args:
        reward: per-sample reward (the detached FR loss).
        k: the sampled number of mixed faces.
        price: the price of one more face, finite: ``nu`` (the floor's multiplier, >= 0) plus the
            mean-k budget's price (either sign: the budget is an equality).

    Shape:
        - reward, k: :math:`(B,)`.
        - Output: :math:`(B,)`, float32.

    Returns:
        The effective reward, detached.
    """
    reward = _check_per_sample(reward, "reward")
    k = _check_per_sample(k, "k", reward.shape[0])
    if not math.isfinite(check_number(price, "price")):
        raise ValueError(f"Expected a finite price, got {price}")
    return (reward.detach().float() - price * k.to(reward.device).float()).detach()


def reinforce_loss(log_prob: Tensor, reward: Tensor, baseline: float | Tensor) -> Tensor:
    """REINFORCE with a baseline: ``-mean((reward - baseline).detach() * log_prob)``.

    Args:
        log_prob: log-probability of the sampled actions, differentiable.
        reward: per-sample reward (larger is better for the policy).
        baseline: a float, or a tensor of shape () or (B,), independent of the actions.

    Shape:
        - log_prob, reward: :math:`(B,)`.
        - Output: :math:`()`.

    Returns:
        The loss to minimise.
    """
    log_prob = _check_per_sample(log_prob, "log_prob")
    check_float(log_prob, "log_prob")
    reward = _check_per_sample(reward, "reward", log_prob.shape[0])
    advantage = (reward.float() - _as_baseline(baseline, log_prob.shape[0])).detach()
    return -(advantage.to(log_prob.device) * log_prob.float()).mean()


def policy_loss(
    log_prob: Tensor,
    reward: Tensor,
    baseline: float | Tensor,
    entropy: Tensor,
    k: Tensor,
    price: float,
    entropy_weight: float,
) -> Tensor:
    """The full policy objective (``L1 + L2``), minimised by the policy optimiser.

    ``-mean((reward - price * k - baseline).detach() * log_prob) - entropy_weight * mean(entropy)``;
    see the module docstring for why the penalty sits inside the reward.

    Args:
        log_prob: log-probability of the sampled ``k``, differentiable.
        reward: per-sample reward (the detached FR loss).
        baseline: estimate of the effective reward ``reward - price * k``, independent of the actions.
        entropy: policy entropy per sample, differentiable.
        k: the sampled number of mixed faces.
        price: the price of one more face (:func:`effective_reward`).
        entropy_weight: weight of the entropy bonus, >= 0.

    Shape:
        - log_prob, reward, entropy, k: :math:`(B,)`.
        - Output: :math:`()`.

    Returns:
        The loss to minimise.
    """
    log_prob = _check_per_sample(log_prob, "log_prob")
    entropy = _check_per_sample(entropy, "entropy", log_prob.shape[0])
    if check_number(entropy_weight, "entropy_weight") < 0:
        raise ValueError(f"Expected entropy_weight >= 0, got {entropy_weight}")
    reward = effective_reward(_check_per_sample(reward, "reward", log_prob.shape[0]), k, price)
    return reinforce_loss(log_prob, reward, baseline) - entropy_weight * entropy.float().mean()


class EmaBaseline:
    """Exponential moving average of the mean reward, the REINFORCE baseline.

    The first update sets the value to the batch mean (no bias towards the initial 0); later
    ones ``value <- momentum * value + (1 - momentum) * mean(rewards)``. Use :attr:`value`
    for the advantage *before* updating with the same batch.

    Args:
        momentum: weight of the past, in [0, 1).
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= check_number(momentum, "momentum") < 1.0:
            raise ValueError(f"Expected momentum in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.value = 0.0
        self.count = 0

    def update(self, rewards: Tensor | float) -> float:
        """Fold a batch of rewards into the average.

        Args:
            rewards: a float or a tensor of rewards (any shape, non-empty, finite).

        Returns:
            The new value.
        """
        if isinstance(rewards, Tensor):
            if rewards.numel() == 0:
                raise ValueError("Expected a non-empty rewards tensor")
            mean = float(rewards.detach().float().mean())
        else:
            mean = check_number(rewards, "rewards")
        if not torch.isfinite(torch.tensor(mean)):
            raise ValueError(f"Expected finite rewards, got mean {mean}")
        self.value = mean if self.count == 0 else self.momentum * self.value + (1.0 - self.momentum) * mean
        self.count += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint: ``{"value": float, "count": int}``."""
        return {"value": self.value, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        _check_state(state, ("value", "count"), "EmaBaseline")
        self.value, self.count = float(state["value"]), int(state["count"])


class DualVariable:
    """Lagrange multiplier ``nu >= 0`` of the minimum-validation-accuracy constraint.

    Dual ascent after each validation: ``nu <- max(0, nu + lr * (floor - val_accuracy))``, so
    ``nu`` rises while the accuracy is below the floor and falls back towards 0 above it.

    Args:
        lr: dual step size, > 0 (reward units per unit of k per unit of accuracy).
        floor: the accuracy the FR network must keep, in [0, 1].
        initial: starting value, >= 0.
    """

    def __init__(self, lr: float, floor: float, initial: float = 0.0) -> None:
        if check_number(lr, "lr") <= 0:
            raise ValueError(f"Expected lr > 0, got {lr}")
        if not 0.0 <= check_number(floor, "floor") <= 1.0:
            raise ValueError(f"Expected floor in [0, 1], got {floor}")
        if check_number(initial, "initial") < 0:
            raise ValueError(f"Expected initial >= 0, got {initial}")
        self.lr, self.floor = float(lr), float(floor)
        self.value = float(initial)
        self.count = 0

    def update(self, val_accuracy: float) -> float:
        """One dual ascent step.

        Args:
            val_accuracy: validation accuracy on un-mixed masked faces, in [0, 1].

        Returns:
            The new ``nu``.
        """
        if not 0.0 <= check_number(val_accuracy, "val_accuracy") <= 1.0:
            raise ValueError(f"Expected val_accuracy in [0, 1], got {val_accuracy}")
        self.value = max(0.0, self.value + self.lr * (self.floor - val_accuracy))
        self.count += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint: ``{"value": float, "count": int}``."""
        return {"value": self.value, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""
        _check_state(state, ("value", "count"), "DualVariable")
        if float(state["value"]) < 0:
            raise ValueError(f"Expected a state for DualVariable with value >= 0, got {state['value']}")
        self.value, self.count = float(state["value"]), int(state["count"])


def expected_mean_k(logits: Tensor, k_values: Tensor) -> float:
    """The policy's expected k, averaged over samples: ``mean_n sum_k softmax(logits_n)_k k`` (no input checks).

    Shape:
        - logits: :math:`(N, n_k)`; k_values: :math:`(n_k,)`.
    """
    return float((torch.softmax(logits, dim=1) * k_values.to(logits)).sum(1).mean())


def budget_price(logits: Tensor, k_values: Tensor, target: float, tolerance: float = 1e-6) -> float:
    r"""The price ``p`` on k that makes the policy's expected mean k over a set of samples ``target`` [ours].

    The mean-k budget of the game: shifting the logits by ``-p k`` holds the mean exactly on these
    samples (the expected k falls monotonically as ``p`` grows, so bisection finds it). Unlike a
    dual ascent on ``p``, it does not lag the policy.

    Args:
        logits: the policy's logits over ``k_values``, one row per sample.
        k_values: the actions, increasing.
        target: the mean k to hold, strictly between the smallest and the largest k.
        tolerance: the bisection stops when the bracket is this narrow.

    Shape:
        - logits: :math:`(N, n_k)`, :math:`N \geq 1`.
        - k_values: :math:`(n_k,)`.

    Returns:
        ``p`` such that ``mean_n sum_k softmax(logits_n - p k)_k k`` is ``target``.

    Example:
        >>> round(budget_price(torch.zeros(1, 2), torch.tensor([2, 3]), 2.5), 6)
        0.0
    """
    logits, k_values = check_tensor(logits, "logits"), check_tensor(k_values, "k_values")
    if logits.dim() != 2 or logits.shape[0] == 0 or k_values.shape != (logits.shape[1],):
        raise ValueError(
            f"Expected logits of shape (N >= 1, {k_values.shape[0] if k_values.dim() == 1 else 'n_k'}) and k_values of shape (n_k,), got {tuple(logits.shape)} and {tuple(k_values.shape)}"
        )
    k = k_values.to(device=logits.device, dtype=torch.float64)
    if not float(k.min()) < check_number(target, "target") < float(k.max()):
        raise ValueError(f"Expected target strictly between {int(k.min())} and {int(k.max())}, got {target}")
    check_float(logits, "logits")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("Expected finite logits")
    logits = logits.detach().double()

    def mean_k(price: float) -> float:
        return expected_mean_k(logits - price * k, k)

    low, high = -1.0, 1.0
    while mean_k(low) < target:
        low *= 2
    while mean_k(high) > target:
        high *= 2
    while high - low > tolerance:
        middle = (low + high) / 2
        low, high = (middle, high) if mean_k(middle) > target else (low, middle)
    return (low + high) / 2


def _check_state(state: object, keys: tuple[str, ...], owner: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"Expected a state dict for {owner}, got {type(state).__name__}")
    if set(state) != set(keys):
        raise ValueError(f"Expected a state for {owner} with keys {sorted(keys)}, got {sorted(state)}")
