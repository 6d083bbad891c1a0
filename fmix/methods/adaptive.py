"""``adaptive``: the method. Frequency MixUp whose k a strategy network picks per sample (DESIGN 3).

The strategy network plays against the FR network: REINFORCE with the per-sample FR loss as its
reward (:class:`fmix.train.game.AdaptiveGame`), under a utility floor enforced by dual ascent. Until
the game starts (``train.policy_warmup_epochs``), samples are mixed with the smallest k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from fmix.masker.protection import Protection
from fmix.methods.base import MaskingMethod
from fmix.models import ConfidenceSignal
from fmix.params import TrainParams
from fmix.train.game import AdaptiveGame

if TYPE_CHECKING:
    from fmix.train.trainer import Trainer


class AdaptiveMixup(MaskingMethod):
    name = "adaptive"
    summary = "masked faces mixed, k in mixing.k_values chosen per sample by the strategy network"
    mixes = True
    protection = "mixed"
    learns_policy = True

    def build_game(self, channels: int, params: TrainParams, protection: Protection) -> AdaptiveGame:
        return AdaptiveGame(channels, protection.k_values, params, protection)

    def setup(self, trainer: "Trainer") -> None:
        if trainer.game.policy.signals:  # the policy reads the live FR network's confidence
            trainer.game.signal = ConfidenceSignal(trainer.net.backbone, trainer.net.head)

    def choose_k(self, trainer: "Trainer", x: Tensor, game_on: bool) -> Tensor | int:
        if game_on:
            return trainer.game.choose_k(x, trainer.progress, trainer.generator)
        return min(trainer.protection.k_values)  # FR warm-up: the mildest mixing, so the FR network starts learning


METHOD = AdaptiveMixup()
