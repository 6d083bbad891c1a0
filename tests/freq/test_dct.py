"""Tests of fmix.freq.dct: block DCT / IDCT, colour conversion, channel helpers."""

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from fmix.freq import dct as dct_module
from fmix.freq.dct import (
    block_dct,
    block_idct,
    channel_frequency,
    channel_index,
    dct_matrix,
    low_frequency_channels,
    rgb_to_ycbcr,
    upsample_matrix,
    ycbcr_to_rgb,
)


def upsample(x: torch.Tensor, u: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=u, mode="bilinear", align_corners=False) if u > 1 else x


def scipy_block_dct(x: torch.Tensor, u: int) -> torch.Tensor:
    """Reference: F.interpolate, YCbCr by hand, scipy dctn per 8x8 block, channel layout."""
    up = upsample(x.double(), u).numpy()
    r, g, b = up[:, 0], up[:, 1], up[:, 2]
    planes = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b - 128,
            -0.168736 * r - 0.331264 * g + 0.5 * b,
            0.5 * r - 0.418688 * g - 0.081312 * b,
        ],
        axis=1,
    )
    batch, _, height, width = planes.shape
    blocks = planes.reshape(batch, 3, height // 8, 8, width // 8, 8).transpose(0, 1, 2, 4, 3, 5)
    coefficients = scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho")  # (B, 3, h, w, p, q)
    channels = coefficients.transpose(0, 1, 4, 5, 2, 3).reshape(batch, 192, height // 8, width // 8)
    return torch.from_numpy(np.ascontiguousarray(channels))


def materialised_block_dct(x: torch.Tensor, u: int) -> torch.Tensor:
    """Reference in torch: upsampled image built explicitly, then the DCT of every block."""
    planes = rgb_to_ycbcr(upsample(x, u)) - 128
    batch, _, height, width = planes.shape
    d = dct_matrix(8, x.dtype)
    blocks = planes.reshape(batch, 3, height // 8, 8, width // 8, 8)
    coefficients = torch.einsum("bchiwj,pi,qj->bcpqhw", blocks, d, d)
    return coefficients.reshape(batch, 192, height // 8, width // 8)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest expected magnitude."""
    return ((actual.double() - expected.double()).abs().max() / expected.abs().max()).item()


def random_rgb(shape=(2, 3, 16, 24), dtype=torch.float64, seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 255


# --------------------------------------------------------------------------- fixed values


def test_dct_matrix_is_orthonormal_dct_ii():
    d = dct_matrix(8, torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), atol=1e-14, rtol=0)
    expected = scipy.fft.dct(np.eye(8), norm="ortho", axis=0)
    torch.testing.assert_close(d, torch.from_numpy(expected), atol=1e-14, rtol=0)
    assert d[0, 0].item() == pytest.approx(8**-0.5)


@pytest.mark.parametrize(
    "rgb, ycbcr",
    [
        ((255, 0, 0), (76.245, 84.97232, 255.5)),
        ((0, 255, 0), (149.685, 43.52768, 21.23456)),
        ((0, 0, 255), (29.07, 255.5, 107.26544)),
        ((255, 255, 255), (255.0, 128.0, 128.0)),
        ((0, 0, 0), (0.0, 128.0, 128.0)),
    ],
)
def test_ycbcr_of_pure_colours(rgb, ycbcr):
    pixel = torch.tensor(rgb, dtype=torch.float64).reshape(1, 3, 1, 1)
    result = rgb_to_ycbcr(pixel).flatten()
    torch.testing.assert_close(result, torch.tensor(ycbcr, dtype=torch.float64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-11), (torch.float32, 1e-3)])
def test_ycbcr_round_trip(dtype, atol):
    x = random_rgb(dtype=dtype)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=atol, rtol=0)
    torch.testing.assert_close(rgb_to_ycbcr(x[0]), rgb_to_ycbcr(x)[0])  # (3, H, W) accepted


@pytest.mark.parametrize("u", [1, 8])
@pytest.mark.parametrize("value", [0.0, 37.5, 128.0, 255.0])
def test_constant_grey_image_has_only_luma_dc(u, value):
    x = torch.full((1, 3, 16, 16), value, dtype=torch.float64)
    y = block_dct(x, u)
    assert y.shape == (1, 192, 2 * u, 2 * u)
    torch.testing.assert_close(y[:, 0], torch.full_like(y[:, 0], 8 * (value - 128)), atol=1e-10, rtol=0)
    assert y[:, 1:].abs().max().item() < 1e-10


def test_cosine_pattern_lands_in_its_channel():
    p, q, amplitude = 2, 3, 50.0
    i = torch.arange(8, dtype=torch.float64)
    row = torch.cos(torch.pi * (2 * i + 1) * p / 16)
    col = torch.cos(torch.pi * (2 * i + 1) * q / 16)
    grey = 128 + amplitude * torch.outer(row, col).repeat(2, 3)  # 16 x 24, every block alike
    y = block_dct(grey.expand(1, 3, 16, 24).clone())
    channel = channel_index(0, p, q)
    # D X D^T of a_p a_q-free cosines: amplitude / (a_p a_q) with a = sqrt(2/8) = 0.5.
    torch.testing.assert_close(y[:, channel], torch.full((1, 2, 3), 4 * amplitude, dtype=torch.float64))
    others = torch.cat([y[:, :channel], y[:, channel + 1 :]], dim=1)
    assert others.abs().max().item() < 1e-10


def test_channel_helpers():
    assert channel_index(0, 0, 0) == 0
    assert channel_index(1, 0, 0) == 64
    assert channel_index(2, 7, 7) == 191
    assert channel_index(1, 2, 3) == 64 + 19
    assert all(channel_frequency(channel_index(c, p, q)) == (c, p, q) for c, p, q in [(0, 1, 2), (2, 7, 0)])
    low = low_frequency_channels(2)
    assert len(low) == 18 and low == sorted(low)
    assert low[:6] == [0, 1, 2, 8, 9, 16]
    assert low_frequency_channels(0) == [0, 64, 128]
    assert len(low_frequency_channels(14)) == 192


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: channel_index(3, 0, 0), ValueError, r"plane in \[0, 2\]"),
        (lambda: channel_index(0, 8, 0), ValueError, r"p in \[0, 7\]"),
        (lambda: channel_index(0, 0, 1.0), TypeError, "q to be an int"),
        (lambda: channel_frequency(192), ValueError, r"channel in \[0, 191\]"),
        (lambda: low_frequency_channels(-1), ValueError, "threshold >= 0"),
    ],
)
def test_channel_helper_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("n, u", [(14, 1), (5, 2), (7, 4), (14, 8), (1, 8)])
def test_upsample_matrix_equals_interpolate(n, u):
    signal = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    column = signal.reshape(1, 1, n, 1)
    expected = F.interpolate(column, scale_factor=(u, 1), mode="bilinear", align_corners=False).flatten()
    actual = upsample_matrix(n, u, torch.float64) @ signal
    torch.testing.assert_close(actual, expected, atol=1e-14, rtol=0)


@pytest.mark.parametrize("u", [1, 2, 4, 8])
def test_matches_scipy_on_random_images(u):
    x = random_rgb((2, 3, 16, 24))  # not square: catches swapped axes
    y = block_dct(x, u)
    assert y.shape == (2, 192, 2 * u, 3 * u) and y.dtype == torch.float64
    assert relative_error(y, scipy_block_dct(x, u)) < 1e-14


@pytest.mark.parametrize("u", [1, 8])
def test_matches_scipy_on_real_faces(real_faces, u):
    reference = scipy_block_dct(real_faces, u)
    assert relative_error(block_dct(real_faces, u), reference) < 1e-14
    assert relative_error(block_dct(real_faces.float(), u), reference) < 1e-6


def test_folded_upsample_equals_materialised_upsample(real_faces):
    x = torch.cat([real_faces, random_rgb((2, 3, 112, 112))]).float()
    assert relative_error(block_dct(x, 8), materialised_block_dct(x, 8)) < 1e-6


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
@pytest.mark.parametrize("u", [1, 2, 4, 8])
def test_round_trip_at_input_resolution(dtype, atol, u):
    x = random_rgb((2, 3, 16, 24), dtype=dtype)
    restored = block_idct(block_dct(x, u), u, downsample_to_input=True)
    torch.testing.assert_close(restored, x, atol=atol, rtol=0)


@pytest.mark.parametrize("u", [2, 8])
def test_inverse_at_upsampled_resolution_equals_interpolate(u):
    x = random_rgb((2, 3, 16, 24))
    torch.testing.assert_close(block_idct(block_dct(x, u), u), upsample(x, u), atol=1e-9, rtol=0)


@pytest.mark.parametrize("u", [1, 8])
def test_round_trip_on_real_faces(real_faces, u):
    for dtype, atol in [(torch.float64, 1e-9), (torch.float32, 1e-3)]:
        x = real_faces.to(dtype)
        restored = block_idct(block_dct(x, u), u, downsample_to_input=True)
        torch.testing.assert_close(restored, x, atol=atol, rtol=0)


def test_idct_clamps_on_request():
    y = torch.zeros(1, 192, 2, 2, dtype=torch.float64)
    y[:, 0] = 8 * 400.0  # Y = 528, far above 255
    assert block_idct(y).max().item() > 255
    assert block_idct(y, clamp=True).max().item() == 255.0


# --------------------------------------------------------------------------- autograd


def test_gradients_match_finite_differences():
    x = random_rgb((1, 3, 8, 16)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: block_dct(t, 2), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda t: block_dct(t, 1), (x,), fast_mode=True)


def test_gradient_flows_at_u8():
    x = random_rgb((2, 3, 16, 16), dtype=torch.float32).requires_grad_()
    block_dct(x, 8).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_constants_made_in_inference_mode_serve_autograd():
    dct_module._upsample_pinv64.cache_clear()
    dct_module._upsample_matrix64.cache_clear()
    coefficients = block_dct(random_rgb(dtype=torch.float32), 4)
    with torch.inference_mode():
        block_idct(coefficients, 4, downsample_to_input=True)  # builds the cached pinv
    coefficients.requires_grad_()
    block_idct(coefficients, 4, downsample_to_input=True).sum().backward()
    assert coefficients.grad is not None and torch.isfinite(coefficients.grad).all()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "image, upsample, error, message",
    [
        (torch.zeros(3, 112), 1, ValueError, r"Expected image of shape \(B, 3, H, W\), got \(3, 112\)"),
        (torch.zeros(1, 1, 16, 16), 1, ValueError, r"got \(1, 1, 16, 16\)"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, TypeError, "floating dtype, got torch.uint8"),
        (torch.zeros(1, 3, 12, 16), 1, ValueError, "height times upsample to be divisible by 8, got height 12"),
        (torch.zeros(1, 3, 16, 15), 4, ValueError, "width times upsample to be divisible by 8, got width 15"),
        (torch.zeros(1, 3, 16, 16), 3, ValueError, r"upsample in \(1, 2, 4, 8\), got 3"),
        (torch.zeros(1, 3, 16, 16), 2.0, TypeError, "upsample to be an int"),
        (torch.full((1, 3, 8, 8), 256.0), 1, ValueError, r"RGB values in \[0, 255\].*max 256"),
        (torch.full((1, 3, 8, 8), -1.0), 1, ValueError, r"RGB values in \[0, 255\].*min -1"),
        (torch.full((1, 3, 8, 8), float("nan")), 1, ValueError, r"RGB values in \[0, 255\]"),
        ([[0.0]], 1, TypeError, "image to be a torch.Tensor, got list"),
    ],
)
def test_block_dct_rejects_bad_input(image, upsample, error, message):
    with pytest.raises(error, match=message):
        block_dct(image, upsample)


def test_range_check_can_be_skipped():
    y = block_dct(torch.full((1, 3, 8, 8), 1.0), check_range=False)  # [0, 1] image, accepted
    assert y.shape == (1, 192, 1, 1)
    block_dct(torch.full((1, 3, 8, 8), 255.0005))  # within the 1e-3 tolerance


@pytest.mark.parametrize(
    "coefficients, error, message",
    [
        (torch.zeros(1, 64, 2, 2), ValueError, r"shape \(B, 192, H, W\), got \(1, 64, 2, 2\)"),
        (torch.zeros(1, 192, 2, 2, dtype=torch.long), TypeError, "floating dtype"),
    ],
)
def test_block_idct_rejects_bad_input(coefficients, error, message):
    with pytest.raises(error, match=message):
        block_idct(coefficients)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(real_faces):
    for u in (1, 8):
        x = real_faces.float()
        y_cpu, y_gpu = block_dct(x, u), block_dct(x.cuda(), u)
        assert y_gpu.device.type == "cuda"
        assert relative_error(y_gpu.cpu(), y_cpu) < 1e-5
        restored = block_idct(y_gpu, u, downsample_to_input=True)
        torch.testing.assert_close(restored.cpu(), x, atol=2e-3, rtol=0)
