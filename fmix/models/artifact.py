"""The trained-model artifact ``model.pt``: one typed record, one writer, one reader.

``fmix train`` writes it; ``fmix evaluate``, ``fmix export --policy``, the attacks and the
pipeline read it, all through :class:`ModelRecord` and :func:`load_trained_model`. The file holds
tensors and plain containers only (loaded with ``weights_only=True``):

- ``params``: the ``train`` section it was trained with (a plain dict);
- ``encoder``: the input encoder's spec (:func:`fmix.models.encoders.encoder_spec`);
- ``backbone``, ``head``: state dicts of the FR network;
- ``policy``: the strategy network's state dict (empty unless the method learns a k policy);
- ``num_classes``, ``input``: training identities, and ``[channels, side]`` of the encoder's output;
- ``mixing`` (optional): the ``mixing`` section training mixed with (after the method's own
  settings; ``fmix export --policy`` exports it with the policy);
- ``privacy`` (optional): what the method reports about its privacy budget (e.g. epsilon);
- ``net_fix`` (optional): how the method changed the network's layers (``"opacus"``: batch norm
  replaced by opacus' ``ModuleValidator.fix``), so the reader rebuilds the same layers;
- ``sign_invariant`` (optional): whether the network reads ``|x|`` (it trained on sign-masked mixes);
- ``release`` (optional): the release of ``fmix mask`` it trained on (``fmix train --release``): its
  id, samples, faces, labels and masker; its classes are the release's labels, not the split's.

With ``encoder.kind``, ``net_fix`` and ``sign_invariant`` the file says everything its reader
needs to rebuild the model: this layer never asks the methods (:mod:`fmix.methods`). A file
written before some of these keys existed is converted in one place, :func:`_legacy_state`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from fmix.models.checkpoint import load_checkpoint, save_checkpoint
from fmix.models.encoders import encoder_from_spec
from fmix.models.frnet import build_net
from fmix.params import MixingParams, TrainParams, plain_dict, section_from_mapping

# What `fmix train` saves in model.pt (``privacy`` is optional).
MODEL_KEYS = ("params", "encoder", "backbone", "head", "policy", "num_classes", "input")


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """The contents of ``model.pt``.

    Args:
        params: the ``train`` parameters the model was trained with.
        encoder: the input encoder's spec.
        backbone: the backbone's state dict.
        head: the margin head's state dict.
        policy: the strategy network's state dict (empty without a learned k policy).
        num_classes: training identities.
        input_shape: (channels, side) of the encoder's output.
        mixing: the mixing training used (defaults for a model saved before the ``mixing`` section).
        privacy: the method's privacy accounting (empty when it defines none).
        net_fix: ``""`` or ``"opacus"`` (the layers were changed by ``ModuleValidator.fix``).
        sign_invariant: the network reads ``|x|`` (trained on mixes under a sign mask).
        release: the release it trained on (empty: trained on the split's faces).
    """

    params: TrainParams
    encoder: dict
    backbone: dict
    head: dict
    policy: dict
    num_classes: int
    input_shape: tuple[int, int]
    mixing: MixingParams = dataclasses.field(default_factory=MixingParams)
    privacy: dict = dataclasses.field(default_factory=dict)
    net_fix: str = ""
    sign_invariant: bool = False
    release: dict = dataclasses.field(default_factory=dict)

    @property
    def method(self) -> str:
        """The training method's name."""
        return self.params.method

    def to_state(self) -> dict:
        """The plain dict written to ``model.pt``."""
        return {
            "params": plain_dict(dataclasses.asdict(self.params)),
            "encoder": self.encoder,
            "backbone": self.backbone,
            "head": self.head,
            "policy": self.policy,
            "num_classes": self.num_classes,
            "input": list(self.input_shape),
            "mixing": plain_dict(dataclasses.asdict(self.mixing)),
            "privacy": self.privacy,
            "net_fix": self.net_fix,
            "sign_invariant": self.sign_invariant,
            "release": self.release,
        }

    def save(self, path: str | Path) -> None:
        """Write ``model.pt`` atomically."""
        save_checkpoint(self.to_state(), path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "ModelRecord":
        """Read and check a ``model.pt``.

        Args:
            path: the file.
            device: where tensors are loaded.

        Returns:
            The record.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a checkpoint, a part is missing, or the train parameters are not valid.
        """
        state = load_checkpoint(path, device)
        missing = [key for key in MODEL_KEYS if not isinstance(state, dict) or key not in state]
        if missing:
            raise ValueError(f"{path} is not a model.pt of `fmix train`: it lacks {', '.join(missing)}")
        try:
            channels, size = state["input"]
            params, mixing, encoder, sign_invariant = _legacy_state(state)
            return cls(
                params=section_from_mapping(TrainParams, params, "train"),
                encoder=encoder,
                backbone=state["backbone"],
                head=state["head"],
                policy=state["policy"],
                num_classes=int(state["num_classes"]),
                input_shape=(int(channels), int(size)),
                mixing=section_from_mapping(MixingParams, mixing, "mixing"),
                privacy=state.get("privacy") or {},
                net_fix=state.get("net_fix") or "",
                sign_invariant=bool(sign_invariant),
                release=state.get("release") or {},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path} does not hold a model `fmix train` wrote: {type(err).__name__}: {err}") from err


LEGACY_MIXING_KEYS = {"mix_law": "weight_law", "mix_cap": "cap", "mix_rescale": "rescale"}
# The game as it was before these keys existed: a model.pt without them was trained that way.
LEGACY_GAME = {
    "policy_signal": "none",
    "policy_gradient": "sampled",
    "policy_reward": "mixed",
    "policy_objective": "adversarial",
    "sampled_from": "own",  # before a policy step could replay the FR step's draws
    "policy_batch": None,  # before it could play on a sub-batch
}
# The mixing as it was before the section existed: no sign mask (the default since).
LEGACY_MIXING = {"sign_flip": False}
# Keys of training only that a later version dropped: the dual step of the mean-k price (now solved).
RETIRED_KEYS = ("budget_lr",)
# Before model.pt recorded sign_invariant: the methods that trained on mixes (so on sign-masked
# ones when mixing.sign_flip). A table of names kept here, so that this layer never asks the methods.
LEGACY_MIXING_METHODS = ("mixup", "adaptive", "instahide")
# Before the encoder spec recorded its kind: the RGB method; every other one was a frequency encoder
# (and only ``freq`` kept DC).
LEGACY_RGB_METHODS = ("none",)
LEGACY_DC_METHODS = ("freq",)


def _legacy_state(state: dict) -> tuple[dict, dict, dict, bool]:
    """The one place where a model.pt from an older version is brought up to date.

    - ``train.mix_*`` (before the ``mixing`` section) move to the mixing (:data:`LEGACY_MIXING` for the rest);
    - flat method keys (``policy_*``, ``dctdp_*``, ``dpsgd_*``, ``k``: before ``train.<method>``)
      move into their method's section (:attr:`fmix.params.TrainParams.MOVED_KEYS`);
    - a game without its later keys gets the game it was trained with (:data:`LEGACY_GAME`);
    - retired keys (:data:`RETIRED_KEYS`) are dropped;
    - an encoder spec without ``kind`` / ``allow_dc`` gets them from the method's name;
    - without ``sign_invariant``, it is derived from the method's name (:data:`LEGACY_MIXING_METHODS`) and the mixing.

    Returns:
        ``(train params, mixing, encoder spec, sign_invariant)``, as plain containers.
    """
    params = dict(state["params"])
    legacy_mixing = {LEGACY_MIXING_KEYS[key]: params.pop(key) for key in list(params) if key in LEGACY_MIXING_KEYS}
    params = {key: value for key, value in params.items() if key not in RETIRED_KEYS}
    for old, new in TrainParams.MOVED_KEYS.items():
        if old in params:
            section, _, leaf = new.partition(".")
            params[section] = {**(params.get(section) or {}), leaf: params.pop(old)}
    params["adaptive"] = {**LEGACY_GAME, **(params.get("adaptive") or {})}
    mixing = state.get("mixing")
    mixing = mixing if mixing is not None else {**LEGACY_MIXING, **legacy_mixing}
    method = params.get("method", TrainParams.method)
    encoder = dict(state["encoder"])
    recorded = encoder.get("method", method)  # the spec records it; the train section too
    if "kind" not in encoder:
        encoder["kind"] = "rgb" if recorded in LEGACY_RGB_METHODS else "frequency"
    if encoder["kind"] != "rgb" and "allow_dc" not in encoder:
        encoder["allow_dc"] = recorded in LEGACY_DC_METHODS
    sign_invariant = state.get("sign_invariant")
    if sign_invariant is None:
        sign_flip = (
            mixing.get("sign_flip", MixingParams.sign_flip) if isinstance(mixing, dict) else False
        )  # a damaged mixing fails below
        sign_invariant = method in LEGACY_MIXING_METHODS and bool(sign_flip)
    return params, mixing, encoder, sign_invariant


class TrainedModel(nn.Module):
    """A trained model: input encoder (the masker, no mixing), backbone and head."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.backbone, self.head = encoder, backbone, head

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the batches go there; results come back to the CPU)."""
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def embed(self, images: Tensor, flip_average: bool = True, batch_size: int = 256) -> Tensor:
        """L2-normalised embeddings of aligned RGB faces, on the CPU (the batches run on the model's device).

        Shape:
            - images: :math:`(B, 3, H, W)` in [0, 255].
            - Output: :math:`(B, E)`.
        """
        self.eval()
        out, device = [], self.device
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            emb = self.backbone(self.encoder(batch))
            if flip_average:
                emb = nn.functional.normalize(emb, dim=1) + nn.functional.normalize(
                    self.backbone(self.encoder(batch.flip(-1))), dim=1
                )
            out.append(nn.functional.normalize(emb.float(), dim=1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def raw_features(self, images: Tensor) -> Tensor:
        """The untrained inputs of the network, flattened, on the CPU: the raw-feature floor's features."""
        return self.encoder(images.to(self.device)).flatten(1).float().cpu()


NET_FIXES = ("", "opacus")


def fix_net(net: nn.Module, fix: str) -> nn.Module:
    """The network with the layer changes ``fix`` names (:data:`NET_FIXES`).

    Raises:
        ValueError: an unknown fix.
    """
    if fix not in NET_FIXES:
        raise ValueError(f"unknown net_fix {fix!r}; known: {NET_FIXES}")
    if fix == "opacus":
        from fmix._optional import require

        # A large optional import (the dp extra), only for DP-SGD models.
        return require("opacus.validators", "dp").ModuleValidator.fix(net)
    return net


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[TrainedModel, ModelRecord]:
    """Rebuild a model saved by ``fmix train`` (``model.pt``).

    Args:
        path: the file.
        device: where the model goes.

    Returns:
        (model in eval mode, its record).

    Raises:
        ValueError: a missing or damaged part (named in the message).
    """
    record = ModelRecord.load(path, device)
    try:
        net = fix_net(
            build_net(record.params, *record.input_shape, record.num_classes, record.sign_invariant), record.net_fix
        )
        net.backbone.load_state_dict(record.backbone)
        net.head.load_state_dict(record.head)
        encoder = encoder_from_spec(record.encoder)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # a damaged or foreign record
        raise ValueError(f"{path} does not hold a model `fmix train` wrote: {type(err).__name__}: {err}") from err
    return TrainedModel(encoder, net.backbone, net.head).to(device).eval(), record
