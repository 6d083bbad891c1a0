"""Tests of fmix.freq.masking and fmix.freq.visualize."""

import copy

import pytest
import torch

from fmix.freq import (
    DC_CHANNELS,
    FrequencyMask,
    RunningChannelStats,
    block_dct,
    channel_energy,
    channel_stats,
    low_frequency_channels,
    protected_to_image,
    random_channel_permutation,
    select_channels,
    to_uint8_hwc,
)


def random_freq(batch=4, channels=192, size=3, seed=0, offset=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 20, channels).reshape(1, channels, 1, 1)
    return offset + scale * torch.randn(batch, channels, size, size, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- selection


def test_low_frequency_selection_drops_18_channels():
    kept = select_channels(low_freq_threshold=2)
    assert kept.dtype == torch.long and kept.numel() == 174
    assert torch.equal(kept, kept.sort().values)
    assert not set(kept.tolist()) & set(low_frequency_channels(2))


def test_drop_list_and_threshold_combine():
    kept = select_channels(drop=[191, 100], low_freq_threshold=0)
    assert kept.numel() == 192 - 3 - 2
    assert {0, 64, 128, 100, 191}.isdisjoint(kept.tolist())


def test_keep_lowest_energy_picks_the_quietest_remaining_channels():
    energy = torch.arange(192, 0, -1, dtype=torch.float64)  # channel 191 is the quietest
    kept = select_channels(low_freq_threshold=0, keep_lowest_energy=5, energy=energy)
    assert kept.tolist() == [187, 188, 189, 190, 191]
    kept = select_channels(drop=[191], low_freq_threshold=0, keep_lowest_energy=2, energy=energy)
    assert kept.tolist() == [189, 190]


def test_keep_highest_energy_picks_the_loudest_remaining_channels():
    energy = torch.arange(192, 0, -1, dtype=torch.float64)  # channel 0 is the loudest
    kept = select_channels(low_freq_threshold=2, keep_highest_energy=4, energy=energy)
    assert kept.tolist() == [3, 4, 5, 6]  # 0, 1, 2, 8, 9 and 16 have p + q <= 2
    kept = select_channels(drop=[3, 5], low_freq_threshold=2, keep_highest_energy=3, energy=energy)
    assert kept.tolist() == [4, 6, 7]


def test_keep_lowest_energy_on_real_faces_drops_dc(real_faces):
    energy = channel_energy(block_dct(real_faces))
    kept = select_channels(keep_lowest_energy=36, energy=energy)
    assert kept.numel() == 36
    assert set(DC_CHANNELS).isdisjoint(kept.tolist())
    assert energy[kept].max() <= energy[[c for c in range(192) if c not in kept.tolist()]].min()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, r"DC channels \(0, 64, 128\) must be dropped, but the selection keeps \[0, 64, 128\]"),
        ({"drop": [0, 64]}, ValueError, r"selection keeps \[128\]"),
        ({"drop": [192]}, ValueError, r"drop entries in \[0, 191\], got 192"),
        ({"drop": [1.0]}, TypeError, "every entry of drop to be an int"),
        ({"low_freq_threshold": -1}, ValueError, "threshold >= 0"),
        ({"low_freq_threshold": 14}, ValueError, "drops every channel"),
        ({"keep_lowest_energy": 3}, ValueError, "needs the per-channel energy"),
        ({"low_freq_threshold": 2, "energy": torch.ones(192)}, ValueError, "only used with keep_lowest_energy"),
        ({"low_freq_threshold": 2, "keep_lowest_energy": 175, "energy": torch.ones(192)}, ValueError, "174"),
        ({"keep_lowest_energy": 3, "energy": torch.ones(191)}, ValueError, r"energy of shape \(192,\)"),
        ({"keep_lowest_energy": 3, "energy": torch.full((192,), float("nan"))}, ValueError, "finite energy"),
        ({"keep_highest_energy": 3}, ValueError, "keep_highest_energy needs the per-channel energy"),
        ({"low_freq_threshold": 2, "keep_highest_energy": 175, "energy": torch.ones(192)}, ValueError, "174"),
        (
            {"keep_lowest_energy": 3, "keep_highest_energy": 3, "energy": torch.ones(192)},
            ValueError,
            "exclude each other",
        ),
    ],
)
def test_select_channels_rejects_bad_selections(kwargs, error, message):
    with pytest.raises(error, match=message):
        select_channels(**kwargs)


# --------------------------------------------------------------------------- statistics


def test_channel_energy_and_stats_by_hand():
    freq = torch.zeros(2, 192, 1, 2, dtype=torch.float64)
    freq[:, 5] = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])
    energy = channel_energy(freq)
    assert energy[5].item() == pytest.approx((1 + 9 + 25 + 49) / 4)
    assert energy.sum().item() == energy[5].item()
    mean, std = channel_stats(freq, torch.tensor([5, 6]))
    torch.testing.assert_close(mean, torch.tensor([4.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([5.0**0.5, 1e-6], dtype=torch.float64))  # constant: floor


def test_running_stats_over_batches_equal_stats_of_concatenation():
    first, second = random_freq(3, seed=1, offset=1e4), random_freq(5, seed=2, offset=1e4)
    running = RunningChannelStats()
    running.update(first)
    running.update(second)
    everything = torch.cat([first, second])
    kept = select_channels(low_freq_threshold=2)
    expected_mean, expected_std = channel_stats(everything, kept)
    mean, std = running.stats(kept)
    torch.testing.assert_close(mean, expected_mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(std, expected_std, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(running.energy, channel_energy(everything), atol=0, rtol=1e-12)
    assert running.count == 8 * 9


def test_running_stats_need_data_and_the_right_channels():
    running = RunningChannelStats()
    with pytest.raises(ValueError, match="seen no data"):
        running.mean
    with pytest.raises(ValueError, match=r"shape \(B, 192, H, W\), got \(1, 10, 2, 2\)"):
        running.update(torch.zeros(1, 10, 2, 2))


# --------------------------------------------------------------------------- permutation


def test_random_channel_permutation_is_seeded_and_valid():
    a = random_channel_permutation(6, 36, torch.Generator().manual_seed(0))
    b = random_channel_permutation(6, 36, torch.Generator().manual_seed(0))
    c = random_channel_permutation(6, 36, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort(dim=1).values, torch.arange(36).expand(6, 36))
    assert a.dtype == torch.long


# --------------------------------------------------------------------------- mask


def make_mask(freq: torch.Tensor, threshold=2) -> FrequencyMask:
    kept = select_channels(low_freq_threshold=threshold)
    mean, std = channel_stats(freq, kept)
    return FrequencyMask(kept, mean, std).double()


def test_forward_keeps_and_normalises_with_the_stored_stats():
    freq = random_freq(8, offset=3.0)
    mask = make_mask(freq)
    out = mask(freq)
    assert out.shape == (8, 174, 3, 3)
    expected = (freq[:, mask.kept] - mask.mean[:, None, None]) / mask.std[:, None, None]
    torch.testing.assert_close(out, expected)
    std, mean = torch.std_mean(out, dim=(0, 2, 3), correction=0)
    assert mean.abs().max() < 1e-6 and (std - 1).abs().max() < 1e-6


def test_permutation_reorders_and_inverse_restores(generator):
    freq = random_freq(4)
    mask = make_mask(freq)
    permutation = random_channel_permutation(4, mask.num_kept, generator)
    shuffled = mask(freq, permutation)
    plain = mask(freq)
    assert torch.equal(shuffled[2, 7], plain[2, permutation[2, 7]])
    restored = mask.inverse(shuffled, permutation)
    assert restored.shape == freq.shape
    torch.testing.assert_close(restored[:, mask.kept], freq[:, mask.kept])
    dropped = [c for c in range(192) if c not in mask.kept.tolist()]
    assert restored[:, dropped].abs().max().item() == 0.0


def test_mask_state_dict_round_trip():
    mask = make_mask(random_freq()).float()
    rebuilt = FrequencyMask.from_state_dict(mask.state_dict())
    for name in ("kept", "mean", "std"):
        assert torch.equal(getattr(rebuilt, name), getattr(mask, name))
    loaded = FrequencyMask(select_channels(low_freq_threshold=2))
    loaded.load_state_dict(mask.state_dict())
    assert torch.equal(loaded.kept, mask.kept)
    with pytest.raises(ValueError, match=r"lacks \['std'\]"):
        FrequencyMask.from_state_dict({"kept": mask.kept, "mean": mask.mean})


def test_mask_rejects_dc_unless_allowed():
    with pytest.raises(ValueError, match=r"kept contains \[64\]"):
        FrequencyMask(torch.tensor([1, 64]))
    assert FrequencyMask(torch.arange(192), allow_dc=True).num_kept == 192


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: FrequencyMask(torch.tensor([1, 1])), ValueError, "distinct kept"),
        (lambda m: FrequencyMask(torch.tensor([1.0])), TypeError, "kept with an integer dtype"),
        (lambda m: FrequencyMask(torch.tensor([1, 2]), std=torch.tensor([1.0, 0.0])), ValueError, "std > 0"),
        (lambda m: FrequencyMask(torch.tensor([1, 2]), mean=torch.zeros(3)), ValueError, r"mean of shape"),
        (lambda m: m(torch.zeros(2, 191, 3, 3)), ValueError, r"shape \(B, 192, H, W\)"),
        (
            lambda m: m(torch.zeros(2, 192, 3, 3), torch.zeros(2, 5).long()),
            ValueError,
            r"permutation of shape \(2, 3\)",
        ),
        (lambda m: m.inverse(torch.zeros(2, 3, 1, 1), torch.zeros(2, 3).long()), ValueError, "permutation of 0..2"),
    ],
)
def test_mask_rejects_bad_input(call, error, message):
    mask = FrequencyMask(torch.tensor([1, 2, 3]))
    with pytest.raises(error, match=message):
        call(mask)


def test_mask_and_mixing_export_to_onnx(tmp_path, generator):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from fmix.freq import apply_mixing, sample_mixing

    class Masker(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mask = FrequencyMask(select_channels(low_freq_threshold=2))

        def forward(self, image, permutation, partners, weights, sign):
            masked = self.mask(block_dct(image, 2, check_range=False), permutation)
            return apply_mixing(masked, partners, weights, sign)

    image = torch.rand(4, 3, 16, 16, generator=generator) * 255
    k = torch.tensor([1, 2, 3, 2])
    draw = sample_mixing(torch.arange(4), k, 3, sign_shape=(174, 4, 4), generator=generator)
    inputs = (image, random_channel_permutation(4, 174, generator), draw.partners, draw.weights, draw.sign)
    path = tmp_path / "masker.onnx"
    masker = Masker().eval()
    torch.onnx.export(masker, inputs, str(path), dynamo=True)
    session = ort.InferenceSession(str(path))
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), inputs)}
    expected = masker(*inputs)
    torch.testing.assert_close(torch.from_numpy(session.run(None, feeds)[0]), expected, atol=1e-3, rtol=1e-5)


# --------------------------------------------------------------------------- visualisation


@pytest.mark.parametrize("u", [1, 8])
def test_visualising_an_unmasked_sample_gives_the_image_back(real_faces, u):
    x = real_faces[:2]
    mask = FrequencyMask(torch.arange(192), allow_dc=True).double()
    image = protected_to_image(mask(block_dct(x, u)), mask, u)
    assert image.shape == x.shape
    torch.testing.assert_close(image, x, atol=1e-8, rtol=0)


def test_visualisation_of_a_masked_sample(real_faces, generator):
    freq = block_dct(real_faces)
    mask = make_mask(freq)
    permutation = random_channel_permutation(4, mask.num_kept, generator)
    image = protected_to_image(mask(freq, permutation), mask, permutation=permutation)
    assert image.shape == real_faces.shape
    assert image.min() >= 0 and image.max() <= 255
    # Dropping DC and the lowest frequencies removes the mean colour: grey around 128.
    assert abs(image.mean().item() - 128) < 10
    assert (image - real_faces).abs().mean() > 10


def test_to_uint8_hwc():
    x = torch.tensor([-3.0, 0.4, 0.6, 254.5, 300.0]).reshape(1, 1, 1, 5).expand(2, 3, 1, 5)
    pixels = to_uint8_hwc(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 1, 5, 3)
    assert pixels[0, 0, :, 0].tolist() == [0, 0, 1, 254, 255]  # round half to even: 254.5 -> 254
    assert to_uint8_hwc(x[0]).shape == (1, 5, 3)
    with pytest.raises(ValueError, match=r"got \(2, 1, 5\)"):
        to_uint8_hwc(torch.zeros(2, 1, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mask_on_cuda_matches_cpu(generator):
    freq = random_freq(4).float()
    mask = make_mask(freq).float()
    permutation = random_channel_permutation(4, mask.num_kept, generator)
    expected = mask(freq, permutation)
    mask_gpu = copy.deepcopy(mask).cuda()
    out = mask_gpu(freq.cuda(), permutation.cuda())
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
    restored = mask_gpu.inverse(out, permutation.cuda()).cpu()
    torch.testing.assert_close(restored, mask.inverse(expected, permutation), atol=1e-4, rtol=1e-5)
    permutation_gpu = random_channel_permutation(4, 10, torch.Generator("cuda").manual_seed(0))
    assert permutation_gpu.device.type == "cuda"
