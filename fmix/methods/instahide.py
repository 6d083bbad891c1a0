"""``instahide``: InstaHide (Huang et al., ICML 2020) on the private faces, in the pixel domain.

Each training sample is a mix of k = 4 RGB faces of the batch with weights capped at 0.65 (the
``instahide`` law: normalised ``|N(0, 1)|``), multiplied by a random +-1 sign per pixel; the label
is the same mix of the constituents' labels. No frequency transform and no masking: the network
sees (signed) pixels, and is tested on plain RGB faces like ``none``. The sign mask and the weights
are secret draws of the training run. ``fmix attack protection`` attacks this pixel-domain
protection itself (``attack_surface = "pixels"``, :class:`~fmix.attacks.protectors.PixelMixProtector`):
the white-box attacker knows k = 4, the cap, the weight law and that a sign mask is applied, and
draws its own partners, weights and signs to train the inversion network on public faces; the
black-box attacker guesses ``attack.black_box_k`` faces with the default weight law and a sign
mask. S1 and S2 are measured on ``|x|``, where Carlini et al. (2021) start their attack.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from fmix.masker.protection import MixingConfig, Protection
from fmix.methods.base import Method, RunContext
from fmix.params import MixingParams

K = 4  # faces per InstaHide sample
CAP = 0.65  # largest weight


class InstaHide(Method):
    name = "instahide"
    summary = "RGB faces mixed 4 at a time (weights <= 0.65) with a random sign per pixel (InstaHide)"
    mixes = True
    attack_surface = "pixels"

    def mixing(self, mixing: MixingParams) -> MixingParams:
        """InstaHide's own mixing: k = 4, the ``instahide`` weight law capped at 0.65, a sign mask, no permutation, no noise."""
        return dataclasses.replace(
            mixing, k_values=(K,), weight_law="instahide", cap=CAP, sign_flip=True, permute_channels=False, noise=0.0
        )

    def build_protection(self, mixing: MixingParams) -> Protection:
        return Protection(None, MixingConfig.from_params(mixing), mixing.k_values)  # on pixels: no masker

    def choose_k(self, ctx: RunContext, x: Tensor, game_on: bool) -> int:
        return K
