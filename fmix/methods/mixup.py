"""``mixup``: Frequency MixUp of masked faces with a fixed k (``train.k``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from fmix.methods.base import MaskingMethod
from fmix.params import MixingParams, TrainParams

if TYPE_CHECKING:
    from fmix.train.trainer import Trainer


class FixedKMixup(MaskingMethod):
    name = "mixup"
    summary = "masked faces mixed k at a time, k fixed (train.k)"
    mixes = True
    protection = "mixed"

    def check(self, params: TrainParams, mixing: MixingParams, world: int) -> None:
        if params.k > max(mixing.k_values):
            raise ValueError(f"method 'mixup' mixes at most max(mixing.k_values)={max(mixing.k_values)} faces, got train.k={params.k}")

    def masker_k(self, params: TrainParams) -> int:
        return params.k

    def choose_k(self, trainer: "Trainer", x: Tensor, game_on: bool) -> int:
        return trainer.params.k


METHOD = FixedKMixup()
