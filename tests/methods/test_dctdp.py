"""DCTDP: no DC, clipped coefficients, Laplace noise whose learned scales spend exactly the configured budget."""

import math

import pytest
import torch

from fmix.attacks.protectors import NoisyFrequencyProtector
from fmix.freq import DC_CHANNELS, FrequencyMask
from fmix.freq.transform import FrequencyTransform
from fmix.methods import build_method, method_class
from fmix.models.artifact import ModelRecord, load_trained_model
from fmix.models.encoders import (
    LaplaceBudgetNoise,
    NoisyFrequencyEncoder,
    add_laplace_noise,
    encoder_from_spec,
    encoder_spec,
)
from fmix.params import DctdpParams, ParamsError, TrainParams
from fmix.train.loop import train


def test_noise_scales_spend_the_budget_whatever_the_learned_split():
    noise = LaplaceBudgetNoise(channels=4, size=2, epsilon=10.0, clip=1.5)
    # Uniform split: each channel gets 10 / 4 = 2.5, so b = 2 * 1.5 * 2 * 2 / 2.5 = 4.8.
    torch.testing.assert_close(noise.scales(), torch.full((4,), 4.8))
    with torch.no_grad():
        noise.logits.copy_(torch.tensor([0.0, 1.0, 2.0, -3.0]))
    share = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -3.0], dtype=torch.float64), dim=0)
    torch.testing.assert_close(noise.scales().double(), 12.0 / (10.0 * share), rtol=1e-6, atol=0)
    assert noise.spent_epsilon() == pytest.approx(10.0, rel=1e-6)  # from the float32 scales the noise uses
    # The noise has those scales: E|Laplace(0, b)| = b; and the input is clipped first.
    torch.manual_seed(0)
    x = torch.full((20000, 4, 2, 2), 5.0)
    out = noise(x)
    torch.testing.assert_close((out - 1.5).abs().mean(dim=(0, 2, 3)), noise.scales().detach(), rtol=0.03, atol=0)
    with pytest.raises(ValueError, match=r"Expected epsilon > 0 and clip > 0, got epsilon=0.0, clip=1.0"):
        LaplaceBudgetNoise(4, 2, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"Expected x of shape \(B, 4, h, w\), got \(2, 3, 2, 2\)"):
        noise(torch.zeros(2, 3, 2, 2))


def _train_dctdp(pipeline_sample, out, dctdp: DctdpParams) -> dict:
    """A tiny dctdp run on the pipeline sample (its masker is at the default u = 2: 28x28 maps); its summary."""
    params = TrainParams(method="dctdp", width=0.125, embedding_size=32, batch_size=8, epochs=1, threads=1, dctdp=dctdp)
    aligned, splits, masker = (pipeline_sample[key] for key in ("aligned", "splits", "masker"))
    return train(params, aligned, splits, out, masker, progress=False)


def test_dctdp_trains_the_scales_and_reports_the_budget_it_spent(pipeline_sample, tmp_path):
    summary = _train_dctdp(pipeline_sample, tmp_path, DctdpParams(epsilon=5.0e4, clip=2.0, raw_units=False))
    privacy = summary["privacy"]
    assert summary["epsilon"] == privacy["epsilon"] == pytest.approx(5.0e4, rel=1e-6)
    assert privacy["coefficients_per_face"] == 189 * 28 * 28 and privacy["sensitivity_per_coefficient"] == 4.0
    assert privacy["epsilon_per_coefficient_mean"] == pytest.approx(5.0e4 / (189 * 28 * 28))
    model, record = load_trained_model(tmp_path / "model.pt")
    assert record.privacy == privacy and record.encoder["kind"] == "noisy_frequency"
    assert not set(record.encoder["kept_channels"]) & set(DC_CHANNELS) and len(record.encoder["kept_channels"]) == 189
    logits = torch.tensor(record.encoder["noise_logits"])
    assert logits.abs().max() > 0  # the split was learned (it starts uniform)
    uniform = 2.0 * 2.0 * 28 * 28 * 189 / 5.0e4
    assert privacy["noise_scale_min"] < uniform < privacy["noise_scale_max"]
    scales = model.encoder.noise.scales().detach().double()
    assert float((2.0 * 2.0 * 28 * 28 / scales).sum()) == pytest.approx(5.0e4, rel=1e-6)
    assert math.isclose(ModelRecord.load(tmp_path / "model.pt").privacy["epsilon_budget"], 5.0e4)
    assert (
        method_class("dctdp").attack_surface == "noisy"
        and build_method(TrainParams(method="dctdp")).build_protection(record.mixing) is None
    )  # the noise is the encoder's


def test_tface_setting_one_share_per_coefficient_and_a_nominal_sensitivity():
    # TFace's parametrisation: b_i = s_c / (epsilon a_i), a = softmax over all K h w coefficients.
    sensitivity = torch.tensor([1.0, 2.0])
    noise = LaplaceBudgetNoise(2, 2, epsilon=8.0, clip=None, sensitivity=sensitivity, per_coefficient=True)
    # Uniform split: a_i = 1 / 8, so b_i = s_c.
    torch.testing.assert_close(noise.scales(), torch.tensor([1.0, 2.0])[:, None, None].expand(2, 2, 2))
    with torch.no_grad():
        noise.logits.copy_(torch.arange(8.0).view(2, 2, 2))
    assert noise.nominal_epsilon() == pytest.approx(8.0, rel=1e-6)  # the budget formula holds for s_c ...
    assert noise.spent_epsilon() == math.inf  # ... but nothing bounds an unclipped coefficient
    # Not clipped: the noise is centred on the input itself.
    torch.manual_seed(0)
    x = torch.full((20000, 2, 2, 2), 5.0)
    torch.testing.assert_close((noise(x) - 5.0).abs().mean(dim=0), noise.scales().detach(), rtol=0.05, atol=0)
    # With a clip, the spent epsilon is the clip's: sum_i 2 C / b_i = 4 * 3 / 1 + 4 * 3 / 2 = 18 at a uniform split.
    clipped = LaplaceBudgetNoise(2, 2, epsilon=8.0, clip=1.5, sensitivity=sensitivity, per_coefficient=True)
    assert clipped.spent_epsilon() == pytest.approx(18.0) and clipped.nominal_epsilon() == pytest.approx(8.0)
    # Per channel with a nominal sensitivity: b_c = s_c h w / (epsilon a_c) = s_c at a uniform split.
    channel = LaplaceBudgetNoise(2, 2, epsilon=8.0, clip=3.0, sensitivity=sensitivity)
    torch.testing.assert_close(channel.scales(), torch.tensor([1.0, 2.0]))
    assert channel.spent_epsilon() == pytest.approx(2 * 3.0 * 4 / 1.0 + 2 * 3.0 * 4 / 2.0)
    with pytest.raises(ValueError, match=r"Expected a sensitivity when clip is None: nothing bounds the coefficients"):
        LaplaceBudgetNoise(2, 2, 8.0, None)
    with pytest.raises(ValueError, match=r"Expected a positive sensitivity of shape \(2,\), got shape \(3,\)"):
        LaplaceBudgetNoise(2, 2, 8.0, None, torch.ones(3))
    with pytest.raises(ValueError, match=r"Expected epsilon > 0 and clip > 0, got epsilon=8.0, clip=-1.0"):
        LaplaceBudgetNoise(2, 2, 8.0, -1.0)


def test_laplace_noise_per_coefficient_scales():
    scales = torch.zeros(2, 2, 2)
    scales[1, 0, 1] = 4.0
    x = torch.zeros(1000, 2, 2, 2)
    out = add_laplace_noise(x, scales, torch.Generator().manual_seed(0))
    assert out[:, 0].eq(0).all() and out[:, 1, 1].eq(0).all() and out[:, 1, 0, 0].eq(0).all()
    assert out[:, 1, 0, 1].abs().mean().item() == pytest.approx(4.0, rel=0.1)


def test_the_encoder_turns_a_raw_sensitivity_into_normalised_units_and_keeps_it_in_its_spec():
    mask = FrequencyMask(torch.tensor([1, 2]), torch.zeros(2), torch.tensor([2.0, 4.0]))
    encoder = NoisyFrequencyEncoder(FrequencyTransform(mask, 1), 98.0, None, sensitivity=1.0, per_coefficient=True)
    # 1 raw DCT unit is 1 / std normalised units.
    torch.testing.assert_close(encoder.noise.sensitivity, torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert encoder.noise.logits.shape == (2, 14, 14)
    # Uniform split over 2 x 14 x 14 = 392 coefficients: b_i = s_c / (98 / 392) = 4 s_c.
    torch.testing.assert_close(encoder.noise.scales()[:, 0, 0], torch.tensor([2.0, 1.0]))
    with torch.no_grad():
        encoder.noise.logits.normal_()
    spec = encoder_spec("dctdp", encoder)
    assert (spec["clip"], spec["sensitivity"], spec["per_coefficient"]) == (None, 1.0, True)
    rebuilt = encoder_from_spec(spec)
    torch.testing.assert_close(rebuilt.noise.scales(), encoder.noise.scales())
    # The white-box protector takes the per-coefficient scales as they are.
    protector = NoisyFrequencyProtector.from_encoder(rebuilt)
    assert protector.scales.shape == (2, 14, 14) and protector.clip is None
    # TFace's input: the same noisy channels in raw DCT units over the stds' rms, sqrt((4 + 16) / 2).
    raw = NoisyFrequencyEncoder(FrequencyTransform(mask, 1), 98.0, None, 1.0, True, raw_units=True)
    torch.testing.assert_close(raw.unit_scale, torch.tensor([2.0, 4.0]) / math.sqrt(10.0))
    images = torch.rand(2, 3, 112, 112) * 255
    expected = (
        encoder_from_spec({**spec, "noise_logits": raw.noise.logits.tolist()})(images, torch.Generator().manual_seed(3))
        * raw.unit_scale[None, :, None, None]
    )
    torch.testing.assert_close(raw(images, torch.Generator().manual_seed(3)), expected)
    assert encoder_from_spec(encoder_spec("dctdp", raw)).raw_units and not rebuilt.raw_units
    # A spec of an older model.pt (no sensitivity, per channel) still loads.
    old = {key: value for key, value in spec.items() if key not in ("sensitivity", "per_coefficient", "raw_units")}
    old.update(clip=3.0, noise_logits=[0.0, 0.0])
    assert encoder_from_spec(old).noise.scales().shape == (2,)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"clip": None}, r"train.dctdp.clip may be null only with a train.dctdp.sensitivity"),
        ({"sensitivity": 0.0}, r"train.dctdp.sensitivity must be null or > 0"),
        ({"clip": 0.0, "sensitivity": 1.0}, r"train.dctdp.epsilon and train.dctdp.clip must be > 0"),
    ],
)
def test_bad_dctdp_settings_are_rejected(values, message):
    with pytest.raises(ParamsError, match=message):
        DctdpParams(**values)


def test_dctdp_trains_at_the_tface_setting_and_reports_an_unbounded_epsilon(pipeline_sample, tmp_path):
    tface = DctdpParams(epsilon=0.5 * 189 * 28 * 28, clip=None, sensitivity=1.0, per_coefficient=True, raw_units=True)
    summary = _train_dctdp(pipeline_sample, tmp_path, tface)
    privacy = summary["privacy"]
    assert summary["epsilon"] == privacy["epsilon"] == math.inf and privacy["sensitivity_per_coefficient"] is None
    assert privacy["epsilon_nominal"] == pytest.approx(0.5 * 189 * 28 * 28, rel=1e-5)
    assert privacy["per_coefficient"] and privacy["raw_units"] and privacy["sensitivity_nominal_raw"] == 1.0
    model, record = load_trained_model(tmp_path / "model.pt")
    assert torch.tensor(record.encoder["noise_logits"]).shape == (189, 28, 28) and model.encoder.raw_units
    assert model.encoder.noise.scales().shape == (189, 28, 28)
