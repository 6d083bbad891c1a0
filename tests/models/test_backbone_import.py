"""fmix.models.backbone_import: arcface_torch ``backbone.pth`` state dicts into fmix's IResNet.

The state dicts are built here in arcface_torch's key layout (names and shapes of
recognition/arcface_torch/backbones/iresnet.py; nothing is downloaded), at the real widths for
shape-only checks (meta tensors) and at 1/8 width for the numerical round trip, where the
reference is a functional forward of arcface_torch's computation written from the dict itself.
"""

import pytest
import torch
import torch.nn.functional as F

from fmix.models.backbone_import import (
    arcface_architecture,
    arcface_to_fmix_key,
    backbone_from_arcface,
    fmix_to_arcface_key,
    load_arcface_backbone,
    load_arcface_state_dict,
    read_backbone_file,
    to_arcface_state_dict,
)
from fmix.models.iresnet import build_backbone

R18, R34, R50, R100 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 14, 3), (3, 13, 30, 3)
FULL = (64, 128, 256, 512)
TINY = (8, 16, 32, 64)  # fmix width 0.125


def arcface_layout(layers, widths=FULL, embedding=512, device="cpu", seed=0) -> dict[str, torch.Tensor]:
    """A state dict with arcface_torch's keys, in its order and shapes (random values; meta: shapes only)."""
    g = torch.Generator().manual_seed(seed)
    real = device != "meta"

    def tensor(*shape, positive=False):
        if not real:
            return torch.empty(shape, device="meta")
        values = torch.randn(shape, generator=g) * 0.1
        return values.abs() + 0.5 if positive else values

    def bn(prefix, channels):
        return {
            f"{prefix}.weight": tensor(channels, positive=True),
            f"{prefix}.bias": tensor(channels),
            f"{prefix}.running_mean": tensor(channels),
            f"{prefix}.running_var": tensor(channels, positive=True),
            f"{prefix}.num_batches_tracked": torch.tensor(7)
            if real
            else torch.empty((), dtype=torch.long, device="meta"),
        }

    state = {"conv1.weight": tensor(widths[0], 3, 3, 3), **bn("bn1", widths[0]), "prelu.weight": tensor(widths[0])}
    inplanes = widths[0]
    for stage, (blocks, planes) in enumerate(zip(layers, widths), start=1):
        for i in range(blocks):
            cin, p = (inplanes if i == 0 else planes), f"layer{stage}.{i}"
            state.update(bn(f"{p}.bn1", cin))
            state[f"{p}.conv1.weight"] = tensor(planes, cin, 3, 3)
            state.update(bn(f"{p}.bn2", planes))
            state[f"{p}.prelu.weight"] = tensor(planes)
            state[f"{p}.conv2.weight"] = tensor(planes, planes, 3, 3)
            state.update(bn(f"{p}.bn3", planes))
            if i == 0:  # every arcface_torch stage starts with stride 2: a conv1x1 + BN shortcut
                state[f"{p}.downsample.0.weight"] = tensor(planes, cin, 1, 1)
                state.update(bn(f"{p}.downsample.1", planes))
        inplanes = planes
    state.update(bn("bn2", widths[-1]))
    state["fc.weight"], state["fc.bias"] = tensor(embedding, widths[-1] * 7 * 7), tensor(embedding)
    state.update(bn("features", embedding))
    return state


def arcface_forward(state: dict, x: torch.Tensor, layers) -> torch.Tensor:
    """arcface_torch's IResNet forward (eval mode), computed from the state dict alone."""

    def bn(t, prefix):
        return F.batch_norm(
            t,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.prelu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"), state["prelu.weight"])
    for stage, blocks in enumerate(layers, start=1):
        for i in range(blocks):
            p, stride = f"layer{stage}.{i}", 2 if i == 0 else 1
            out = F.conv2d(bn(x, f"{p}.bn1"), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), state[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            shortcut = (
                bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1") if i == 0 else x
            )
            x = out + shortcut
    x = bn(x, "bn2").flatten(1)  # dropout: identity in eval mode
    return bn(F.linear(x, state["fc.weight"], state["fc.bias"]), "features")


def tiny_net(name="iresnet18", embedding=32, **kwargs):
    return build_backbone(name, 3, 112, embedding_size=embedding, width=0.125, strides="rgb112", **kwargs)


def test_keys_map_one_to_one_reference_values():
    assert arcface_to_fmix_key("conv1.weight") == "conv1.weight"
    assert arcface_to_fmix_key("layer3.13.prelu.weight") == "layer3.13.prelu.weight"
    assert arcface_to_fmix_key("layer2.0.downsample.1.running_var") == "layer2.0.downsample.1.running_var"
    assert arcface_to_fmix_key("features.num_batches_tracked") == "features.num_batches_tracked"
    assert fmix_to_arcface_key("layer4.0.downsample.0.weight") == "layer4.0.downsample.0.weight"
    net = tiny_net()
    assert sorted(to_arcface_state_dict(net)) == sorted(
        arcface_layout(R18, TINY, 32, device="meta")
    )  # the same key set
    with pytest.raises(ValueError, match=r"unexpected key 'head.weight': not a key of arcface_torch's IResNet"):
        arcface_to_fmix_key("head.weight")
    with pytest.raises(ValueError, match=r"unexpected key 'layer5.0.bn1.weight'"):
        arcface_to_fmix_key("layer5.0.bn1.weight")


def test_round_trip_gives_arcface_torchs_outputs():
    state = arcface_layout(R18, TINY, 32, seed=3)
    net = load_arcface_state_dict(tiny_net(), state).eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1  # arcface_torch's inputs: (x - 127.5) / 127.5
    with torch.no_grad():
        ours, reference = net(x), arcface_forward(state, x, R18)
    assert ours.shape == (2, 32) and reference.abs().mean() > 0.1
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    back = to_arcface_state_dict(net)  # and back into arcface_torch's names, value for value
    assert list(back) == list(state)
    for key, value in state.items():
        assert torch.equal(back[key], value.to(back[key].dtype)), key


def test_a_saved_file_loads_with_ddp_prefix_or_inside_a_training_checkpoint(tmp_path):
    state = arcface_layout(R18, TINY, 32, seed=1)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "backbone.pth")
    torch.save({"epoch": 3, "state_dict_backbone": state}, tmp_path / "checkpoint_gpu_0.pt")
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected = arcface_forward(state, x, R18)
        for name in ("backbone.pth", "checkpoint_gpu_0.pt"):
            net = load_arcface_backbone(tmp_path / name, tiny_net()).eval()
            torch.testing.assert_close(net(x), expected, atol=1e-4, rtol=1e-4)
    assert list(read_backbone_file(tmp_path / "backbone.pth")) == list(state)


def test_architecture_is_read_from_real_sized_layouts():
    for layers, name in ((R18, "iresnet18"), (R34, "iresnet34"), (R50, "iresnet50"), (R100, "iresnet100")):
        arch = arcface_architecture(arcface_layout(layers, device="meta"))
        assert (
            arch.name,
            arch.layers,
            arch.in_channels,
            arch.stem_width,
            arch.embedding_size,
            arch.fc_in_features,
        ) == (name, layers, 3, 64, 512, 25088)
    assert (
        arcface_architecture(arcface_layout((1, 1, 1, 1), device="meta")).describe()
        == "custom (1, 1, 1, 1), 3 input channels, stem width 64, 512-d embedding"
    )
    with pytest.raises(ValueError, match=r"missing key 'fc.weight': not an arcface_torch IResNet state dict"):
        arcface_architecture({k: v for k, v in arcface_layout(R18, device="meta").items() if not k.startswith("fc.")})


def test_a_mismatched_architecture_is_refused_naming_the_first_key():
    r18 = arcface_layout(R18, TINY, 32)
    with pytest.raises(
        ValueError,
        match=r"does not fit the network: missing key 'layer1\.2\.bn1\.weight' \(it holds iresnet18 \(2, 2, 2, 2\)",
    ):
        load_arcface_state_dict(tiny_net("iresnet34"), r18)  # deeper network than the file
    with pytest.raises(
        ValueError, match=r"unexpected key 'layer1\.2\.bn1\.weight' \(it holds iresnet34 \(3, 4, 6, 3\)"
    ):
        load_arcface_state_dict(tiny_net("iresnet18"), arcface_layout(R34, TINY, 32))  # shallower
    with pytest.raises(ValueError, match=r"key 'fc\.weight' has shape \(32, 3136\), the network's is \(16, 3136\)"):
        load_arcface_state_dict(tiny_net(embedding=16), r18)
    with pytest.raises(
        ValueError,
        match=r"key 'conv1\.weight' has shape \(64, 3, 3, 3\), the network's is \(8, 3, 3, 3\) \(it holds iresnet50 \(3, 4, 14, 3\), 3 input channels, stem width 64, 512-d embedding\)",
    ):
        load_arcface_state_dict(
            tiny_net(embedding=512), arcface_layout(R50, device="meta")
        )  # full width into 1/8 width
    with pytest.raises(ValueError, match=r"unexpected key 'bn1\.running_mean'"):
        load_arcface_state_dict(tiny_net(norm="group"), r18)  # group norm has no running statistics
    with pytest.raises(TypeError, match="Expected net to be an fmix IResNet, got Linear"):
        load_arcface_state_dict(torch.nn.Linear(2, 2), r18)
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError):
        load_arcface_state_dict(net, {**r18, "fc.bias": torch.zeros(5)})
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone file not found"):
        read_backbone_file(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth is not a readable backbone\.pth"):
        read_backbone_file(tmp_path / "garbage.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(
        ValueError, match=r"list\.pth is not a non-empty state dict of an arcface_torch backbone, got list"
    ):
        read_backbone_file(tmp_path / "list.pth")
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match=r"holds 'epoch', which is not a named tensor"):
        read_backbone_file(tmp_path / "mixed.pth")
    torch.save(arcface_layout(R18, TINY, 32), tmp_path / "tiny.pth")
    with pytest.raises(
        ValueError,
        match=r"holds iresnet18 \(2, 2, 2, 2\), 3 input channels, stem width 8, 32-d embedding: not an arcface_torch IResNet-18/34/50/100 of RGB faces",
    ):
        backbone_from_arcface(tmp_path / "tiny.pth")


def test_train_init_backbone_starts_an_rgb_method_and_refuses_other_inputs(make_trainer, tmp_path):
    state = arcface_layout(R18, TINY, 32, seed=2)
    torch.save(state, tmp_path / "backbone.pth")
    trainer = make_trainer("none", init_backbone=str(tmp_path / "backbone.pth"))
    loaded = to_arcface_state_dict(trainer.net.backbone)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(
        ValueError,
        match=r"train\.init_backbone needs a method whose network reads RGB faces of 3x112x112; method 'ppfrfd' feeds it \d+x28x28 FrequencyEncoder inputs, so its input does not allow a pretrained RGB backbone",
    ):
        make_trainer("ppfrfd", init_backbone=str(tmp_path / "backbone.pth"))
    with pytest.raises(
        ValueError,
        match=r"backbone\.pth does not fit the network: key 'fc\.weight' has shape \(32, 3136\), the network's is \(16, 3136\)",
    ):
        make_trainer("none", init_backbone=str(tmp_path / "backbone.pth"), embedding_size=16)
