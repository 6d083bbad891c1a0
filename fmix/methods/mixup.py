"""``mixup``: Frequency MixUp of masked faces with a fixed k (``train.mixup.k``)."""

from __future__ import annotations

from torch import Tensor

from fmix.methods.base import MaskingMethod, RunContext
from fmix.params import MixingParams


class FixedKMixup(MaskingMethod):
    name = "mixup"
    summary = "masked faces mixed k at a time, k fixed (train.mixup.k)"
    mixes = True
    attack_surface = "mixed"

    def check(self, mixing: MixingParams, world: int) -> None:
        k = self.params.mixup.k
        if k > max(mixing.k_values):
            raise ValueError(
                f"method 'mixup' mixes at most max(mixing.k_values)={max(mixing.k_values)} faces, got train.mixup.k={k}"
            )

    def masker_k(self) -> int:
        return self.params.mixup.k

    def choose_k(self, ctx: RunContext, x: Tensor, game_on: bool) -> int:
        return self.params.mixup.k
