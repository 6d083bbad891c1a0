import pytest
import torch

from fmix.attacks import PatchDiscriminator, UNetGenerator


@pytest.mark.parametrize(("channels", "side"), [(174, 14), (12, 112), (5, 28)])
def test_unet_maps_protected_channels_to_faces(channels, side):
    torch.manual_seed(0)
    g = UNetGenerator(channels, in_size=side, width=8)
    out = g(torch.randn(2, channels, side, side))
    assert out.shape == (2, 3, 112, 112)
    assert out.min() >= 0 and out.max() <= 255
    out.mean().backward()
    assert all(p.grad is not None for p in g.parameters())


def test_unet_starts_as_its_linear_block_decoding():
    torch.manual_seed(0)
    g = UNetGenerator(6, in_size=14, width=8).eval()
    x = torch.randn(1, 6, 14, 14)
    linear = g.shuffle(g.block_skip(x))[:, :3]
    torch.testing.assert_close(g(x), 127.5 * (1 + linear.tanh()))


def test_unet_default_size_and_levels():
    g = UNetGenerator(174, in_size=14)
    assert len(g.down) == 2 and g.scale == 8
    assert 0.5e6 < sum(p.numel() for p in g.parameters()) < 2e6
    assert len(UNetGenerator(8, in_size=112, width=4).down) == 5


def test_unet_errors():
    with pytest.raises(ValueError, match="power of 2"):
        UNetGenerator(8, in_size=14, out_size=100)
    with pytest.raises(ValueError, match="in_channels >= 1"):
        UNetGenerator(0)
    g = UNetGenerator(8, in_size=14, width=4)
    with pytest.raises(ValueError, match=r"x of shape \(B, 8, 14, 14\)"):
        g(torch.randn(1, 8, 28, 28))
    with pytest.raises(TypeError, match="floating dtype"):
        g(torch.zeros(1, 8, 14, 14, dtype=torch.long))


def test_patchgan_scores_patches():
    torch.manual_seed(0)
    d = PatchDiscriminator(174, width=8)
    image = torch.rand(2, 3, 112, 112) * 255
    logits = d(torch.randn(2, 174, 14, 14), image)
    assert logits.shape == (2, 1, 12, 12)  # 70x70 patches of a 112x112 face, pix2pix geometry
    assert PatchDiscriminator(12, width=8, layers=2)(torch.randn(2, 12, 112, 112), image).shape == (2, 1, 26, 26)
    logits.mean().backward()
    assert d.project.weight.grad is not None  # the condition is used


def test_patchgan_errors():
    d = PatchDiscriminator(8, width=4)
    with pytest.raises(ValueError, match=r"cond of shape \(B, 8, h, w\)"):
        d(torch.randn(2, 9, 14, 14), torch.rand(2, 3, 112, 112))
    with pytest.raises(ValueError, match=r"image of shape \(2, 3, H, W\)"):
        d(torch.randn(2, 8, 14, 14), torch.rand(3, 3, 112, 112))
