"""What a protection method is: the interface every module of :mod:`fmix.methods` implements,
and the narrow context (:class:`RunContext`) its hooks see during a run.

A method is a class with attributes that declare it and hooks the trainer calls
(:class:`fmix.train.trainer.Trainer`). Each run builds its own method object
(:func:`fmix.methods.build_method`), so the object may hold the run's state (the adaptive game, a
privacy engine); hooks never see the trainer, only a :class:`RunContext`. Defaults describe the
simplest method: RGB inputs, no mixing, no turn of its own, no privacy accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fmix.data.sources import FaceSource
from fmix.masker.build import masker_from_metadata, read_masker_metadata
from fmix.masker.protection import MixingConfig, ProtectedBatch, Protection
from fmix.models.encoders import FrequencyEncoder, RgbEncoder
from fmix.params import ExportParams, MixingParams, TrainParams

# What ``fmix attack protection`` attacks of a method (:attr:`Method.attack_surface`).
ATTACK_SURFACES = ("masked", "mixed", "pixels", "noisy")
# Attacked through an exported masker (``fmix export``); the others through the trained model's own encoder.
MASKER_SURFACES = ("masked", "mixed")


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


@dataclass
class RunContext:
    """Everything a method's run hooks may read, and the two things they may replace.

    The trainer owns one and keeps it current (``step``); after :meth:`Method.setup` it reads
    ``model`` and ``optimizer`` back, so a method may wrap them (DP-SGD does). Nothing else of the
    trainer is reachable from a hook.

    Attributes:
        params: the ``train`` section.
        mixing: the mixing the run trains with (after :meth:`Method.mixing`).
        protection: how encoded faces are mixed (:meth:`Method.build_protection`; None: not at all).
        encoder: images -> network inputs.
        net: the FR network itself (backbone and head; never wrapped).
        model: what the FR loss runs through (``net``, or a wrapper: DDP, a privacy engine's); replaceable in setup.
        optimizer: the FR optimiser; replaceable in setup.
        faces: the private training faces (read only; a face source: :func:`fmix.data.sources.read_faces` reads a batch).
        generator: the run's CPU generator (k draws, mixing).
        device: where training runs.
        world: number of training processes.
        step: FR steps done so far.
        total_steps: FR steps of the whole run.
    """

    params: TrainParams
    mixing: MixingParams
    protection: Protection | None
    encoder: nn.Module
    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    faces: FaceSource
    generator: torch.Generator
    device: torch.device
    world: int = 1
    step: int = 0
    total_steps: int = 1

    @property
    def progress(self) -> float:
        """Training progress in [0, 1): steps done over all steps."""
        return self.step / self.total_steps


class Method:
    """A protection method (override the attributes and the hooks that differ).

    Args:
        params: the ``train`` parameters of the run (the method's own settings: ``params.<name>``).

    Attributes:
        name: the registry name (``train.method``).
        summary: one line for docs/methods.md and ``--help``.
        mixes: trains on mixed samples (after ``train.mix_warmup_fraction`` of training).
        attack_surface: what ``fmix attack protection`` attacks (:data:`ATTACK_SURFACES`):
            ``"masked"`` (the exported masker alone), ``"mixed"`` (masker + mixing), ``"pixels"``
            (the model's pixel-domain mixing, with its sign mask), ``"noisy"`` (the model's noisy
            encoder at its learned noise scales) or None (nothing: the method shares the faces themselves).
        learns_policy: the k policy is trained with the model (``fmix export --policy`` exports it);
            the method takes turns between FR steps (:meth:`take_turn`).
        trainable_encoder: the encoder has parameters trained with the FR network (and runs with gradients).
        net_fix: how :meth:`prepare_net` changes the network's layers, for ``model.pt`` (``""``: not
            at all; ``"opacus"``: opacus' ``ModuleValidator.fix``).
    """

    name: str = ""
    summary: str = ""
    mixes: bool = False
    attack_surface: str | None = None
    learns_policy: bool = False
    trainable_encoder: bool = False
    net_fix: str = ""

    def __init__(self, params: TrainParams) -> None:
        self.params = params

    # ------------------------------------------------------------------ declaration
    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        """The encoder (images in [0, 255] -> network inputs; ``model.pt`` stores its spec)."""
        return RgbEncoder()

    def check(self, mixing: MixingParams, world: int) -> None:
        """Refuse settings the method cannot train with (default: all accepted).

        Args:
            mixing: the method's mixing (:meth:`mixing`).
            world: number of training processes.
        """

    def mixing(self, mixing: MixingParams) -> MixingParams:
        """The mixing this method trains with, from the ``mixing`` section (default: the section as is)."""
        return mixing

    def build_protection(self, mixing: MixingParams) -> Protection | None:
        """How training protects the encoded faces (None: not at all beyond the encoder).

        The default: for a masker's surface (:data:`MASKER_SURFACES`), a
        :class:`~fmix.masker.protection.Protection` without a graph (the encoder masks), with the
        ``mixing`` section's configuration (channel permutation, weights, signs); else None.
        """
        return (
            Protection(None, MixingConfig.from_params(mixing), mixing.k_values)
            if self.attack_surface in MASKER_SURFACES
            else None
        )

    def sign_invariant(self, mixing: MixingParams) -> bool:
        """Whether the FR network reads ``|x|``: the method mixes under a random sign mask (``mixing.sign_flip``)."""
        return self.mixes and mixing.sign_flip

    def masker_params(self, export: ExportParams) -> ExportParams:
        """The ``export`` parameters of the masker this method trains through (default: the section as is)."""
        return export

    def masker_k(self) -> int | None:
        """The fixed k of an exported masker that protects as this method trained (None: ``export.k``)."""
        return None

    def prepare_net(self, net: nn.Module) -> nn.Module:
        """The FR network as this method trains it, before the optimiser sees it (default: unchanged)."""
        return net

    # ------------------------------------------------------------------ run hooks
    def setup(self, ctx: RunContext) -> None:
        """Called once the run has its network and optimiser: build the method's state, and replace
        ``ctx.model`` / ``ctx.optimizer`` if the method trains through wrappers of them."""

    def choose_k(self, ctx: RunContext, x: Tensor, game_on: bool) -> Tensor | int:
        """k of each sample of an FR step (only called for mixing methods)."""
        raise NotImplementedError(f"method {self.name!r} does not mix")

    def mix(self, ctx: RunContext, x: Tensor, labels: Tensor, k: Tensor | int) -> ProtectedBatch:
        """Mix a batch of encoded faces (default: the run's protection, i.e. the ``mixing`` section)."""
        return ctx.protection.protect_encoded(x, labels, k, ctx.generator)

    def plays_at(self, position: float) -> bool:
        """Whether the method's own turn is on at ``position`` (in epochs) once mixing is (default: never)."""
        return False

    def turn_due(self, ctx: RunContext) -> bool:
        """Whether the method takes its turn after the FR step just done (``ctx.step`` not yet counted it)."""
        return False

    def take_turn(self, ctx: RunContext, x: Tensor, labels: Tensor) -> list[dict]:
        """The method's turn on the FR step's encoded, un-mixed batch: the statistics of each of its
        steps (``reward``, ``entropy``, ``k_by_difficulty``)."""
        return []

    def end_epoch(self, ctx: RunContext, val_accuracy: float, played: bool) -> dict:
        """The method's fields of the epoch's log row (only called for methods that take turns).

        Args:
            ctx: the run.
            val_accuracy: the epoch's un-mixed validation accuracy.
            played: whether the turn was on at the epoch's last step.
        """
        return {}

    def network_changed(self, ctx: RunContext, played: bool) -> None:
        """The FR network changed outside training (batch norm re-estimated after the last epoch)."""

    def policy_state(self) -> dict:
        """The learned k policy's state dict for ``model.pt`` ({} when the method learns none)."""
        return {}

    def state_dict(self) -> dict:
        """What of the method a checkpoint must keep (e.g. the game, a privacy accountant's history)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` on resume (after :meth:`setup`)."""

    def privacy(self, ctx: RunContext) -> dict:
        """What the method reports about its privacy budget (summary and ``model.pt``); {} for none."""
        return {}

    def __repr__(self) -> str:
        return f"<method {self.name}>"


class MaskingMethod(Method):
    """A method whose network sees the exported masker's channels (``--masker``)."""

    attack_surface = "masked"

    def build_encoder(self, inputs: TrainInputs) -> nn.Module:
        if inputs.masker_path is None:
            raise ValueError(f"method {self.name!r} needs the exported masker (--masker)")
        return FrequencyEncoder(masker_from_metadata(read_masker_metadata(inputs.masker_path)).transform)
