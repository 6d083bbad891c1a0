"""``adaptive``: the method. Frequency MixUp whose k a strategy network picks per sample (DESIGN 3).

The strategy network plays against the FR network: REINFORCE with the per-sample FR loss as its
reward (:class:`fmix.methods.adaptive_game.AdaptiveGame`, this method's state), under a utility
floor enforced by dual ascent. Until the game starts (``train.adaptive.policy_warmup_epochs``),
samples are mixed with the smallest k. Settings: ``train.adaptive`` (:class:`fmix.params.AdaptiveParams`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from fmix.methods.adaptive_game import AdaptiveGame
from fmix.methods.base import MaskingMethod, RunContext
from fmix.models import ConfidenceSignal

CALIBRATION_FACES = (
    1024  # private faces on which the policy's mean k is priced to the budget (standard error about 0.02)
)


def _average_gradients(module: nn.Module, world: int) -> None:
    if world > 1:
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


class AdaptiveMixup(MaskingMethod):
    name = "adaptive"
    summary = "masked faces mixed, k in mixing.k_values chosen per sample by the strategy network"
    mixes = True
    attack_surface = "mixed"
    learns_policy = True

    def setup(self, ctx: RunContext) -> None:
        settings = self.params.adaptive
        self.game = AdaptiveGame(ctx.encoder.channels, ctx.protection.k_values, settings, ctx.protection).to(ctx.device)
        if self.game.policy.signals:  # the policy reads the live FR network's confidence
            self.game.signal = ConfidenceSignal(ctx.net.backbone, ctx.net.head)

    def plays_at(self, position: float) -> bool:
        return position >= self.params.adaptive.policy_warmup_epochs

    def choose_k(self, ctx: RunContext, x: Tensor, game_on: bool) -> Tensor | int:
        if game_on:
            return self.game.choose_k(x, ctx.progress, ctx.generator)
        return min(ctx.protection.k_values)  # FR warm-up: the mildest mixing, so the FR network starts learning

    def turn_due(self, ctx: RunContext) -> bool:
        """Every ``n_fr`` FR steps."""
        return (ctx.step + 1) % self.params.adaptive.n_fr == 0

    def take_turn(self, ctx: RunContext, x: Tensor, labels: Tensor) -> list[dict]:
        """``n_pi`` REINFORCE steps on the FR step's batch, the FR network frozen."""
        steps = []
        ctx.net.eval()
        for _ in range(self.params.adaptive.n_pi):
            # The ranks' gradients are averaged before the step, so the ranks' policies stay equal.
            average = functools.partial(_average_gradients, self.game.policy, ctx.world)
            steps.append(
                self.game.policy_step(
                    x, labels, ctx.progress, ctx.generator, lambda xs, ls, ws: ctx.net(xs, ls, ws), average
                )
            )
        ctx.net.train()
        return steps

    def end_epoch(self, ctx: RunContext, val_accuracy: float, played: bool) -> dict:
        """The dual step on nu (when the game played), the price of k on the calibration faces, the game's log fields."""
        nu = self.game.end_epoch(val_accuracy) if played else self.game.dual.value
        calibration = self.calibrate(ctx) if played else {}
        return {"baseline": self.game.baseline.value, "nu": nu, "k_price": self.game.penalty, **calibration}

    def network_changed(self, ctx: RunContext, played: bool) -> None:
        if played:
            self.calibrate(ctx)  # the confidence signal moved with the batch norm: price k again

    def calibrate(self, ctx: RunContext) -> dict:
        """Price the policy's k so its expected mean k is the budget on a fixed sample of the private faces.

        Returns:
            :meth:`~fmix.methods.adaptive_game.AdaptiveGame.calibrate`'s statistics; {} without a budget.
        """
        order = torch.randperm(len(ctx.faces), generator=torch.Generator().manual_seed(ctx.params.seed))
        batches = order[:CALIBRATION_FACES].split(ctx.params.batch_size)  # the same faces every epoch and rank
        with torch.no_grad():
            anchors = (ctx.encoder(ctx.faces.float_images(index).to(ctx.device)) for index in batches)
            return self.game.calibrate(anchors, ctx.progress)

    def policy_state(self) -> dict:
        return self.game.policy.state_dict()

    def state_dict(self) -> dict:
        return {"game": self.game.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.game.load_state_dict(state["game"])
