"""``instahide``: InstaHide (Huang et al., ICML 2020) on the private faces, in the pixel domain.

Each training sample is a mix of k = 4 RGB faces of the batch with weights capped at 0.65 (the
``instahide`` law: normalised ``|N(0, 1)|``), multiplied by a random +-1 sign per pixel; the label
is the same mix of the constituents' labels. No frequency transform and no masking: the network
sees (signed) pixels, and is tested on plain RGB faces like ``none``. The sign mask and the weights
are secret draws of the training run. ``fmix attack protection`` has no masker to attack here (its
inversion networks attack a masker's output); the un-mixing attacks of Carlini et al. (2021) on
InstaHide are what such a release would face.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from torch import Tensor

from fmix.masker.protection import MixingConfig, Protection
from fmix.methods.base import Method
from fmix.params import MixingParams, TrainParams

if TYPE_CHECKING:
    from fmix.train.trainer import Trainer

K = 4  # faces per InstaHide sample
CAP = 0.65  # largest weight


class InstaHide(Method):
    name = "instahide"
    summary = "RGB faces mixed 4 at a time (weights <= 0.65) with a random sign per pixel (InstaHide)"
    mixes = True

    def mixing(self, mixing: MixingParams, params: TrainParams) -> MixingParams:
        """InstaHide's own mixing: k = 4, the ``instahide`` weight law capped at 0.65, a sign mask, no permutation."""
        return dataclasses.replace(mixing, k_values=(K,), weight_law="instahide", cap=CAP, sign_flip=True, permute_channels=False)

    def build_protection(self, mixing: MixingParams) -> Protection:
        return Protection(None, MixingConfig.from_params(mixing), mixing.k_values)  # on pixels: no masker

    def choose_k(self, trainer: "Trainer", x: Tensor, game_on: bool) -> int:
        return K


METHOD = InstaHide()
