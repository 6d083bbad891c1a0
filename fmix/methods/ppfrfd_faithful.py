"""``ppfrfd_faithful``: PPFR-FD's masking as published: the lowest-energy channels, shuffled per sample.

After Wang et al. (PPFR-FD, AAAI 2022): of the block-DCT channels left once the low frequencies
are dropped, keep only the 36 with the lowest energy on public faces, and present each training
sample's channels in a random order of its own (``mixing.permute_channels``; no mixing). The
masker (channels, statistics) is built here from the public faces with ``export``'s transform and
``keep_lowest_energy = 36``, and ``fmix attack protection`` exports the same one, its release
permuting each sample's channels. The model is tested on un-shuffled channels.
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

KEEP = 36  # PPFR-FD's lowest-energy channels


class PpfrfdFaithful(Method):
    name = "ppfrfd_faithful"
    summary = f"the {KEEP} lowest-energy channels (low frequencies dropped), shuffled per sample, never mixed (PPFR-FD)"
    attack_surface = "masked"

    def masker_params(self, export: ExportParams) -> ExportParams:
        return dataclasses.replace(export, keep_lowest_energy=KEEP)

    def mixing(self, mixing: MixingParams) -> MixingParams:
        return dataclasses.replace(mixing, permute_channels=True)

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The masker of ``export`` (the ``--masker``'s transform) keeping the 36 lowest-energy channels."""
        upsample = json.loads(read_masker_metadata(inputs.masker_path)["upsample"]) if inputs.masker_path else 1
        params = self.masker_params(ExportParams(upsample=upsample))
        masker, _ = public_masker(inputs.aligned, inputs.splits / "public.csv", params)
        return FrequencyEncoder(masker.transform)
