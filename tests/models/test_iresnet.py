import pytest
import torch
from torch import nn

from fmix.models import (
    DEFAULT_PRESETS,
    DEPTHS,
    STRIDE_PRESETS,
    IResNet,
    build_backbone,
    downsampled_side,
    resolve_strides,
    stage_widths,
)

TINY = 0.125  # stage widths (8, 16, 32, 64): fast on CPU


def test_downsampled_side_reference_values():
    assert [downsampled_side(n, 2) for n in (112, 56, 28, 14, 7, 4, 2, 1)] == [56, 28, 14, 7, 4, 2, 1, 1]
    assert downsampled_side(14, 1) == 14


def test_stage_widths_reference_values():
    assert stage_widths(1.0) == (64, 128, 256, 512)
    assert stage_widths(TINY) == (8, 16, 32, 64)
    assert stage_widths(0.05) == (8, 8, 13, 26)  # 3.2 and 6.4 are raised to the minimum 8


@pytest.mark.parametrize(
    "preset, in_channels, input_size, side",
    [
        ("rgb112", 3, 112, 7),
        ("freq112", 192, 112, 7),
        ("freq56", 192, 56, 4),
        ("freq28", 192, 28, 4),
        ("freq14", 192, 14, 4),
        ("freq14_fast", 36, 14, 2),
    ],
)
def test_presets_output_shape_and_fc_size(preset, in_channels, input_size, side):
    net = build_backbone("iresnet18", in_channels, input_size, embedding_size=16, width=TINY, strides=preset).eval()
    assert net.feature_map_size == side
    assert net.fc.in_features == net.fc_in_features == 64 * side * side
    out = net(torch.randn(2, in_channels, input_size, input_size))
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_default_presets_follow_input_size():
    assert DEFAULT_PRESETS == {112: "rgb112", 56: "freq56", 28: "freq28", 14: "freq14"}
    for size, preset in DEFAULT_PRESETS.items():
        assert resolve_strides(None, size) == STRIDE_PRESETS[preset]
    assert build_backbone("iresnet18", 192, 14, width=TINY).strides == (1, 1, 2, 2)


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_depths_build_the_right_blocks(name):
    net = build_backbone(name, 192, 14, embedding_size=8, width=TINY).eval()
    assert tuple(len(stage) for stage in (net.layer1, net.layer2, net.layer3, net.layer4)) == DEPTHS[name]
    assert net(torch.randn(2, 192, 14, 14)).shape == (2, 8)


def test_default_embedding_size_is_512():
    net = build_backbone("iresnet18", 192, 14, width=TINY).eval()
    assert net(torch.randn(2, 192, 14, 14)).shape == (2, 512)


def test_explicit_stride_tuple():
    net = IResNet((1, 1, 1, 1), in_channels=4, input_size=14, embedding_size=8, width=TINY, strides=(1, 1, 1, 2)).eval()
    assert net.strides == (1, 1, 1, 2) and net.feature_map_size == 7 and net.fc.in_features == 64 * 49
    assert net(torch.randn(3, 4, 14, 14)).shape == (3, 8)


def test_shortcut_only_where_the_shape_changes():
    net = build_backbone("iresnet18", 192, 14, width=TINY, strides=(1, 1, 2, 2))
    # Stage 1 keeps 8 channels at stride 1 after the stem: identity shortcut; every other stage widens.
    assert net.layer1[0].downsample is None
    assert all(stage[0].downsample is not None for stage in (net.layer2, net.layer3, net.layer4))
    assert all(
        block.downsample is None for stage in (net.layer1, net.layer2, net.layer3, net.layer4) for block in stage[1:]
    )


def test_group_norm_uses_no_batch_statistics():
    net = build_backbone("iresnet18", 192, 14, embedding_size=8, width=TINY, norm="group").train()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in net.modules())
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {8: 8, 16: 16, 32: 32, 64: 32}
    x = torch.randn(3, 192, 14, 14)
    # Per-sample normalisation: in training mode a sample's embedding ignores the rest of the batch.
    torch.testing.assert_close(net(x)[:1], net(x[:1]))


def test_batch_norm_embedding_scale_is_frozen():
    net = build_backbone("iresnet18", 3, 112, width=TINY)
    assert isinstance(net.features, nn.BatchNorm1d) and not net.features.weight.requires_grad
    assert torch.equal(net.features.weight, torch.ones(512))


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_gradient_reaches_every_trainable_parameter(norm):
    net = build_backbone("iresnet18", 192, 14, embedding_size=8, width=TINY, norm=norm, dropout=0.1).train()
    x = torch.randn(4, 192, 14, 14, requires_grad=True)
    net(x).square().sum().backward()
    for name, param in net.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert net.conv1.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_bad_arguments_raise_with_messages():
    with pytest.raises(
        ValueError,
        match=r"Unknown backbone 'resnet18'; expected one of \['iresnet100', 'iresnet18', 'iresnet34', 'iresnet50'\]",
    ):
        build_backbone("resnet18", 3, 112)
    with pytest.raises(ValueError, match="Unknown stride preset 'freq7'"):
        build_backbone("iresnet18", 3, 112, strides="freq7")
    with pytest.raises(
        ValueError, match=r"Expected strides to be four values in \{1, 2\} \(one per stage\), got \(1, 3, 2, 2\)"
    ):
        build_backbone("iresnet18", 3, 112, strides=(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"four values .* got \(2, 2, 2\)"):
        build_backbone("iresnet18", 3, 112, strides=(2, 2, 2))
    with pytest.raises(TypeError, match="Expected strides to be a preset name"):
        build_backbone("iresnet18", 3, 112, strides=2)
    with pytest.raises(ValueError, match=r"No default stride plan for input_size=20"):
        build_backbone("iresnet18", 3, 20)
    with pytest.raises(ValueError, match=r"Expected norm in \('batch', 'group'\), got 'layer'"):
        build_backbone("iresnet18", 3, 112, norm="layer")
    with pytest.raises(ValueError, match="Expected width > 0, got 0"):
        build_backbone("iresnet18", 3, 112, width=0)
    with pytest.raises(ValueError, match="Expected in_channels >= 1, got 0"):
        build_backbone("iresnet18", 0, 112)
    with pytest.raises(ValueError, match=r"Expected dropout in \[0, 1\), got 1.0"):
        build_backbone("iresnet18", 3, 112, dropout=1.0)


def test_wrong_input_raises_with_message():
    net = build_backbone("iresnet18", 192, 14, width=TINY).eval()
    with pytest.raises(ValueError, match=r"Expected input of shape \(B, 192, 14, 14\), got \(2, 192, 28, 28\)"):
        net(torch.randn(2, 192, 28, 28))
    with pytest.raises(ValueError, match=r"Expected input of shape \(B, 192, 14, 14\), got \(192, 14, 14\)"):
        net(torch.randn(192, 14, 14))
    with pytest.raises(TypeError, match="Expected input with a floating dtype, got torch.uint8"):
        net(torch.zeros(2, 192, 14, 14, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Expected input to be a torch.Tensor, got ndarray"):
        net(torch.zeros(2, 192, 14, 14).numpy())


def test_channels_last_from_16_channels_with_the_same_output():
    torch.manual_seed(0)
    net = IResNet(
        (1, 1, 1, 1), in_channels=3, input_size=112, embedding_size=32, width=0.25
    ).eval()  # 16 channels first
    assert net.channels_last and net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 112, 112) * 255
    nhwc = net(x)
    net.channels_last = False
    net.to(memory_format=torch.contiguous_format)
    assert torch.allclose(nhwc, net(x), rtol=1e-4, atol=1e-5 * nhwc.abs().max().item())  # same sums, other order
    narrow = IResNet((1, 1, 1, 1), in_channels=3, input_size=112, width=0.125)  # 8 channels: NCHW (NHWC crashes there)
    assert not narrow.channels_last


def test_a_sign_invariant_network_reads_magnitudes():
    x = torch.randn(4, 8, 14, 14, generator=torch.Generator().manual_seed(0))
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)) * 2.0 - 1.0
    torch.manual_seed(0)
    invariant = build_backbone("iresnet18", 8, 14, 16, width=0.125, sign_invariant=True).eval()
    torch.manual_seed(0)
    plain = build_backbone("iresnet18", 8, 14, 16, width=0.125).eval()
    with torch.no_grad():
        torch.testing.assert_close(invariant(x * signs), invariant(x))
        torch.testing.assert_close(invariant(x), plain(x.abs()))  # the same weights: |x| is the only change
        assert not torch.allclose(plain(x * signs), plain(x))
    assert set(invariant.state_dict()) == set(plain.state_dict())  # no parameter: model.pt files keep their keys
