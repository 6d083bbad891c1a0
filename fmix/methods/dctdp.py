"""``dctdp``: DC removed, then Laplace noise with a learned per-coefficient-channel scale under a budget.

After DCTDP (Ji et al., ECCV 2022): the face goes to the block-DCT domain, the DC channels are
dropped, the other 189 channels are normalised by public statistics, clipped to [-C, C]
(``train.dctdp.clip``) and perturbed with Laplace noise. The noise scale of each channel is
learned with the FR network, but the budget is fixed: with a sensitivity of ``2 C`` per clipped
coefficient (one face replaced by any other), the face's privacy loss is
``epsilon = sum_c 2 C h w / b_c`` (:class:`~fmix.models.encoders.LaplaceBudgetNoise`), held at
``train.dctdp.epsilon`` by construction. The public DCTDP code never computes its sensitivity;
here ``privacy`` in ``train_summary.json`` and ``model.pt`` reports the epsilon spent per face as
computed from the learned scales, the sensitivity, the number of coefficients and the scales'
range. ``train.dctdp.per_coefficient``, ``train.dctdp.sensitivity`` (with ``clip: null``) and
``train.dctdp.raw_units`` give the setting of DCTDP's public code: one learned share per
coefficient, a nominal sensitivity of 1 in raw DCT units that no clip enforces (the epsilon
reported is then ``inf``; ``epsilon_nominal`` is the budget formula's), and the noisy channels
handed to the FR network in raw units. Noise is drawn at evaluation too (what leaves the
client is always noisy). There is no ONNX masker for the noise: ``fmix attack protection``
attacks the model's own encoder (``attack_surface = "noisy"``,
:class:`~fmix.attacks.protectors.NoisyFrequencyProtector`). The white-box attacker
knows the transform, the clip and the learned scales (``model.pt`` holds them) and draws its own
noise; the black-box attacker drops DC only (the release shows 189 channels), normalises by public
statistics, does not clip, and adds one Laplace scale guessed from the release's variance.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from fmix.data.faces import read_face_list
from fmix.freq import DC_CHANNELS, NUM_CHANNELS, FrequencyMask
from fmix.freq.transform import FrequencyTransform
from fmix.masker.build import public_channel_stats, read_masker_metadata
from fmix.methods.base import Method, RunContext, TrainInputs
from fmix.models.encoders import NoisyFrequencyEncoder


class Dctdp(Method):
    name = "dctdp"
    summary = "189 block-DCT channels (DC dropped), clipped, plus Laplace noise with learned scales under a per-face budget (DCTDP)"
    attack_surface = "noisy"
    trainable_encoder = True

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The all-but-DC channels at the masker's upsample factor (1 without ``--masker``), then the noise."""
        upsample = json.loads(read_masker_metadata(inputs.masker_path)["upsample"]) if inputs.masker_path else 1
        public = [inputs.aligned / path for path, _ in read_face_list(inputs.splits / "public.csv")]
        stats, _ = public_channel_stats(public, upsample)
        kept = torch.tensor([c for c in range(NUM_CHANNELS) if c not in DC_CHANNELS])
        mean, std = stats.stats(kept)
        transform = FrequencyTransform(FrequencyMask(kept, mean.float(), std.float()), upsample)
        settings = self.params.dctdp
        return NoisyFrequencyEncoder(
            transform,
            settings.epsilon,
            settings.clip,
            settings.sensitivity,
            settings.per_coefficient,
            settings.raw_units,
        )

    def privacy(self, ctx: RunContext) -> dict:
        noise = ctx.encoder.noise
        scales = noise.scales().detach().double()
        coefficients = noise.channels * noise.size * noise.size
        spent = noise.spent_epsilon()
        return {
            "mechanism": "laplace (pure epsilon-DP per face; replace-one neighbours; basic composition over its coefficients)",
            "epsilon": spent,  # inf when nothing clips the coefficients
            "epsilon_budget": noise.epsilon,
            "epsilon_nominal": noise.nominal_epsilon(),  # the budget formula's own, for the nominal sensitivity
            "delta": 0.0,
            "clip": noise.clip,
            "sensitivity_per_coefficient": None if noise.clip is None else 2.0 * noise.clip,
            "sensitivity_nominal_raw": ctx.encoder.raw_sensitivity,  # raw DCT units; None: 2 C
            "per_coefficient": noise.per_coefficient,
            "raw_units": ctx.encoder.raw_units,
            "coefficients_per_face": coefficients,
            "epsilon_per_coefficient_mean": spent / coefficients,
            "noise_scale_min": float(scales.min()),
            "noise_scale_median": float(scales.median()),
            "noise_scale_max": float(scales.max()),
        }
