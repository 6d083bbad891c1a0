"""Protectors of methods without a masker: InstaHide's pixel mixing and DCTDP's noisy channels."""

import pytest
import torch

from fmix.attacks import AttackConfig, ReconstructionAttack
from fmix.attacks.protectors import (
    NoisyFrequencyProtector,
    PixelMixProtector,
    ProtectedPairs,
    pixel_mix_to_image,
    sign_blind,
)
from fmix.freq import DC_CHANNELS, RunningChannelStats, block_dct
from fmix.masker.build import build_masker
from fmix.masker.protection import MixingConfig
from fmix.methods import build_method
from fmix.models.encoders import NoisyFrequencyEncoder, RgbEncoder
from fmix.params import ExportParams, MixingParams, TrainParams

TINY = AttackConfig(width=8, skip_channels=4, head_min=4, batch_size=8, adv_weight=0.0, seed=3)


@pytest.fixture(scope="module")
def instahide_mixing() -> MixingConfig:
    method = build_method(TrainParams(method="instahide"))
    return MixingConfig.from_params(method.mixing(MixingParams()))


def test_pixel_protector_mixes_four_faces_with_capped_weights_and_a_sign_mask(aligned_faces, instahide_mixing):
    faces, labels = aligned_faces
    images, labels = faces[:16].float(), labels[:16]
    pairs = PixelMixProtector(instahide_mixing, 4)(images, labels, torch.Generator().manual_seed(7))
    assert pairs.x.shape == (16, 3, 112, 112) and pairs.partners.shape == pairs.weights.shape == (16, 4)
    assert ((pairs.weights > 0).sum(dim=1) == 4).all() and (pairs.weights.max(dim=1).values <= 0.65 + 1e-6).all()
    torch.testing.assert_close(pairs.weights.sum(dim=1), torch.ones(16))
    assert all(len(set(row)) == 4 for row in pairs.partners.tolist())
    # The reported partners and weights reproduce x up to a sign per pixel (the rescaled mix of the RGB encoding).
    encoded = RgbEncoder()(images)
    plain = (pairs.weights[:, :, None, None, None] * encoded[pairs.partners]).sum(dim=1) / pairs.weights.norm(dim=1)[
        :, None, None, None
    ]
    torch.testing.assert_close(pairs.x.abs(), plain.abs())
    sign = pairs.x / plain
    assert set(sign.round().unique().tolist()) == {-1.0, 1.0} and 0.45 < (sign < 0).float().mean().item() < 0.55
    # The attacker's draws follow the owner's protection in training: same generator, same samples.
    owner = build_method(TrainParams(method="instahide")).build_protection(
        MixingParams(k_values=(4,), weight_law="instahide", sign_flip=True, noise=0.0)
    )
    reference = owner.protect_encoded(encoded, labels, 4, torch.Generator().manual_seed(7))
    torch.testing.assert_close(pairs.x, reference.x)
    assert torch.equal(pairs.partners, reference.partners)
    with pytest.raises(ValueError, match=r"Expected k in \[1, 4\] \(the mixing's k_max\), got 5"):
        PixelMixProtector(instahide_mixing, 5)


def test_a_sign_blind_attacker_reads_magnitudes_and_keeps_the_constituents():
    def protector(images, labels, generator):
        signs = torch.randint(0, 2, images.shape, generator=generator) * 2.0 - 1.0
        return ProtectedPairs(images * signs, torch.tensor([[1, 0], [0, 1]]), torch.tensor([[0.6, 0.4], [0.7, 0.3]]))

    images = torch.tensor([[[[1.0, -2.0]]], [[[3.0, 0.5]]]])
    pairs = sign_blind(protector)(images, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(pairs.x, torch.tensor([[[[1.0, 2.0]]], [[[3.0, 0.5]]]]))
    assert pairs.partners.tolist() == [[1, 0], [0, 1]]
    torch.testing.assert_close(pairs.weights, torch.tensor([[0.6, 0.4], [0.7, 0.3]]))


def test_pixel_mix_is_shown_as_its_absolute_value():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    expected = torch.tensor([255.0, 127.5, 0.0, 127.5, 255.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    torch.testing.assert_close(pixel_mix_to_image(x), expected)


def test_the_inversion_network_takes_rgb_pixel_mixes(aligned_faces, instahide_mixing):
    faces, labels = aligned_faces
    protector = PixelMixProtector(instahide_mixing, 4)
    attack = ReconstructionAttack(TINY).fit(faces[:16], protector, labels[:16], steps=2)
    assert (attack.generator.in_channels, attack.generator.in_size, attack.generator.out_size) == (3, 112, 112)
    recon = attack.invert(protector(faces[:4].float(), labels[:4], torch.Generator().manual_seed(0)).x)
    assert recon.shape == (4, 3, 112, 112) and 0.0 <= recon.min() and recon.max() <= 255.0


@pytest.fixture(scope="module")
def noisy_encoder(aligned_faces) -> NoisyFrequencyEncoder:
    """DCTDP's encoder at u = 1: the 189 non-DC channels (14 x 14), budget for b = 1 on every channel."""
    stats = RunningChannelStats()
    stats.update(block_dct(aligned_faces[0].float(), 1))
    masker = build_masker(ExportParams(upsample=1, low_freq_threshold=0), stats)
    assert masker.mask.num_kept == 189 and not set(masker.mask.kept.tolist()) & set(DC_CHANNELS)
    return NoisyFrequencyEncoder(masker.transform, epsilon=2.0 * 3.0 * 14 * 14 * 189, clip=3.0)


def test_noisy_protector_adds_laplace_noise_at_the_encoders_scales(aligned_faces, noisy_encoder):
    images = aligned_faces[0][:48].float()
    protector = NoisyFrequencyProtector.from_encoder(noisy_encoder)
    torch.testing.assert_close(protector.scales, torch.ones(189))  # a uniform split: b = 2 C h w K / epsilon = 1
    with torch.no_grad():
        noisy_encoder.noise.logits.copy_(torch.linspace(-1.5, 1.5, 189))
    protector = NoisyFrequencyProtector.from_encoder(noisy_encoder)
    torch.testing.assert_close(protector.scales, noisy_encoder.noise.scales().detach())
    assert protector.clip == 3.0 and protector.scales.max() / protector.scales.min() > 10
    pairs = protector(images, torch.zeros(48, dtype=torch.long), torch.Generator().manual_seed(1))
    assert (
        pairs.x.shape == (48, 189, 14, 14)
        and pairs.partners[:, 0].tolist() == list(range(48))
        and pairs.weights.eq(1).all()
    )
    # E|Laplace(0, b)| = b: the empirical scale of each channel's noise (48 x 14 x 14 draws) within 6 %.
    noise = pairs.x - noisy_encoder.transform(images).clamp(-3.0, 3.0)
    torch.testing.assert_close(noise.abs().mean(dim=(0, 2, 3)), protector.scales, rtol=0.06, atol=0)
    # Its own draws: the generator decides the noise.
    again = protector(images, torch.zeros(48, dtype=torch.long), torch.Generator().manual_seed(1))
    assert torch.equal(pairs.x, again.x) and not torch.equal(
        pairs.x, protector(images, torch.zeros(48, dtype=torch.long), torch.Generator().manual_seed(2)).x
    )
    with pytest.raises(
        ValueError, match=r"Expected 189 non-negative scales \(one per kept channel\), got shape \(3,\)"
    ):
        NoisyFrequencyProtector(noisy_encoder.transform, torch.ones(3))
