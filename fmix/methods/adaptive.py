"""``adaptive``: the method. Frequency MixUp whose k a strategy network picks per sample (docs/design.md §3).

The strategy network plays against the FR network: REINFORCE with the per-sample FR loss as its
reward (:class:`fmix.methods.adaptive_game.AdaptiveGame`, this method's state), under a utility
floor enforced by dual ascent. Until the game starts (``train.adaptive.policy_warmup_epochs``),
samples are mixed with the smallest k. Settings: ``train.adaptive`` (:class:`fmix.params.AdaptiveParams`).

The policy's turn reads the frozen FR network once per anchor (its own-label loss and its confidence
from one forward). A sampled turn that replays the FR step (``train.adaptive.sampled_from: fr_step``,
the default) reads nothing more: the FR step's k draws and per-sample loss (recorded on their way
through ``ctx.model``) are its actions and reward, and the anchors' embeddings that
:meth:`AdaptiveMixup.choose_k` computed for the confidence give the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fmix.data.sources import read_faces
from fmix.methods.adaptive_game import AdaptiveGame
from fmix.methods.base import MaskingMethod, RunContext
from fmix.models import ConfidenceSignal

CALIBRATION_FACES = (
    1024  # private faces on which the policy's mean k is priced to the budget (standard error about 0.02)
)


class _LossTap(nn.Module):
    """``ctx.model`` as it was, keeping the per-sample loss of its last forward (detached): the FR step's
    loss of each mix, the reward of ``train.adaptive.sampled_from: fr_step``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss: Tensor | None = None

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        loss = self.model(x, labels, weights)
        self.loss = loss.detach()
        return loss


@dataclass
class _Drawn:
    """What :meth:`AdaptiveMixup.choose_k` read and drew for an FR step's anchors (``sampled_from: fr_step``)."""

    anchors: Tensor
    k: Tensor
    embeddings: Tensor  # the frozen FR network's embeddings of the anchors (eval mode, before the FR step); without
    # a signal only of the first train.adaptive.policy_batch, the ones the turn plays on
    signal: Tensor | None
    progress: float


def _embed(net: nn.Module, x: Tensor) -> Tensor:
    """The FR backbone's embeddings of ``x`` in eval mode, without gradients (modes put back), as
    :class:`~fmix.models.ConfidenceSignal` computes them."""
    modes = [module.training for module in (net.backbone, net.head)]
    net.backbone.eval()
    net.head.eval()
    try:
        with torch.no_grad():
            return net.backbone(x)
    finally:
        net.backbone.train(modes[0])
        net.head.train(modes[1])


@torch.no_grad()
def _confidence(net: nn.Module, embeddings: Tensor, dtype: torch.dtype) -> Tensor:
    """:class:`~fmix.models.ConfidenceSignal` from the embeddings: the largest cosine to a class centre."""
    return net.head.cosines(embeddings).amax(1).to(dtype)


@torch.no_grad()
def _own_label_loss(net: nn.Module, embeddings: Tensor, labels: Tensor, dtype: torch.dtype) -> Tensor:
    """Each anchor's loss under its own label alone (weight 1), float32, from its embedding."""
    return net.head(embeddings, labels[:, None], torch.ones_like(labels[:, None], dtype=dtype)).float()


def _probe(net: nn.Module, signals: bool, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
    """The policy step's reading of the frozen FR network (in eval mode): own-label loss and confidence, one forward."""
    embeddings = _embed(net, x)
    return _own_label_loss(net, embeddings, labels, x.dtype), _confidence(net, embeddings, x.dtype) if signals else None


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
        self.drawn: _Drawn | None = None
        self.tap: _LossTap | None = None
        if settings.replays_fr_step:  # the FR step's per-sample loss is the policy's reward
            self.tap = ctx.model = _LossTap(ctx.model)

    def plays_at(self, position: float) -> bool:
        return position >= self.params.adaptive.policy_warmup_epochs

    def choose_k(self, ctx: RunContext, x: Tensor, game_on: bool) -> Tensor | int:
        if not game_on:
            return min(ctx.protection.k_values)  # FR warm-up: the mildest mixing, so the FR network starts learning
        if self.tap is None:
            return self.game.choose_k(x, ctx.progress, ctx.generator)
        # sampled_from: fr_step: keep what the turn replays (the confidence's forward gives the embeddings).
        # Without a signal only the anchors the turn plays on are embedded (their un-mixed loss).
        signals = bool(self.game.policy.signals)
        embeddings = _embed(ctx.net, x if signals else self.game.sub_batch(x)[0])
        signal = _confidence(ctx.net, embeddings, x.dtype) if signals else None
        k = self.game.choose_k(x, ctx.progress, ctx.generator, signal)
        self.drawn = _Drawn(x, k, embeddings, signal, ctx.progress)
        return k

    def turn_due(self, ctx: RunContext) -> bool:
        """Every ``n_fr`` FR steps."""
        return (ctx.step + 1) % self.params.adaptive.n_fr == 0

    def take_turn(self, ctx: RunContext, x: Tensor, labels: Tensor) -> list[dict]:
        """``n_pi`` policy steps on the FR step's batch, the FR network frozen, or on the FR step itself
        (``sampled_from: fr_step``: :meth:`~fmix.methods.adaptive_game.AdaptiveGame.replay_step`)."""
        # The ranks' gradients are averaged before the step, so the ranks' policies stay equal.
        average = functools.partial(_average_gradients, self.game.policy, ctx.world)
        if self.tap is not None:
            return [self._replay(ctx, x, labels, average) for _ in range(self.params.adaptive.n_pi)]
        steps = []
        ctx.net.eval()
        probe = functools.partial(_probe, ctx.net, bool(self.game.policy.signals))
        for _ in range(self.params.adaptive.n_pi):
            steps.append(
                self.game.policy_step(
                    x, labels, ctx.progress, ctx.generator, lambda xs, ls, ws: ctx.net(xs, ls, ws), average, probe
                )
            )
        ctx.net.train()
        return steps

    def _replay(self, ctx: RunContext, x: Tensor, labels: Tensor, average) -> dict:
        """One policy step on the FR step just taken: its k draws, its per-sample loss, the embeddings of its anchors."""
        drawn, mixed_loss = self.drawn, self.tap.loss
        if drawn is None or mixed_loss is None or drawn.anchors.data_ptr() != x.data_ptr() or len(mixed_loss) != len(x):
            raise RuntimeError(
                "train.adaptive.sampled_from: fr_step replays the FR step just taken, but this turn's anchors are not "
                "the ones the last FR step drew k for and scored"
            )
        unmixed_loss = _own_label_loss(ctx.net, drawn.embeddings, labels[: len(drawn.embeddings)], x.dtype)
        return self.game.replay_step(
            x, labels, drawn.k, mixed_loss, unmixed_loss, drawn.signal, drawn.progress, average
        )

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
            anchors = (
                ctx.encoder(read_faces(ctx.faces, index.tolist()).float_images().to(ctx.device)) for index in batches
            )
            return self.game.calibrate(anchors, ctx.progress)

    def policy_state(self) -> dict:
        return self.game.policy.state_dict()

    def state_dict(self) -> dict:
        return {"game": self.game.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.game.load_state_dict(state["game"])
