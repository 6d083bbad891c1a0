"""Pipeline parameters: one dataclass per stage, read from that stage's section of ``params.yaml``.

The dataclass defaults are the documented defaults; ``params.yaml`` at the repository root
holds the same values (``tests/test_params.py`` proves it), so the pipeline and a bare
``fmix`` call agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from fmix.device import check_device_spec  # the one rule for device strings (imports no torch)
from fmix.methods.registry import METHODS  # one source of truth: the registry of fmix/methods

T = TypeVar("T")


class ParamsError(ValueError):
    """A params file or section is missing, malformed or holds a wrong value."""


@dataclasses.dataclass(frozen=True)
class AlignParams:
    """Face detection and alignment (``fmix align``)."""

    min_images: int = 2  # align only identities with at least this many source files
    max_identities: int | None = None  # first N identities (sorted by name) after min_images
    size: int = 112  # output side; the ArcFace template is scaled from 112
    score_threshold: float = 0.9  # detector confidence
    detect_max_side: int = 640  # larger photos are downscaled for detection only
    max_pixels: int = 40_000_000  # decompression-bomb guard (width * height)
    workers: int = 2
    device: str = (
        "auto"  # the detector's ONNX Runtime provider: auto (CUDA when onnxruntime-gpu has it) | cpu | cuda | cuda:N
    )

    def __post_init__(self) -> None:
        _require_device(self.device, "align.device")
        _require(self.min_images >= 1, "align.min_images must be >= 1")
        _require(self.max_identities is None or self.max_identities >= 1, "align.max_identities must be >= 1 or null")
        _require(self.size >= 32 and self.size % 8 == 0, "align.size must be a multiple of 8, at least 32")
        _require(0.0 < self.score_threshold < 1.0, "align.score_threshold must be in (0, 1)")
        _require(self.detect_max_side >= 64, "align.detect_max_side must be >= 64")
        _require(self.max_pixels >= 64 * 64, "align.max_pixels must be >= 4096")
        _require(self.workers >= 1, "align.workers must be >= 1")


@dataclasses.dataclass(frozen=True)
class SplitParams:
    """Identity-disjoint splits and verification pairs (``fmix split``)."""

    seed: int = 0
    min_images: int = 5  # identities with fewer aligned faces are left out
    private_fraction: float = 0.6  # of identities: the data owner's training identities
    public_fraction: float = 0.2  # of identities: the attacker's public faces
    val_fraction: float = 0.2  # of each private identity's images (at least one image)
    pairs: str = "heldout"  # "heldout": pairs from the remaining identities; "lfw": LFW pairs.txt
    lfw_pairs_file: str = "../shared/data/lfw/pairs.txt"
    folds: int = 10
    pairs_per_fold: int = 100  # half matched, half mismatched
    # Identities with fewer than min_images (but at least this many) faces join the private role as
    # extra training identities (train only); the roles of the others (and so the pairs) do not change. None: off.
    private_extra_min_images: int | None = None

    def __post_init__(self) -> None:
        _require_seed(self.seed, "split.seed")
        _require(self.min_images >= 2, "split.min_images must be >= 2")
        _require(
            self.private_extra_min_images is None or 1 <= self.private_extra_min_images < self.min_images,
            "split.private_extra_min_images must be null or in [1, split.min_images)",
        )
        _require(0 < self.private_fraction < 1, "split.private_fraction must be in (0, 1)")
        _require(0 <= self.public_fraction < 1, "split.public_fraction must be in [0, 1)")
        _require(
            self.private_fraction + self.public_fraction < 1,
            "split.private_fraction + split.public_fraction must be < 1 (the rest are verification identities)",
        )
        _require(0 < self.val_fraction < 1, "split.val_fraction must be in (0, 1)")
        _require(self.pairs in ("heldout", "lfw"), f"split.pairs must be 'heldout' or 'lfw', got {self.pairs!r}")
        _require(self.folds >= 2, "split.folds must be >= 2")
        _require(self.pairs_per_fold >= 2 and self.pairs_per_fold % 2 == 0, "split.pairs_per_fold must be even, >= 2")


@dataclasses.dataclass(frozen=True)
class ExportParams:
    """The masker (``fmix export``): transform, channel masking, normalisation and the fixed k policy.

    How the masker's samples are mixed is the ``mixing`` section (:class:`MixingParams`).
    """

    upsample: int = 2  # bilinear factor before the block DCT: 1 -> 14x14 maps, 2 -> 28x28, 8 -> 112x112 (the family's)
    low_freq_threshold: int | None = 2  # drop channels with p + q <= t in every colour plane
    drop: tuple[int, ...] = ()  # further channels to drop
    keep_lowest_energy: int | None = None  # keep only the N lowest-energy channels left
    keep_highest_energy: int | None = None  # keep only the N highest-energy channels left (PPFR-FD: 36)
    k: int = 2  # fixed-k policy (until a trained strategy network is given); one of mixing.k_values
    stats_images: int = 2000  # public faces used for channel statistics
    opset: int = 18

    def __post_init__(self) -> None:
        _require(self.upsample in (1, 2, 4, 8), f"export.upsample must be 1, 2, 4 or 8, got {self.upsample}")
        _require(
            self.low_freq_threshold is None or self.low_freq_threshold >= 0,
            "export.low_freq_threshold must be >= 0 or null",
        )
        _require(
            self.keep_lowest_energy is None or self.keep_lowest_energy >= 1,
            "export.keep_lowest_energy must be >= 1 or null",
        )
        _require(
            self.keep_highest_energy is None or self.keep_highest_energy >= 1,
            "export.keep_highest_energy must be >= 1 or null",
        )
        _require(
            self.keep_lowest_energy is None or self.keep_highest_energy is None,
            "export.keep_lowest_energy and export.keep_highest_energy exclude each other (one must be null)",
        )
        _require(self.k >= 1, "export.k must be >= 1")
        _require(self.stats_images >= 1, "export.stats_images must be >= 1")
        _require(self.opset >= 17, "export.opset must be >= 17")


@dataclasses.dataclass(frozen=True)
class MixingParams:
    """How protected samples are mixed, everywhere: training, the exported masker (``fmix mask``) and the attacks."""

    k_values: tuple[int, ...] = (
        2,
        3,
        4,
        5,
        6,
    )  # the k a mix may have (the adaptive policy's actions); k_max = the largest
    weight_law: str = "dirichlet"  # or "instahide" (|N(0, 1)| normalised)
    cap: float | None = (
        0.65  # largest mixing weight; 0.5 costs adaptive 1.8 points and lowers S4 only 0.14 -> 0.12 (docs/results/2026-11-29-mean-k-3.md)
    )
    sign_flip: bool = (
        True  # random +-1 per coefficient after mixing (InstaHide): the network and the attackers read |x|
    )
    permute_channels: bool = False  # per-sample random channel permutation before mixing (PPFR-FD)
    rescale: bool = True  # divide mixes by the weights' L2 norm: same variance as un-mixed faces
    noise: float = 0.75  # std of Gaussian noise on every coefficient of a mix (unit variance; un-mixed faces get none); 0 draws none

    def __post_init__(self) -> None:
        _require(
            len(self.k_values) >= 1 and min(self.k_values) >= 1, "mixing.k_values must be a non-empty list of k >= 1"
        )
        _require(
            list(self.k_values) == sorted(set(self.k_values)), "mixing.k_values must be increasing without repeats"
        )
        _require(
            self.weight_law in ("dirichlet", "instahide"),
            f"mixing.weight_law must be 'dirichlet' or 'instahide', got {self.weight_law!r}",
        )
        _require(self.cap is None or 0 < self.cap <= 1, "mixing.cap must be in (0, 1] or null")
        _require(self.noise >= 0, f"mixing.noise must be >= 0, got {self.noise}")
        problem = cap_problem(self.cap, self.k_values)
        _require(problem is None, problem or "")


def cap_problem(cap: float | None, k_values: tuple[int, ...]) -> str | None:
    """Why no mix of the smallest k can meet ``cap`` (k weights summing to 1 need ``cap * k >= 1``), or None.

    Args:
        cap: ``mixing.cap``, the largest mixing weight (None: no cap).
        k_values: the k a mix may have (k = 1 does not mix).

    Returns:
        The message, or None when the cap is feasible.
    """
    mixed = [k for k in k_values if k >= 2]
    if cap is None or not mixed or cap * min(mixed) >= 1.0 - 1e-9:
        return None
    smallest = min(mixed)
    return f"mixing.cap={cap} is infeasible for the smallest k={smallest}: {smallest} weights summing to 1 cannot all be <= {cap} (need mixing.cap >= {1.0 / smallest:.4g})"


@dataclasses.dataclass(frozen=True)
class MaskParams:
    """Applying an exported masker to image folders (``fmix mask``)."""

    batch_size: int = 256  # faces per batch; mixing partners come from the same batch; one shard each
    mix: bool = True  # false: mask only (verification and enrolment faces)
    previews: int = 16  # PNG visualisations of the first protected samples
    anonymize: bool = (
        True  # keyed-hash sample names (key: FMIX_NAME_KEY, the secret key, or random); false: file names joined by +
    )
    max_per_identity: int | None = (
        None  # release at most N faces of one identity (the first in path order; the rest are recorded, not released): a person's samples average out their masked face (fmix attack aggregate)
    )
    noise: float | None = (
        2.5  # the release's noise std on every coefficient of a mix, at least the masker's mixing.noise (null: the masker's); training does not pay for it
    )
    noise_photos: int | None = (
        5  # a sample's noise std grows as sqrt(n / noise_photos) where its most photographed constituent has n > noise_photos faces in the release: averaging that person's samples gains nothing over noise_photos of them (null: one noise for every sample)
    )

    def __post_init__(self) -> None:
        _require(self.batch_size >= 2, "mask.batch_size must be >= 2")
        _require(
            self.noise is None or (math.isfinite(self.noise) and self.noise >= 0),
            f"mask.noise must be null or a number >= 0, got {self.noise}",
        )
        _require(self.previews >= 0, "mask.previews must be >= 0")
        _require(
            self.noise_photos is None or self.noise_photos >= 1,
            f"mask.noise_photos must be null or >= 1, got {self.noise_photos}",
        )
        _require(
            self.max_per_identity is None or self.max_per_identity >= 1,
            f"mask.max_per_identity must be null or >= 1, got {self.max_per_identity}",
        )


@dataclasses.dataclass(frozen=True)
class MixupParams:
    """The ``mixup`` method's settings (``train.mixup``): Frequency MixUp with one fixed k."""

    k: int = 2  # faces per mix, one of mixing.k_values

    def __post_init__(self) -> None:
        _require(self.k >= 1, "train.mixup.k must be >= 1")


@dataclasses.dataclass(frozen=True)
class AdaptiveParams:
    """The ``adaptive`` method's settings (``train.adaptive``): the game of the strategy network that picks k (docs/design.md §3)."""

    policy_lr: float = 0.01
    policy_warmup_epochs: float = 1.0  # FR-only epochs before the game starts (it also waits for mixing to start)
    policy_reference: str = "unmixed"  # "unmixed": reward minus the sample's own un-mixed loss (per-sample advantage)
    policy_reward: str = (
        "mixed"  # "mixed": the mix's loss with its constituents' labels; "anchor": the anchor's own label under its mix
    )
    policy_objective: str = "cooperative"  # [ours] the policy minimises that loss at the mean-k budget; "adversarial": maximises it (docs/design.md §3)
    policy_shuffle: bool = (
        False  # ablation: the policy's k shuffled across each FR batch (the same k histogram, no per-sample choice)
    )
    policy_signal: str = "none"  # "none": the policy reads the masked face only; "confidence": also the frozen FR network's largest cosine to a class centre (the exported masker then holds the FR backbone)
    # "sampled": REINFORCE on one k per sample (see sampled_from); "expected": every k scored, exact expectation
    # over the policy (the default before issue 34, with policy_batch null and n_fr 2: 1.68x mixup4's training time)
    policy_gradient: str = "sampled"
    n_fr: int = 1  # the policy plays after every n_fr FR steps...
    n_pi: int = 1  # ...n_pi REINFORCE steps on the same batch (FR frozen)
    entropy_weight: float = 0.1
    baseline_momentum: float = 0.9
    min_val_accuracy: float = 0.3  # utility floor on un-mixed validation faces (dual ascent on nu)
    dual_lr: float = 2.0
    target_mean_k: float | None = (
        4.0  # a price solved each policy step holds this mean k (null: free); the policy only chooses which samples get more
    )
    difficulty_weight: float = (
        1.0  # the policy's difficulty head regresses the FR's un-mixed loss (its per-sample signal)
    )
    # Where a sampled step's k and reward come from (issue 34): "fr_step": the FR step just taken, its k draws
    # and per-sample loss of each mix (no FR forward of the policy's own); "own": drawn, mixed and scored again
    # with the frozen FR network. Not used by policy_gradient: expected (it scores every k itself).
    sampled_from: str = "fr_step"
    policy_batch: int | None = 16  # anchors a policy step plays on: the first of the (shuffled) batch; null: all

    @property
    def replays_fr_step(self) -> bool:
        """Whether the policy's steps replay the FR step just taken (``policy_gradient: sampled``, ``sampled_from: fr_step``)."""
        return self.policy_gradient == "sampled" and self.sampled_from == "fr_step"

    def __post_init__(self) -> None:
        _require(self.policy_lr > 0, "train.adaptive.policy_lr must be > 0")
        _require(self.n_fr >= 1 and self.n_pi >= 1, "train.adaptive.n_fr and train.adaptive.n_pi must be >= 1")
        _require(
            self.policy_reference in ("none", "unmixed"),
            f"train.adaptive.policy_reference must be 'none' or 'unmixed', got {self.policy_reference!r}",
        )
        _require(
            self.policy_reward in ("mixed", "anchor"),
            f"train.adaptive.policy_reward must be 'mixed' or 'anchor', got {self.policy_reward!r}",
        )
        _require(
            self.policy_objective in ("adversarial", "cooperative"),
            f"train.adaptive.policy_objective must be 'adversarial' or 'cooperative', got {self.policy_objective!r}",
        )
        _require(
            self.policy_signal in ("none", "confidence"),
            f"train.adaptive.policy_signal must be 'none' or 'confidence', got {self.policy_signal!r}",
        )
        _require(
            self.policy_gradient in ("sampled", "expected"),
            f"train.adaptive.policy_gradient must be 'sampled' or 'expected', got {self.policy_gradient!r}",
        )
        _require(0 <= self.min_val_accuracy <= 1, "train.adaptive.min_val_accuracy must be in [0, 1]")
        # The range within mixing.k_values is a check of both sections: check_sections.
        _require(
            self.target_mean_k is None or self.target_mean_k > 1,
            f"train.adaptive.target_mean_k must be null or > 1, got {self.target_mean_k}",
        )
        _require(self.difficulty_weight >= 0, "train.adaptive.difficulty_weight must be >= 0")
        _require(
            self.sampled_from in ("fr_step", "own"),
            f"train.adaptive.sampled_from must be 'fr_step' or 'own', got {self.sampled_from!r}",
        )
        _require(
            self.policy_batch is None or self.policy_batch >= 2,
            f"train.adaptive.policy_batch must be null or >= 2, got {self.policy_batch}",
        )
        if self.replays_fr_step:
            # The FR step drew k from the policy and scored each mix with its constituents' labels: nothing else.
            _require(
                self.policy_reward == "mixed",
                "train.adaptive.policy_reward: anchor needs sampled_from: own (the FR step scored each mix with its "
                "constituents' labels only) or policy_gradient: expected",
            )
            _require(
                not self.policy_shuffle,
                "train.adaptive.policy_shuffle needs sampled_from: own or policy_gradient: expected (the FR step's "
                "shuffled k are not the policy's draws)",
            )

    def check_mixing(self, mixing: "MixingParams") -> None:
        """The mean-k budget lies strictly between the smallest and the largest of ``mixing.k_values`` (the policy's actions);
        a policy step that mixes its own sub-batch (``policy_batch``) holds enough faces for the largest k."""
        k_values = mixing.k_values
        _require(
            self.target_mean_k is None or min(k_values) < self.target_mean_k < max(k_values),
            f"train.adaptive.target_mean_k={self.target_mean_k} must be null or lie strictly between the smallest and the largest "
            f"of mixing.k_values={list(k_values)}",
        )
        _require(
            self.replays_fr_step or self.policy_batch is None or self.policy_batch >= max(k_values),
            f"train.adaptive.policy_batch={self.policy_batch} must be null or at least the largest of "
            f"mixing.k_values={list(k_values)}: the policy step mixes each anchor with partners from its sub-batch",
        )


@dataclasses.dataclass(frozen=True)
class DctdpParams:
    """The ``dctdp`` method's settings (``train.dctdp``): the Laplace budget of its noisy channels."""

    epsilon: float = 200000.0  # Laplace budget per face (all its clipped coefficients; 189 x 28 x 28 at u = 2)
    clip: float | None = 3.0  # coefficients clipped to [-C, C] (normalised units): sensitivity 2 C; null: unclipped
    sensitivity: float | None = None  # null: 2 C; a number: nominal, per coefficient, raw DCT units (TFace: 1.0)
    per_coefficient: bool = False  # one learned budget share per coefficient (TFace) instead of per channel
    raw_units: bool = True  # the FR network gets raw DCT units / rms std (as DCTDP does) instead of normalised channels

    def __post_init__(self) -> None:
        _require(
            self.epsilon > 0 and (self.clip is None or self.clip > 0),
            "train.dctdp.epsilon and train.dctdp.clip must be > 0",
        )
        _require(self.sensitivity is None or self.sensitivity > 0, "train.dctdp.sensitivity must be null or > 0")
        _require(
            self.clip is not None or self.sensitivity is not None,
            "train.dctdp.clip may be null only with a train.dctdp.sensitivity: nothing else bounds the coefficients",
        )


@dataclasses.dataclass(frozen=True)
class DpsgdParams:
    """The ``dpsgd`` method's settings (``train.dpsgd``): DP-SGD's clipping and noise, and the delta epsilon is reported at."""

    noise_multiplier: float = 1.0  # Gaussian noise std / clipping norm
    max_grad_norm: float = 1.0  # per-sample gradient clipping norm
    delta: float = 1.0e-5  # the delta epsilon is reported at

    def __post_init__(self) -> None:
        _require(
            self.noise_multiplier >= 0 and self.max_grad_norm > 0,
            "train.dpsgd.noise_multiplier must be >= 0 and train.dpsgd.max_grad_norm > 0",
        )
        _require(0 < self.delta < 1, "train.dpsgd.delta must be in (0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """FR training (``fmix train``); each method with settings has its own section under it (``train.<method>``)."""

    # Keys that moved into a method's section: old name -> new dotted name under ``train``. A params
    # file that still holds one is refused naming the new key; an old model.pt is converted
    # (:mod:`fmix.models.artifact`).
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "k": "mixup.k",
        **{
            key: f"adaptive.{key}"
            for key in (
                "policy_lr",
                "policy_warmup_epochs",
                "policy_reference",
                "policy_reward",
                "policy_objective",
                "policy_shuffle",
                "policy_signal",
                "policy_gradient",
                "n_fr",
                "n_pi",
                "entropy_weight",
                "baseline_momentum",
                "min_val_accuracy",
                "dual_lr",
                "target_mean_k",
                "difficulty_weight",
                "sampled_from",  # never flat (issue 34): refused there like the others, named by its section
                "policy_batch",
            )
        },
        "dctdp_epsilon": "dctdp.epsilon",
        "dctdp_clip": "dctdp.clip",
        "dpsgd_noise_multiplier": "dpsgd.noise_multiplier",
        "dpsgd_max_grad_norm": "dpsgd.max_grad_norm",
        "dpsgd_delta": "dpsgd.delta",
    }

    method: str = "adaptive"  # a name of fmix.methods.registry: none | freq | ppfrfd | mixup | adaptive | ...
    backbone: str = "iresnet18"
    width: float = 0.5
    strides: str | None = None  # stride preset (None: the default for the input size)
    norm: str = "batch"  # or "group": no batch statistics at all
    embedding_size: int = 256
    head: str = "cosface"  # or "arcface"
    scale: float = 32.0
    margin: float | None = None  # None: 0.35 for CosFace, 0.5 for ArcFace
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5
    schedule: str = "cosine"  # or "step"
    clip_grad: float = 5.0
    flip: bool = True  # random horizontal flips of the aligned faces
    recalibrate_bn: bool = True  # re-estimate BN statistics on un-mixed faces after training
    mix_warmup_fraction: float = 0.5  # curriculum: mixing methods train on un-mixed masked faces first
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 50  # steps
    amp: bool = True  # bf16 autocast on CUDA
    device: str = "auto"  # auto (CUDA when available, else CPU) | cpu | cuda | cuda:N (fmix.device)
    init_backbone: str | None = None  # an arcface_torch backbone.pth to start the RGB backbone from (null: random init)
    source: str = "memory"  # memory: every training face decoded once, up front | folder: streamed, decoded per batch
    workers: int = 0  # loader processes that decode the streamed faces (source: folder; 0: in the training process)
    mixup: MixupParams = dataclasses.field(default_factory=MixupParams)
    adaptive: AdaptiveParams = dataclasses.field(default_factory=AdaptiveParams)
    dctdp: DctdpParams = dataclasses.field(default_factory=DctdpParams)
    dpsgd: DpsgdParams = dataclasses.field(default_factory=DpsgdParams)

    def __post_init__(self) -> None:
        _require_seed(self.seed, "train.seed")
        _require_device(self.device, "train.device")
        _require(
            self.init_backbone is None or self.init_backbone.strip() != "",
            "train.init_backbone must be null or the path of a backbone.pth",
        )
        _require(self.method in METHODS, f"train.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _require(self.source in ("memory", "folder"), f"train.source must be 'memory' or 'folder', got {self.source!r}")
        _require(self.workers >= 0, f"train.workers must be >= 0, got {self.workers}")
        _require(self.norm in ("batch", "group"), f"train.norm must be 'batch' or 'group', got {self.norm!r}")
        _require(self.head in ("arcface", "cosface"), f"train.head must be 'arcface' or 'cosface', got {self.head!r}")
        _require(
            self.schedule in ("cosine", "step"), f"train.schedule must be 'cosine' or 'step', got {self.schedule!r}"
        )
        _require(self.epochs >= 1 and self.batch_size >= 2, "train.epochs must be >= 1 and train.batch_size >= 2")
        _require(self.lr > 0, "train.lr must be > 0")
        _require(0 <= self.mix_warmup_fraction < 1, "train.mix_warmup_fraction must be in [0, 1)")
        _require(
            self.checkpoint_every >= 1 and self.threads >= 1, "train.checkpoint_every and train.threads must be >= 1"
        )
        for name, section in method_sections().items():
            _require(
                isinstance(getattr(self, name), section),
                f"train.{name} must be a {section.__name__} (a mapping in params files), got {getattr(self, name)!r}",
            )

    @property
    def settings(self) -> Any:
        """The settings section of this run's method (``train.<method>``), or None for a method without settings."""
        return getattr(self, self.method) if self.method in method_sections() else None


@functools.cache
def method_sections() -> dict[str, type]:
    """The method sections of ``train``: field name (the method's registry name) -> its settings dataclass."""
    hints = typing.get_type_hints(TrainParams)
    return {
        field.name: hints[field.name]
        for field in dataclasses.fields(TrainParams)
        if dataclasses.is_dataclass(hints[field.name])
    }


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Verification on masked, un-mixed faces of held-out identities (``fmix evaluate``)."""

    flip_average: bool = True  # average the embeddings of a face and its mirror image
    batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N (fmix.device)

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "evaluate.batch_size must be >= 1")
        _require_device(self.device, "evaluate.device")


@dataclasses.dataclass(frozen=True)
class EvaluatorParams:
    """The independent evaluator (``fmix evaluator``): an RGB FR model on clean private faces, its own seed."""

    seed: int = 1
    backbone: str = "iresnet18"
    width: float = 0.25
    epochs: int = 1
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N (fmix.device); replaces train.device for the evaluator

    def __post_init__(self) -> None:
        _require_seed(self.seed, "evaluator.seed")
        _require_device(self.device, "evaluator.device")
        _require(self.epochs >= 1 and self.width > 0, "evaluator.epochs must be >= 1 and evaluator.width > 0")


@dataclasses.dataclass(frozen=True)
class AttackParams:
    """Privacy attacks (``fmix attack reconstruct`` and ``fmix attack invert``)."""

    seconds: float = 120.0  # CPU seconds (wall-clock seconds on CUDA: attack.device) of inversion-network training per attacker (a cap beside steps)
    steps: int | None = 20  # steps per attacker: it stops at whichever comes first (null: time only)
    prior_steps: int | None = (
        300  # the attackers' shared prior (fmix attack prior): the un-mixed inverter every mixed entry's attacks start from
    )
    prior_seconds: float = 600.0  # its cap, counted as `seconds`
    eval_faces: int = 64  # private faces attacked
    black_box_k: int = 2  # the black-box attacker's guess of k
    batch_size: int = 16  # public faces per step of the inversion network
    invert_seconds: float = 5.0  # model inversion: the decoder's training, and again the identity optimisation
    invert_identities: int = 32  # identities reconstructed by input optimisation
    seed: int = 0
    judge: str = "dlib"  # who names the identities for S2/S4: dlib (pretrained descriptor), evaluator (the RGB model) or the path of an ONNX face embedder (.onnx)
    check_min_s4: float = 0.25  # the attack works when it names this share of the un-mixed masked faces (its check)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (fmix.device); on CUDA, `seconds` counts wall-clock seconds

    def __post_init__(self) -> None:
        _require_seed(self.seed, "attack.seed")
        _require_device(self.device, "attack.device")
        _require(0.0 < self.check_min_s4 <= 1.0, f"attack.check_min_s4 must be in (0, 1], got {self.check_min_s4}")
        _require(self.seconds > 0 and self.invert_seconds > 0, "attack.seconds and attack.invert_seconds must be > 0")
        _require(self.steps is None or self.steps >= 1, f"attack.steps must be null or >= 1, got {self.steps}")
        _require(
            self.prior_steps is None or self.prior_steps >= 1,
            f"attack.prior_steps must be null or >= 1, got {self.prior_steps}",
        )
        _require(self.prior_seconds > 0, f"attack.prior_seconds must be > 0, got {self.prior_seconds}")
        _require(
            self.eval_faces >= 2 and self.invert_identities >= 1,
            "attack.eval_faces must be >= 2 and attack.invert_identities >= 1",
        )
        _require(
            self.black_box_k >= 1 and self.batch_size >= 2, "attack.black_box_k must be >= 1 and attack.batch_size >= 2"
        )
        _require(
            self.judge in ("dlib", "evaluator") or self.judge.lower().endswith(".onnx"),
            f"attack.judge must be 'dlib', 'evaluator' or the path of an ONNX face embedder ending in .onnx, got {self.judge!r}",
        )


@dataclasses.dataclass(frozen=True)
class LaunchParams:
    """How the pipeline starts training (``fmix launch``): one process, or ``torchrun`` over GPUs and nodes."""

    gpus_per_node: int = 0  # 0 or 1: one process; more: torchrun --nproc_per_node
    nodes: int = 1  # more than 1: srun + torchrun with a c10d rendezvous on the first node (SLURM)
    port: int = 29500  # rendezvous port on the first node

    def __post_init__(self) -> None:
        _require(self.gpus_per_node >= 0 and self.nodes >= 1, "launch.gpus_per_node must be >= 0 and launch.nodes >= 1")
        _require(1024 <= self.port <= 65535, "launch.port must be in [1024, 65535]")


SECTIONS: dict[str, type] = {
    "align": AlignParams,
    "split": SplitParams,
    "export": ExportParams,
    "mask": MaskParams,
    "mixing": MixingParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "evaluator": EvaluatorParams,
    "attack": AttackParams,
    "launch": LaunchParams,
}

# The method sweep: entry name -> train overrides. Each entry gets its own train, evaluate and
# attack stages (DVC foreach, Snakemake {method} wildcard); params.yaml's `sweep` section holds
# this default (the quick profile), workflow/params/<profile>.yaml others.
DEFAULT_SWEEP: dict[str, dict[str, Any]] = {
    "none": {"method": "none", "width": 0.25},  # quick: the RGB reference at a quarter width
    "ppfrfd": {"method": "ppfrfd"},
    "mixup4": {"method": "mixup", "mixup": {"k": 4}},  # fixed k at adaptive's mean k (train.adaptive.target_mean_k)
    "adaptive": {"method": "adaptive"},  # ours: the cooperative policy
    "adaptive_paper": {"method": "adaptive", "adaptive": {"policy_objective": "adversarial"}},  # the paper's game
}
SWEEP_NAME = re.compile(r"[a-z][a-z0-9_]*")


# Sections of params.yaml beside the stage sections: ``data`` wires the pipeline's paths (no
# command reads it); ``sweep`` lists the method entries (checked by :func:`sweep_entries`).
WIRING_SECTIONS = ("data", "sweep")
MAX_SEED = 2**32 - 1  # what every seeded generator (numpy, torch, random) accepts


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ParamsError(message)


def _require_device(spec: str, name: str) -> None:
    """The form of a device string (:func:`fmix.device.check_device_spec`); CUDA is looked for when a stage runs."""
    try:
        check_device_spec(spec, name)
    except (TypeError, ValueError) as err:
        raise ParamsError(str(err)) from err


def _require_seed(seed: int, name: str) -> None:
    _require(0 <= seed <= MAX_SEED, f"{name} must be in [0, {MAX_SEED}], got {seed}")


def read_params_file(path: str | Path) -> dict[str, Any]:
    """Read a params YAML file into a dict of sections.

    Args:
        path: the YAML file.

    Returns:
        The mapping of section name to section mapping.

    Raises:
        ParamsError: the file is missing, not UTF-8 YAML, not a mapping, or names a section
            that no stage has (a misspelled section would otherwise silently run with defaults).
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ParamsError(f"params file {path} is not UTF-8 text: {err}") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"params file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path} must hold a mapping of sections, got {type(data).__name__}")
    _check_section_names(data, str(path))
    return data


def _check_section_names(data: dict, source: str) -> None:
    unknown = sorted(str(name) for name in set(data) - set(SECTIONS) - set(WIRING_SECTIONS))
    if unknown:
        known = ", ".join([*SECTIONS, *WIRING_SECTIONS])
        raise ParamsError(f"unknown section(s) in {source}: {', '.join(unknown)}; known: {known}")


def validate_params(data: dict[str, Any], source: str = "params") -> None:
    """Check a whole params mapping: known section names, every stage section's keys and values, and
    the checks across sections (:func:`check_sections`, for ``train`` and every sweep entry).

    The pipelines call this when they load ``params.yaml``, so a typo fails before any stage runs.

    Args:
        data: section name -> section mapping (as read from ``params.yaml``).
        source: where the mapping came from, for messages.

    Raises:
        ParamsError: naming the first bad section, key or value.
    """
    if not isinstance(data, dict):
        raise ParamsError(f"{source} must hold a mapping of sections, got {type(data).__name__}")
    _check_section_names(data, source)
    sections = {
        name: section_from_mapping(cls, {} if data.get(name) is None else data[name], name)
        for name, cls in SECTIONS.items()
    }
    check_sections(sections["train"], sections["mixing"])
    if "sweep" in data:
        sweep_entries(data["sweep"], data.get("train"), sections["mixing"])


def check_sections(train: "TrainParams", mixing: MixingParams, source: str = "train") -> None:
    """The checks that need two sections: the run's method settings against the ``mixing`` section.

    A method's settings section (``train.<method>``) may define ``check_mixing(mixing)``; only the
    section of ``train.method`` is checked (the others are not used by the run).

    Args:
        train: the ``train`` section.
        mixing: the ``mixing`` section.
        source: what ``train`` is, for messages (e.g. a sweep entry).

    Raises:
        ParamsError: naming the keys of both sections.
    """
    settings = train.settings
    if settings is not None and hasattr(settings, "check_mixing"):
        try:
            settings.check_mixing(mixing)
        except ParamsError as err:
            raise ParamsError(f"{err}" if source == "train" else f"{source}: {err}") from err


def section_from_mapping(cls: type[T], values: dict[str, Any], name: str) -> T:
    """Build a params dataclass from a mapping, rejecting unknown keys and wrong types.

    A field whose type is itself a params dataclass (a method's section of ``train``) is read from
    a nested mapping the same way. A key that moved (``cls.MOVED_KEYS``) is refused with its new name.

    Args:
        cls: the section's dataclass.
        values: the section's values (missing keys take the defaults).
        name: the section name, for messages.

    Returns:
        The validated section.
    """
    if not isinstance(values, dict):
        raise ParamsError(f"section '{name}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    moved = getattr(cls, "MOVED_KEYS", {})
    for key in unknown:
        if key in moved:
            section, _, leaf = moved[key].partition(".")
            raise ParamsError(
                f"key '{key}' of section '{name}' moved: it is now train.{moved[key]} "
                f"(write `{section}: {{{leaf}: {values[key]!r}}}` in the train section or sweep entry)"
            )
    if unknown:
        raise ParamsError(f"unknown key(s) in section '{name}': {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    coerced = {key: _coerce(value, hints[key], f"{name}.{key}") for key, value in values.items()}
    return cls(**coerced)


def merge_sections(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, nested mappings (a method's section) merged key by key.

    So ``{adaptive: {policy_objective: adversarial}}`` changes that key and keeps the section's others.
    """
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            merge_sections(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def load_section(cls: type[T], path: str | Path | None, name: str, **overrides: Any) -> T:
    """Load one stage's section of a params file, then apply non-None overrides (CLI options, a sweep entry).

    Args:
        cls: the section's dataclass.
        path: the params file, or None for the defaults.
        name: the section's name in the file.
        overrides: values that replace the file's (None means "not given"; a mapping for a nested
            section replaces only the keys it holds: :func:`merge_sections`).

    Returns:
        The validated section.
    """
    values = read_params_file(path).get(name) if path is not None else None
    section = section_from_mapping(cls, {} if values is None else values, name)
    given = {key: value for key, value in overrides.items() if value is not None}
    return section_from_mapping(cls, merge_sections(dataclasses.asdict(section), given), name) if given else section


def sweep_entries(
    values: Any, train: dict[str, Any] | None = None, mixing: MixingParams | None = None
) -> dict[str, dict[str, Any]]:
    """Check a ``sweep`` section: names usable in paths and wildcards, each entry valid train overrides.

    Args:
        values: the section (entry name -> mapping of ``train`` keys; a method's section is a nested
            mapping merged into the ``train`` section's: :func:`merge_sections`).
        train: the ``train`` section the overrides apply to (defaults when None).
        mixing: the ``mixing`` section, to check each entry against (:func:`check_sections`; None: not checked).

    Returns:
        The section, unchanged.
    """
    if not isinstance(values, dict) or not values:
        raise ParamsError(
            f"section 'sweep' must be a non-empty mapping of entry name -> train overrides, got {values!r}"
        )
    for name, overrides in values.items():
        if not isinstance(name, str) or not SWEEP_NAME.fullmatch(name):
            raise ParamsError(
                f"sweep entry name {name!r} must be lower-case letters, digits and _, starting with a letter"
            )
        if not isinstance(overrides, dict):
            raise ParamsError(f"sweep.{name} must be a mapping of train keys, got {overrides!r}")
        entry = section_from_mapping(TrainParams, merge_sections(train or {}, overrides), f"train (with sweep.{name})")
        if mixing is not None:
            check_sections(entry, mixing, f"sweep.{name}")
    return values


def load_sweep_entry(path: str | Path, name: str) -> dict[str, Any]:
    """The train overrides of one sweep entry of a params file (``fmix train --sweep NAME``).

    Args:
        path: the params file.
        name: the entry.

    Returns:
        The entry's ``train`` overrides.
    """
    data = read_params_file(path)
    entries = sweep_entries(data.get("sweep"), data.get("train"))
    if name not in entries:
        raise ParamsError(f"no sweep entry {name!r} in {path}; entries: {', '.join(entries)}")
    return entries[name]


def defaults_as_dict() -> dict[str, dict[str, Any]]:
    """Every section's defaults, as ``params.yaml`` should hold them."""
    return {name: plain_dict(dataclasses.asdict(cls())) for name, cls in SECTIONS.items()}


def plain_dict(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, as YAML holds them (nested mappings, a method's section, too)."""
    return {
        key: plain_dict(value) if isinstance(value, dict) else list(value) if isinstance(value, tuple) else value
        for key, value in values.items()
    }


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):  # a nested section (a method's settings under train)
        return value if isinstance(value, hint) else section_from_mapping(hint, value, key)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ParamsError(f"{key} must not be null")
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ParamsError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        if kind in (int, str, bool) and type(value) is kind:
            return value
    names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in allowed)
    raise ParamsError(f"{key} must be {names}, got {value!r}")
