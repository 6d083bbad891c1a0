import math

import pytest
import torch

from fmix.metrics import best_constituent_ssim, free_floor, mix_floor, psnr, ssim, ssim_separable


@pytest.fixture
def faces() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 14, 14, generator=g), size=112, mode="bilinear")
    return (smooth * 200 + 20).contiguous()


def test_identical_images(faces):
    torch.testing.assert_close(ssim(faces, faces), torch.ones(4))
    assert torch.isinf(psnr(faces, faces)).all()


@pytest.mark.parametrize("offset", [1.0, 5.0, -17.0])
def test_psnr_of_a_constant_offset(faces, offset):
    expected = 20 * math.log10(255 / abs(offset))
    torch.testing.assert_close(psnr(faces + offset, faces), torch.full((4,), expected), atol=1e-3, rtol=0)


def test_ssim_is_per_image_and_drops_with_noise(faces):
    noise = (
        torch.randn(faces.shape, generator=torch.Generator().manual_seed(1))
        * torch.tensor([5.0, 20.0, 40.0, 80.0])[:, None, None, None]
    )
    noisy = (faces + noise).clamp(0, 255)
    scores = ssim(noisy, faces)
    assert scores.shape == (4,) and (scores[:-1] > scores[1:]).all() and scores[0] < 1
    torch.testing.assert_close(ssim(noisy[2:3], faces[2:3]), scores[2:3])


def test_separable_ssim_equals_torchmetrics(faces):
    noisy = (faces + torch.randn(faces.shape, generator=torch.Generator().manual_seed(2)) * 30).clamp(0, 255)
    torch.testing.assert_close(ssim_separable(noisy, faces), ssim(noisy, faces), atol=1e-5, rtol=0)
    x = noisy.clone().requires_grad_(True)
    (1 - ssim_separable(x, faces).mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_input_checks(faces):
    with pytest.raises(ValueError, match=r"in \[0, 255\]"):
        ssim(faces / 255 - 1, faces)
    with pytest.raises(ValueError, match="of one shape"):
        psnr(faces, faces[:2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ssim(faces[:, :1], faces[:, :1])
    with pytest.raises(TypeError, match="floating dtype"):
        ssim(faces.to(torch.uint8), faces)
    with pytest.raises(TypeError, match="torch.Tensor"):
        psnr(faces.numpy(), faces)


def test_best_constituent_picks_the_matching_face(faces):
    # Sample b is made of faces (b+1, b, b+2) (mod 4); the reconstruction is face b itself.
    order = torch.tensor([[(b + 1) % 4, b, (b + 2) % 4] for b in range(4)])
    constituents = faces[order]
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, False, False]])
    best, index = best_constituent_ssim(faces, constituents, valid)
    torch.testing.assert_close(best[:3], torch.ones(3))
    assert index.tolist()[:3] == [1, 1, 1]
    assert index[3] == 0 and best[3] < 1  # face 3 itself is not a valid constituent of row 3
    torch.testing.assert_close(best[3], ssim(faces[3:], faces[:1])[0])


def test_best_constituent_checks(faces):
    constituents = faces[:, None].expand(-1, 2, -1, -1, -1)
    with pytest.raises(ValueError, match="at least one valid"):
        best_constituent_ssim(faces, constituents, torch.tensor([[True, False]] * 3 + [[False, False]]))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        best_constituent_ssim(faces, constituents, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, k_max, 3, H, W\)"):
        best_constituent_ssim(faces, faces, torch.ones(4, 1, dtype=torch.bool))


def test_floors(faces):
    torch.testing.assert_close(free_floor(faces[0], faces[:1]), torch.ones(1))
    mean_face = faces.mean(dim=0)
    floor = free_floor(mean_face, faces)
    assert floor.shape == (4,) and (floor < 1).all()
    constituents = torch.stack([faces, faces.roll(1, dims=0)], dim=1)
    both = mix_floor(mean_face, constituents, torch.ones(4, 2, dtype=torch.bool))
    torch.testing.assert_close(both, torch.maximum(floor, floor.roll(1)))
    only_first = mix_floor(mean_face, constituents, torch.tensor([[True, False]] * 4))
    torch.testing.assert_close(only_first, floor)
    with pytest.raises(ValueError, match=r"mean_face of shape \(3, H, W\)"):
        free_floor(faces, faces)
