"""What a protection method is: the interface every module of :mod:`fmix.methods` implements.

A method is a small object with class attributes that declare it and a few hooks the trainer
calls (:class:`fmix.train.trainer.Trainer`). Defaults describe the simplest method: RGB inputs, no
mixing, no game, no privacy accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fmix.masker.build import masker_from_metadata, read_masker_metadata
from fmix.masker.protection import MixingConfig, ProtectedBatch, Protection
from fmix.models.encoders import FrequencyEncoder, RgbEncoder
from fmix.params import ExportParams, MixingParams, TrainParams

if TYPE_CHECKING:  # the trainer calls the hooks; methods never import it at run time
    from fmix.train.trainer import Trainer

PROTECTIONS = ("masked", "mixed", "pixels", "noisy")
# Attacked through an exported masker (``fmix export``); the others through the trained model's own encoder.
MASKER_PROTECTIONS = ("masked", "mixed")


@dataclass(frozen=True)
class TrainInputs:
    """What a method may build its encoder from.

    Args:
        params: the ``train`` parameters.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        masker_path: ``masker.onnx`` of ``fmix export``, or None.
    """

    params: TrainParams
    aligned: Path
    splits: Path
    masker_path: Path | None = None


class Method:
    """A protection method (override the attributes and the hooks that differ).

    Attributes:
        name: the registry name (``train.method``).
        summary: one line for the README and ``--help``.
        mixes: trains on mixed samples (after ``train.mix_warmup_fraction`` of training).
        protection: what ``fmix attack protection`` attacks (:data:`PROTECTIONS`): ``"masked"``
            (the exported masker alone), ``"mixed"`` (masker + mixing), ``"pixels"`` (the model's
            pixel-domain mixing, with its sign mask), ``"noisy"`` (the model's noisy encoder at its
            learned noise scales) or None (nothing: the method shares the faces themselves).
        learns_policy: the k policy is trained with the model (``fmix export --policy`` exports it).
        trainable_encoder: the encoder has parameters trained with the FR network (and runs with gradients).
        net_fix: how :meth:`prepare_net` changes the network's layers, for ``model.pt`` (``""``: not
            at all; ``"opacus"``: opacus' ``ModuleValidator.fix``).
    """

    name: str = ""
    summary: str = ""
    mixes: bool = False
    protection: str | None = None
    learns_policy: bool = False
    trainable_encoder: bool = False
    net_fix: str = ""

    # ------------------------------------------------------------------ declaration
    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The encoder (images in [0, 255] -> network inputs; ``model.pt`` stores its spec)."""
        return RgbEncoder()

    def check(self, params: TrainParams, mixing: MixingParams, world: int) -> None:
        """Refuse parameters the method cannot train with (default: all accepted).

        Args:
            params: the ``train`` parameters.
            mixing: the method's mixing (:meth:`mixing`).
            world: number of training processes.
        """

    def mixing(self, mixing: MixingParams, params: TrainParams) -> MixingParams:
        """The mixing this method trains with, from the ``mixing`` section (default: the section as is)."""
        return mixing

    def build_protection(self, mixing: MixingParams) -> Protection | None:
        """How training protects the encoded faces (None: not at all beyond the encoder).

        The default: for a masker's protection (:data:`MASKER_PROTECTIONS`), a
        :class:`~fmix.masker.protection.Protection` without a graph (the encoder masks), with the
        ``mixing`` section's configuration (channel permutation, weights, signs); else None.
        """
        return Protection(None, MixingConfig.from_params(mixing), mixing.k_values) if self.protection in MASKER_PROTECTIONS else None

    def sign_invariant(self, mixing: MixingParams) -> bool:
        """Whether the FR network reads ``|x|``: the method mixes under a random sign mask (``mixing.sign_flip``)."""
        return self.mixes and mixing.sign_flip

    def masker_params(self, export: ExportParams) -> ExportParams:
        """The ``export`` parameters of the masker this method trains through (default: the section as is)."""
        return export

    def masker_k(self, params: TrainParams) -> int | None:
        """The fixed k of an exported masker that protects as this method trained (None: ``export.k``)."""
        return None

    # ------------------------------------------------------------------ mixing
    def build_game(self, channels: int, params: TrainParams, protection: Protection) -> Any:
        """The adversarial game that picks k (None: k is fixed)."""
        return None

    def choose_k(self, trainer: "Trainer", x: Tensor, game_on: bool) -> Tensor | int:
        """k of each sample of an FR step (only called for mixing methods)."""
        raise NotImplementedError(f"method {self.name!r} does not mix")

    def mix(self, trainer: "Trainer", x: Tensor, labels: Tensor, k: Tensor | int) -> ProtectedBatch:
        """Mix a batch of encoded faces (default: the trainer's protection, i.e. the ``mixing`` section)."""
        return trainer.protection.protect_encoded(x, labels, k, trainer.generator)

    # ------------------------------------------------------------------ training hooks
    def prepare_net(self, net: nn.Module) -> nn.Module:
        """The FR network as this method trains it, before the optimiser sees it (default: unchanged)."""
        return net

    def setup(self, trainer: "Trainer") -> None:
        """Called once the trainer has its network and optimiser (e.g. to make them private)."""

    def state_dict(self, trainer: "Trainer") -> dict:
        """What of the method a checkpoint must keep (e.g. a privacy accountant's history)."""
        return {}

    def load_state_dict(self, trainer: "Trainer", state: dict) -> None:
        """Restore :meth:`state_dict` on resume."""

    def privacy(self, trainer: "Trainer") -> dict:
        """What the method reports about its privacy budget (summary and ``model.pt``); {} for none."""
        return {}

    def __repr__(self) -> str:
        return f"<method {self.name}>"


class MaskingMethod(Method):
    """A method whose network sees the exported masker's channels (``--masker``)."""

    protection = "masked"

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        if inputs.masker_path is None:
            raise ValueError(f"method {self.name!r} needs the exported masker (--masker)")
        masker = masker_from_metadata(read_masker_metadata(inputs.masker_path))
        return FrequencyEncoder(masker)

