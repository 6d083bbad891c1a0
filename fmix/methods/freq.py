"""``freq``: all 192 frequency channels, DC included, normalised by public statistics (no masking)."""

from __future__ import annotations

import json

from torch import nn

from fmix.data.faces import read_face_list
from fmix.masker.build import all_channel_transform, read_masker_metadata
from fmix.methods.base import Method, TrainInputs
from fmix.models.encoders import FrequencyEncoder


class AllChannels(Method):
    name = "freq"
    summary = "all 192 block-DCT channels (the frequency domain without masking)"

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The masker's transform at its upsample factor (1 without ``--masker``), every channel kept."""
        upsample = json.loads(read_masker_metadata(inputs.masker_path)["upsample"]) if inputs.masker_path else 1
        public = [path for path, _ in read_face_list(inputs.splits / "public.csv")]
        return FrequencyEncoder(all_channel_transform(inputs.aligned, public, upsample))
