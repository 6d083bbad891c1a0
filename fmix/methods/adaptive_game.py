"""The adaptive method's game (docs/design.md §3): the strategy network picks k to maximise the FR loss (REINFORCE),
under a Lagrange penalty that keeps un-mixed validation accuracy above a floor (dual ascent).

[ours] ``train.adaptive.policy_gradient: expected`` scores every k on the batch and follows the
exact expected reward instead of one sampled k (the same gradient, without the noise of the draw),
and ``train.adaptive.policy_signal: confidence`` lets the policy read the frozen FR network's
confidence in each anchor, the per-sample signal the masked face alone does not carry. With
``train.adaptive.target_mean_k`` the mean k is a budget: after each policy step, the price of k
that makes the batch's expected mean k the target is solved for (:func:`fmix.models.budget_price`),
shifts the policy's logits and enters the reward as ``- price * k``; it is solved rather than
learned by a dual step because a dual step lagged the policy (docs/results/2026-11-29-sign-mask.md: the mean k swung
between epochs). ``train.adaptive.policy_objective: cooperative`` (the default, ours) turns the
reward's sign: the policy then spends the budget where a larger k costs the FR loss least (utility
at a fixed mean k) instead of where it hurts most (``adversarial``, the paper's game).

What a policy step costs (issue 34): ``train.adaptive.policy_batch`` plays it on the first anchors of
the (shuffled) FR batch only, and a sampled step with ``train.adaptive.sampled_from: fr_step`` (the
default) replays the FR step just taken (:meth:`AdaptiveGame.replay_step`: its k draws are the actions,
its per-sample loss the reward) instead of drawing, mixing and scoring again with the frozen FR network
(:meth:`AdaptiveGame.policy_step`).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from fmix.masker.protection import MixingConfig, Protection
from fmix.metrics.policy import difficulty_table
from fmix.models import (
    DualVariable,
    EmaBaseline,
    StrategyNetwork,
    budget_price,
    effective_reward,
    expected_mean_k,
    policy_loss,
)
from fmix.params import AdaptiveParams

# (mixed inputs, constituent labels, weights) -> per-sample FR loss
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
# masked anchors -> a per-sample signal of the frozen FR network (its confidence)
SignalFn = Callable[[Tensor], Tensor]
# (masked anchors, labels) -> (own-label loss, the policy's signal or None), from one forward of the frozen FR network
ProbeFn = Callable[[Tensor, Tensor], tuple[Tensor, "Tensor | None"]]
DIFFICULTY_BINS = 4  # quartiles of the un-mixed loss within a batch


class AdaptiveGame:
    """The strategy network, its optimiser, the REINFORCE baseline and the dual variable nu.

    Args:
        in_channels: channels of the masked anchors.
        k_values: the policy's actions.
        params: the game's settings (``train.adaptive``: policy lr, entropy weight, baseline
            momentum, floor, dual lr, budget).
        protection: how the policy's k are mixed (the run's; default: the ``mixing`` defaults
            with ``k_max = max(k_values)``).

    With ``train.adaptive.policy_signal: confidence`` the policy also reads :attr:`signal`, which
    the method sets once the FR network exists (:class:`fmix.models.ConfidenceSignal`).
    """

    def __init__(
        self, in_channels: int, k_values: tuple[int, ...], params: AdaptiveParams, protection: Protection | None = None
    ) -> None:
        self.policy = StrategyNetwork(in_channels, k_values, signals=int(params.policy_signal == "confidence"))
        self.signal: SignalFn | None = None
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=params.policy_lr)
        self.baseline = EmaBaseline(params.baseline_momentum)
        self.dual = DualVariable(params.dual_lr, params.min_val_accuracy)
        if params.target_mean_k is not None and not min(k_values) < params.target_mean_k < max(k_values):
            raise ValueError(
                f"train.adaptive.target_mean_k={params.target_mean_k} must lie strictly between the smallest and the largest k of the policy {tuple(k_values)}"
            )
        self.params = params
        self.protection = protection or Protection(None, MixingConfig(max(k_values)), tuple(k_values))

    def to(self, device: torch.device) -> "AdaptiveGame":
        self.policy.to(device)
        return self

    @torch.no_grad()
    def choose_k(
        self, anchors: Tensor, progress: float, generator: torch.Generator, signal: Tensor | None = None
    ) -> Tensor:
        """k for each anchor of an FR step (the policy is not updated); with ``train.adaptive.policy_shuffle``
        (an ablation) the batch's k are shuffled: the same histogram, no per-sample choice.

        ``signal``: the policy's signal of ``anchors`` when the caller has it (default: from :attr:`signal`)."""
        k = self.policy.sample(anchors, progress, generator, self._signal(anchors) if signal is None else signal)[0]
        if self.params.policy_shuffle:
            k = k[torch.randperm(len(k), generator=generator, device=generator.device).to(k.device)]
        return k

    def _signal(self, anchors: Tensor) -> Tensor | None:
        """The policy's outside signal for ``anchors`` (None when the policy reads none)."""
        if self.policy.signals == 0:
            return None
        if self.signal is None:
            raise RuntimeError(
                "the policy reads the FR network's confidence, but no signal source was set (AdaptiveGame.signal)"
            )
        return self.signal(anchors)

    def policy_step(
        self,
        anchors: Tensor,
        labels: Tensor,
        progress: float,
        generator: torch.Generator,
        loss_fn: LossFn,
        reduce_gradients: Callable[[], None] | None = None,
        probe: ProbeFn | None = None,
    ) -> dict:
        """One policy step: reward = per-sample FR loss of the mixed batch (FR frozen), minus nu * k.

        With ``train.adaptive.policy_objective: cooperative`` the reward is minus that loss (and minus the
        reference), so the policy spends its mean-k budget where more faces cost least.

        ``train.adaptive.policy_gradient`` says how the gradient is estimated: ``sampled`` (REINFORCE on one
        k drawn per sample, with the EMA baseline) or ``expected`` (every k of the policy mixed and
        scored on the batch, then the exact expectation over the policy: the same gradient without
        the sampling noise of k). ``train.adaptive.policy_reward`` says whose loss: ``mixed`` (the mix with
        its constituents' labels and weights) or ``anchor`` (the anchor's own label under its mix).
        With ``train.adaptive.policy_batch`` the step plays on the first ``policy_batch`` anchors only
        (their mixes draw their partners among them).

        Args:
            anchors: masked, un-mixed faces of the batch.
            labels: their identity labels.
            progress: training progress in [0, 1].
            generator: source of the k draws and of the mixing.
            loss_fn: the frozen FR loss (no gradient flows into the FR network).
            reduce_gradients: called between the backward pass and the optimizer step (DDP: the
                ranks' policy gradients averaged, so every rank takes the same step).
            probe: the anchors' own-label loss and the policy's signal from one forward of the frozen FR
                network (the same values as ``loss_fn`` and :attr:`signal` give, for one forward less);
                default: through ``loss_fn`` and :attr:`signal`.

        Returns:
            Statistics of the step (mean reward, mean k, entropy, k against difficulty quartiles).
        """
        anchors, labels = self.sub_batch(anchors, labels)
        if probe is None:
            unmixed_loss, signal = _own_label_loss(loss_fn, anchors, labels), self._signal(anchors)
        else:
            unmixed_loss, signal = probe(anchors, labels)
        reference = self._reference(unmixed_loss)
        nu = self.penalty
        if self.params.policy_gradient == "expected":
            loss, k, reward, entropy, mean_k = self._expected_step(
                anchors, labels, progress, generator, loss_fn, reference, nu, signal
            )
        else:
            k, log_prob, entropy = self.policy.sample(anchors, progress, generator, signal)
            # Per-sample advantage: what mixing costs this sample, not how hard the sample is anyway.
            reward = self._reward(anchors, labels, k, generator, loss_fn) - reference
            loss = policy_loss(log_prob, reward, self.baseline.value, entropy, k, nu, self.params.entropy_weight)
            mean_k = k.float().mean().item()
        return self._step(
            loss, anchors, progress, signal, unmixed_loss, reward, k, entropy, mean_k, nu, reduce_gradients
        )

    def replay_step(
        self,
        anchors: Tensor,
        labels: Tensor,
        k: Tensor,
        mixed_loss: Tensor,
        unmixed_loss: Tensor,
        signal: Tensor | None,
        progress: float,
        reduce_gradients: Callable[[], None] | None = None,
    ) -> dict:
        """One REINFORCE step on the FR step just taken (``train.adaptive.sampled_from: fr_step``).

        The FR step drew ``k`` from the policy (:meth:`choose_k`, the policy unchanged since) and
        computed each mix's loss with its constituents' labels: those are the actions and the reward of
        ``policy_gradient: sampled``, with no forward of the FR network here. The reward is that loss
        (negated for a cooperative policy) minus the reference (``train.adaptive.policy_reference``);
        with ``train.adaptive.policy_batch`` only the first ``policy_batch`` anchors play.

        Args:
            anchors: masked, un-mixed faces of the FR step.
            labels: their identity labels.
            k: the k the FR step drew for each anchor.
            mixed_loss: the FR step's per-sample loss of each anchor's mix (detached).
            unmixed_loss: each anchor's own-label loss, un-mixed (the reference and the difficulty target).
            signal: the policy's signal of the anchors, as :meth:`choose_k` read it (None without one).
            progress: training progress in [0, 1], as :meth:`choose_k` read it.
            reduce_gradients: as in :meth:`policy_step`.

        Returns:
            Statistics of the step, as :meth:`policy_step`'s.
        """
        anchors, labels, k, mixed_loss, unmixed_loss = self.sub_batch(anchors, labels, k, mixed_loss, unmixed_loss)
        if signal is not None:
            signal = self.sub_batch(signal)[0]
        unmixed_loss = unmixed_loss.float()
        nu = self.penalty
        log_prob, entropy = self.policy.evaluate_actions(anchors, progress, k, signal)
        reward = self._sign * mixed_loss.detach().float() - self._reference(unmixed_loss)
        loss = policy_loss(log_prob, reward, self.baseline.value, entropy, k, nu, self.params.entropy_weight)
        mean_k = k.float().mean().item()
        return self._step(
            loss, anchors, progress, signal, unmixed_loss, reward, k, entropy, mean_k, nu, reduce_gradients
        )

    def sub_batch(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The first ``train.adaptive.policy_batch`` rows of each tensor (all rows without one)."""
        size = self.params.policy_batch
        return tensors if size is None else tuple(t[:size] for t in tensors)

    def _reference(self, unmixed_loss: Tensor) -> Tensor:
        """What the reward is measured against, per sample (``train.adaptive.policy_reference``), signed as the reward."""
        if self.params.policy_reference == "unmixed":
            return self._sign * unmixed_loss
        return torch.zeros_like(unmixed_loss)

    def _step(self, loss, anchors, progress, signal, unmixed_loss, reward, k, entropy, mean_k, nu, reduce_gradients):
        """The difficulty head's loss added, the optimizer step, the baseline and the budget's price; the statistics."""
        loss = loss + self.params.difficulty_weight * self.policy.difficulty_loss(anchors, unmixed_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if reduce_gradients is not None:
            reduce_gradients()
        self.optimizer.step()
        self.baseline.update(effective_reward(reward, k, nu))
        if self.params.target_mean_k is not None:
            self._price(self._logits(anchors, progress, signal))
        return {
            "reward": reward.mean().item(),
            "k": mean_k,
            "entropy": entropy.mean().item(),
            "k_by_difficulty": difficulty_table(unmixed_loss, k, self.policy.k_values, DIFFICULTY_BINS),
        }

    def _reward(
        self, anchors: Tensor, labels: Tensor, k: Tensor | int, generator: torch.Generator, loss_fn: LossFn
    ) -> Tensor:
        """Per-sample FR loss of the anchors mixed with ``k`` faces (``train.adaptive.policy_reward``), no
        gradient; negated for a cooperative policy (``train.adaptive.policy_objective``)."""
        mixed = self.protection.protect_encoded(anchors, labels, k, generator)
        if self.params.policy_reward == "anchor":
            loss = _own_label_loss(loss_fn, mixed.x, labels)
        else:
            with torch.no_grad():
                loss = loss_fn(mixed.x, labels[mixed.partners], mixed.weights).float()
        return self._sign * loss

    @property
    def _sign(self) -> float:
        """+1: the policy maximises the FR loss (docs/design.md §3); -1: it minimises it (cooperative)."""
        return 1.0 if self.params.policy_objective == "adversarial" else -1.0

    def _expected_step(self, anchors, labels, progress, generator, loss_fn, reference, nu, signal):
        """The policy loss of the exact expectation over k: ``-sum_k pi(k|x) (r_k(x) - nu k)`` - entropy bonus.

        Returns:
            ``(loss, k, reward, entropy, mean_k)``: k drawn from the policy (for the statistics
            only), the reward of that k, and the policy's expected mean k.
        """
        rewards = (
            torch.stack([self._reward(anchors, labels, k, generator, loss_fn) for k in self.policy.k_values], 1)
            - reference[:, None]
        )
        k_table = self.policy.k_table.to(rewards.device).float()
        value = rewards - nu * k_table
        value = value - value.mean(1, keepdim=True)  # an action-independent baseline per sample
        dist = self.policy.distribution(anchors, progress, signal)
        entropy = dist.entropy()
        loss = -(dist.probs * value).sum(1).mean() - self.params.entropy_weight * entropy.mean()
        index = self.policy.draw(dist, generator, anchors.device)
        mean_k = expected_mean_k(dist.logits.detach(), k_table)
        return loss, self.policy.k_table[index], rewards.gather(1, index[:, None]).squeeze(1), entropy, mean_k

    def calibrate(self, anchors: Iterable[Tensor], progress: float) -> dict:
        """Price k so that the policy's expected mean k over ``anchors`` is the budget.

        Each policy step prices k on its own batch (:meth:`policy_step`); this prices it on a
        larger sample of the private faces at the end of an epoch, and so in the exported masker.

        Args:
            anchors: batches of masked, un-mixed faces (e.g. a fixed sample of the private faces).
            progress: training progress in [0, 1] (1 at the end of training, as exported).

        Returns:
            ``{"expected_mean_k": before, "budget_price": the price now}``; {} without a budget.
        """
        if self.params.target_mean_k is None:
            return {}
        return self._price(torch.cat([self._logits(x, progress, self._signal(x)) for x in anchors]))

    @torch.no_grad()
    def _logits(self, anchors: Tensor, progress: float, signal: Tensor | None) -> Tensor:
        """The policy's logits with running statistics, as in the exported masker (its mode kept)."""
        training = self.policy.training
        self.policy.eval()
        logits = self.policy(anchors, progress, signal).float()
        self.policy.train(training)
        return logits

    def _price(self, logits: Tensor) -> dict:
        """Move :attr:`StrategyNetwork.k_price` so the expected mean k under ``logits`` is the budget."""
        before = expected_mean_k(logits, self.policy.k_table)
        self.policy.k_price += budget_price(logits, self.policy.k_table, self.params.target_mean_k)
        return {"expected_mean_k": before, "budget_price": float(self.policy.k_price)}

    @property
    def penalty(self) -> float:
        """The price of one more face per sample: ``nu`` (utility floor) + the budget's price of k."""
        return self.dual.value + (float(self.policy.k_price) if self.params.target_mean_k is not None else 0.0)

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


@torch.no_grad()
def _own_label_loss(loss_fn: LossFn, x: Tensor, labels: Tensor) -> Tensor:
    """Per-sample FR loss of ``x`` under each anchor's own label alone (weight 1), float32."""
    return loss_fn(x, labels[:, None], torch.ones_like(labels[:, None], dtype=x.dtype)).float()
