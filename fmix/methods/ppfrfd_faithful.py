"""``ppfrfd_faithful``: PPFR-FD's masking: 36 channels left once the low frequencies are dropped, shuffled per sample.

After Wang et al. (PPFR-FD, AAAI 2022): the block-DCT channels that carry the face's appearance
are dropped (DC and the low frequencies, ``export.low_freq_threshold``), 36 channels are kept,
and each training sample's channels come in a random order of its own (``mixing.permute_channels``,
no key; no mixing). The paper keeps the channels its analysis network finds useful for recognition;
here they are the 36 remaining channels of highest energy on public faces
(``keep_highest_energy = 36``): the lowest-energy ones are nearly empty after the bilinear
upsampling (7.6e-9 of the energy at u = 2) and verified at chance (docs/results/2026-12-05-ppfrfd-faithful.md).
The masker (channels, statistics) is built here from the public faces with ``export``'s transform,
and ``fmix attack protection`` exports the same one, its release permuting each sample's channels.
The model is tested on un-shuffled channels (one of the orders it trained on).
"""

from __future__ import annotations

import dataclasses
import json

from torch import nn

from fmix.masker.build import read_masker_metadata
from fmix.masker.export import public_masker
from fmix.methods.base import Method, TrainInputs
from fmix.models.encoders import FrequencyEncoder
from fmix.params import ExportParams, MixingParams

KEEP = 36  # PPFR-FD's channel count


class PpfrfdFaithful(Method):
    name = "ppfrfd_faithful"
    summary = f"the {KEEP} highest-energy channels left once the low frequencies are dropped, shuffled per sample, never mixed (PPFR-FD)"
    attack_surface = "masked"

    def masker_params(self, export: ExportParams) -> ExportParams:
        return dataclasses.replace(export, keep_lowest_energy=None, keep_highest_energy=KEEP)

    def mixing(self, mixing: MixingParams) -> MixingParams:
        return dataclasses.replace(mixing, permute_channels=True)

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The masker of ``export`` (the ``--masker``'s transform) keeping the 36 highest-energy channels left."""
        upsample = json.loads(read_masker_metadata(inputs.masker_path)["upsample"]) if inputs.masker_path else 1
        params = self.masker_params(ExportParams(upsample=upsample))
        masker, _ = public_masker(inputs.aligned, inputs.splits / "public.csv", params)
        return FrequencyEncoder(masker.transform)
