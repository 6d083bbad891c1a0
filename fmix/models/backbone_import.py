"""Pretrained backbones: an insightface ``arcface_torch`` ``backbone.pth`` into fmix's :class:`IResNet`.

``arcface_torch`` (``recognition/arcface_torch/backbones/iresnet.py``) saves its IResNets as a plain
state dict (``torch.save(backbone.module.state_dict(), "backbone.pth")``). Its names:

- stem: ``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
  ``prelu.weight``;
- stages ``layer1`` to ``layer4``, block ``i``: ``layerS.i.bn1``, ``.conv1``, ``.bn2``, ``.prelu``,
  ``.conv2``, ``.bn3`` and, in the first block of a stage, the shortcut ``layerS.0.downsample.0``
  (conv1x1) and ``layerS.0.downsample.1`` (batch norm);
- head: ``bn2`` (BatchNorm2d), ``dropout`` (no weights), ``fc`` (Linear 512 * 7 * 7 -> E),
  ``features`` (BatchNorm1d, weight frozen at 1).

fmix's :class:`~fmix.models.iresnet.IResNet` (``norm="batch"``, width 1, stride plan ``rgb112``,
3 x 112 x 112 input) has the same modules under the same names, so the map of
:data:`ARCFACE_TO_FMIX` is one-to-one; it is checked key by key, with shapes, so another
architecture (depth, width, embedding size, input) is refused with the first key that is
missing or mis-shaped. A ``module.`` prefix (a DDP-wrapped save) is dropped; a training
checkpoint of arcface_torch (``checkpoint_gpu_0.pt``) is read through its ``state_dict_backbone``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from fmix.models.iresnet import IResNet, build_backbone

# arcface_torch's depths (blocks per stage) by name; IResNet-200 is left out (fmix never builds it).
ARCFACE_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
# arcface_torch module name -> fmix module name (parameters and buffers keep their own suffix):
# the stem and the head, and the modules inside block ``layerS.i``.
ARCFACE_TO_FMIX = {"conv1": "conv1", "bn1": "bn1", "prelu": "prelu", "bn2": "bn2", "fc": "fc", "features": "features"}
ARCFACE_BLOCK_TO_FMIX = {
    "bn1": "bn1",
    "conv1": "conv1",
    "bn2": "bn2",
    "prelu": "prelu",
    "conv2": "conv2",
    "bn3": "bn3",
    "downsample.0": "downsample.0",  # the shortcut's conv1x1
    "downsample.1": "downsample.1",  # the shortcut's batch norm
}
_TOP = re.compile(r"(conv1|bn1|prelu|bn2|fc|features)\.(\w+)")
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(bn1|conv1|bn2|prelu|conv2|bn3|downsample\.[01])\.(\w+)")
BACKBONE_KEYS = ("state_dict_backbone",)  # where an arcface_torch training checkpoint keeps the backbone


@dataclasses.dataclass(frozen=True)
class ArcfaceArchitecture:
    """What an arcface_torch state dict holds, read from its keys and shapes.

    Attributes:
        name: the depth's name (:data:`ARCFACE_DEPTHS`), or ``"custom"`` for another block plan.
        layers: blocks per stage.
        in_channels: input channels of the stem.
        stem_width: output channels of the stem (64 for arcface_torch).
        embedding_size: output size of ``fc``.
        fc_in_features: input size of ``fc`` (512 * 7 * 7 for 112 x 112 faces).
    """

    name: str
    layers: tuple[int, int, int, int]
    in_channels: int
    stem_width: int
    embedding_size: int
    fc_in_features: int

    def describe(self) -> str:
        """One line, e.g. ``iresnet50 (3, 4, 14, 3), 3 input channels, stem 64, 512-d embedding``."""
        return f"{self.name} {self.layers}, {self.in_channels} input channels, stem width {self.stem_width}, {self.embedding_size}-d embedding"


def arcface_to_fmix_key(key: str) -> str:
    """The fmix name of one arcface_torch state-dict key.

    Args:
        key: e.g. ``"layer3.0.downsample.1.running_mean"``.

    Returns:
        The key of fmix's :class:`IResNet` state dict.

    Raises:
        ValueError: a key arcface_torch's IResNet does not have.

    Example:
        >>> arcface_to_fmix_key("layer2.0.downsample.0.weight")
        'layer2.0.downsample.0.weight'
    """
    top = _TOP.fullmatch(key)
    if top:
        return f"{ARCFACE_TO_FMIX[top.group(1)]}.{top.group(2)}"
    block = _BLOCK.fullmatch(key)
    if block:
        stage, index, module, field = block.groups()
        return f"layer{stage}.{index}.{ARCFACE_BLOCK_TO_FMIX[module]}.{field}"
    raise ValueError(
        f"unexpected key {key!r}: not a key of arcface_torch's IResNet (conv1, bn1, prelu, layer1-4, bn2, fc, features)"
    )


def fmix_to_arcface_key(key: str) -> str:
    """The arcface_torch name of one key of fmix's :class:`IResNet` (the inverse of :func:`arcface_to_fmix_key`)."""
    top = _TOP.fullmatch(key)
    if top:
        return f"{_inverse(ARCFACE_TO_FMIX)[top.group(1)]}.{top.group(2)}"
    block = _BLOCK.fullmatch(key)
    if block:
        stage, index, module, field = block.groups()
        return f"layer{stage}.{index}.{_inverse(ARCFACE_BLOCK_TO_FMIX)[module]}.{field}"
    raise ValueError(f"unexpected key {key!r}: not a key of fmix's IResNet with batch norm")


def _inverse(names: dict[str, str]) -> dict[str, str]:
    return {fmix: arc for arc, fmix in names.items()}


def unwrap_state_dict(state: object, source: str = "state dict") -> dict[str, Tensor]:
    """The backbone's tensors of a loaded ``backbone.pth`` (or arcface_torch training checkpoint).

    Args:
        state: what :func:`torch.load` returned.
        source: where it came from, for messages.

    Returns:
        Name -> tensor, with a ``module.`` prefix on every key dropped.

    Raises:
        ValueError: not a mapping of names to tensors.
    """
    if isinstance(state, Mapping):
        for key in BACKBONE_KEYS:
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise ValueError(
            f"{source} is not a non-empty state dict of an arcface_torch backbone, got {type(state).__name__}"
        )
    bad = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, Tensor)]
    if bad:
        raise ValueError(f"{source} holds {bad[0]!r}, which is not a named tensor: not a backbone.pth")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def arcface_architecture(state: Mapping[str, Tensor]) -> ArcfaceArchitecture:
    """Read the architecture of an arcface_torch IResNet state dict from its keys and shapes.

    Args:
        state: arcface_torch's names -> tensors (:func:`unwrap_state_dict`).

    Returns:
        The architecture.

    Raises:
        ValueError: a stem or head tensor is missing or has an unexpected rank, or a stage has no block.
    """
    for key, dims in (("conv1.weight", 4), ("fc.weight", 2)):
        if key not in state:
            raise ValueError(f"missing key {key!r}: not an arcface_torch IResNet state dict")
        if state[key].dim() != dims:
            raise ValueError(f"key {key!r} has shape {tuple(state[key].shape)}, expected a {dims}-d tensor")
    blocks = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK.fullmatch(key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage - 1] = max(blocks[stage - 1], index + 1)
    if 0 in blocks:
        raise ValueError(
            f"missing key 'layer{blocks.index(0) + 1}.0.bn1.weight': stage {blocks.index(0) + 1} has no block"
        )
    layers = tuple(blocks)
    name = next((n for n, depth in ARCFACE_DEPTHS.items() if depth == layers), "custom")
    out_channels, in_channels = state["conv1.weight"].shape[:2]
    embedding, fc_in = state["fc.weight"].shape
    return ArcfaceArchitecture(name, layers, int(in_channels), int(out_channels), int(embedding), int(fc_in))  # type: ignore[arg-type]


def load_arcface_state_dict(net: IResNet, state: Mapping[str, Tensor], source: str = "state dict") -> IResNet:
    """Copy an arcface_torch IResNet state dict into fmix's :class:`IResNet`, key by key.

    Every key of ``net`` must come from ``state`` with the same shape, and ``state`` may hold no
    other key (a deeper network would otherwise load half-way).

    Args:
        net: fmix's network, built for the same architecture (batch norm, width 1 for a real
            arcface_torch model, its embedding size, 3 x 112 x 112 input).
        state: arcface_torch's names -> tensors (a ``module.`` prefix is dropped).
        source: where ``state`` came from, for messages.

    Returns:
        ``net``, with the weights loaded (its mode, device and memory format kept).

    Raises:
        TypeError: ``net`` is not an :class:`IResNet`.
        ValueError: naming the first key (in ``net``'s order) that ``state`` lacks or holds in
            another shape, or the first key of ``state`` that ``net`` does not have; the message
            also describes the architecture ``state`` holds.
    """
    if not isinstance(net, IResNet):
        raise TypeError(f"Expected net to be an fmix IResNet, got {type(net).__name__}")
    state = unwrap_state_dict(state, source)
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        mapped[arcface_to_fmix_key(key)] = value  # unknown names fail here, by name
    try:
        held = arcface_architecture(state).describe()
    except ValueError as err:
        held = f"not a complete IResNet ({err})"
    ours = net.state_dict()
    for key, tensor in ours.items():
        if key not in mapped:
            raise ValueError(
                f"{source} does not fit the network: missing key {fmix_to_arcface_key(key)!r} (it holds {held})"
            )
        if tuple(mapped[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source} does not fit the network: key {fmix_to_arcface_key(key)!r} has shape {tuple(mapped[key].shape)}, "
                f"the network's is {tuple(tensor.shape)} (it holds {held})"
            )
    extra = [key for key in state if arcface_to_fmix_key(key) not in ours]
    if extra:
        raise ValueError(f"{source} does not fit the network: unexpected key {extra[0]!r} (it holds {held})")
    with torch.no_grad():
        for key, tensor in ours.items():
            tensor.copy_(mapped[key].to(dtype=tensor.dtype))
    return net


def read_backbone_file(path: str | Path) -> dict[str, Tensor]:
    """Read an arcface_torch ``backbone.pth`` (tensors only: ``weights_only=True``) onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable state dict of named tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path} is not a readable backbone.pth: {err}") from err
    return unwrap_state_dict(state, str(path))


def load_arcface_backbone(path: str | Path, net: IResNet) -> IResNet:
    """Load an arcface_torch ``backbone.pth`` into ``net`` (:func:`load_arcface_state_dict`).

    Args:
        path: the file.
        net: fmix's network of the same architecture.

    Returns:
        ``net`` with the pretrained weights.
    """
    return load_arcface_state_dict(net, read_backbone_file(path), str(path))


def backbone_from_arcface(path: str | Path, sign_invariant: bool = False) -> IResNet:
    """A new fmix :class:`IResNet` built for the architecture a ``backbone.pth`` holds, with its weights.

    Args:
        path: an arcface_torch ``backbone.pth`` of IResNet-18, 34, 50 or 100.
        sign_invariant: see :class:`IResNet`.

    Returns:
        The network in eval mode.

    Raises:
        ValueError: another block plan, input or stem width than arcface_torch's 112 x 112 RGB IResNets.
    """
    state = read_backbone_file(path)
    arch = arcface_architecture(state)
    if arch.name == "custom" or arch.in_channels != 3 or arch.stem_width != 64:
        raise ValueError(f"{path} holds {arch.describe()}: not an arcface_torch IResNet-18/34/50/100 of RGB faces")
    net = build_backbone(arch.name, 3, 112, arch.embedding_size, 1.0, "rgb112", "batch", sign_invariant=sign_invariant)
    return load_arcface_state_dict(net, state, str(path)).eval()


def to_arcface_state_dict(net: IResNet) -> dict[str, Tensor]:
    """fmix's network as arcface_torch names it (what ``backbone.pth`` would hold), tensors detached on the CPU."""
    return {fmix_to_arcface_key(key): value.detach().cpu().contiguous() for key, value in net.state_dict().items()}


__all__ = [
    "ARCFACE_DEPTHS",
    "ARCFACE_BLOCK_TO_FMIX",
    "ARCFACE_TO_FMIX",
    "ArcfaceArchitecture",
    "arcface_architecture",
    "arcface_to_fmix_key",
    "backbone_from_arcface",
    "fmix_to_arcface_key",
    "load_arcface_backbone",
    "load_arcface_state_dict",
    "read_backbone_file",
    "to_arcface_state_dict",
    "unwrap_state_dict",
]
