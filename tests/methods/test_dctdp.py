"""DCTDP: no DC, clipped coefficients, Laplace noise whose learned scales spend exactly the configured budget."""

import math

import pytest
import torch

from fmix.freq import DC_CHANNELS
from fmix.methods import build_method, method_class
from fmix.models.artifact import ModelRecord, load_trained_model
from fmix.models.encoders import LaplaceBudgetNoise
from fmix.params import DctdpParams, TrainParams
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


def test_dctdp_trains_the_scales_and_reports_the_budget_it_spent(pipeline_sample, tmp_path):
    # The pipeline sample's masker is at the default u = 2: 28x28 maps.
    params = TrainParams(
        method="dctdp",
        width=0.125,
        embedding_size=32,
        batch_size=8,
        epochs=1,
        threads=1,
        dctdp=DctdpParams(epsilon=5.0e4, clip=2.0),
    )
    summary = train(
        params,
        pipeline_sample["aligned"],
        pipeline_sample["splits"],
        tmp_path,
        pipeline_sample["masker"],
        progress=False,
    )
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
        method_class("dctdp").attack_surface == "noisy" and build_method(params).build_protection(record.mixing) is None
    )  # the noise is the encoder's
