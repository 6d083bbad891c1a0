"""Reconstruction attack: train an inversion network on public faces, invert protected samples (docs/design.md §5).

The attacker protects public faces on the fly with a *protector* (white-box: the real masker
and mixing; black-box: a surrogate; see :mod:`fmix.attacks.protectors`) and trains a U-Net
generator (:class:`~fmix.attacks.unet.UNetGenerator`) toward the face, or for a mix toward
its heaviest constituent. Loss: ``L1 + ssim_weight (1 - SSIM) + adv_weight * GAN`` with a
conditional PatchGAN (:class:`~fmix.attacks.patchgan.PatchDiscriminator`) switched on after
``adv_warmup`` steps (``adv_weight = 0`` disables it). Images are compared on the [0, 1] scale.
The faces are reconstructed by an exponential moving average of the generator's weights
(``ema_decay``): the last snapshot of a generator trained at a constant learning rate swings.

Example::

    attack = ReconstructionAttack(AttackConfig(seed=0)).fit(public_uint8, protector, seconds=90)
    recon = attack.invert(protected)                      # (B, 3, 112, 112) in [0, 255]
    scores = evaluate_reconstruction(recon, constituents, valid, mean_face)
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmix.attacks.patchgan import PatchDiscriminator
from fmix.attacks.protectors import ProtectedPairs, Protector
from fmix.attacks.unet import UNetGenerator
from fmix.checks import check_float, check_integer, check_tensor
from fmix.device import budget_clock, check_device_spec, resolve_device
from fmix.metrics.image import best_constituent_ssim, mix_floor, psnr, ssim_separable
from fmix.params import AttackParams
from fmix.progress import Heartbeat

GAN_LOSSES = ("lsgan", "bce")
CLOCKS = ("auto", "process", "wall")


@dataclass(frozen=True)
class AttackConfig:
    """Inversion network and its training.

    Args:
        width: generator width (:class:`UNetGenerator`; 48: about 1.3M parameters at 14x14).
        levels: generator U-Net levels (None: its default).
        skip_channels: generator block-skip channels.
        head_min: fewest channels of a generator upsampling stage.
        batch_size: public faces per step (default: the ``attack`` section's, :class:`~fmix.params.AttackParams`).
        lr: Adam learning rate of both networks.
        betas: Adam betas.
        ssim_weight: weight of the ``1 - SSIM`` loss term (0: off). On by default: S3 is an
            SSIM, and the term raises it at equal steps.
        adv_weight: weight of the generator's adversarial loss (0: no discriminator).
        adv_warmup: steps of reconstruction loss only before the adversarial game starts.
        gan_loss: ``"lsgan"`` (least squares) or ``"bce"``.
        disc_width: discriminator width.
        disc_layers: discriminator stride-2 layers.
        flip: random horizontal flips of the public faces.
        ema_decay: decay of the moving average of the generator's weights that inverts (0: the
            last snapshot, which swings at a constant learning rate). The decay ramps up as
            ``min(ema_decay, (1 + t) / (10 + t))`` at step t, so short runs are not held at the
            initial weights.
        seed: seeds initialisation, batches, flips and protection draws (default: the ``attack`` section's).
        clock: what ``seconds`` budgets count: ``"process"`` CPU time (fair on a shared
            machine), ``"wall"`` time, or ``"auto"``: CPU time on the CPU, wall time on CUDA
            (:func:`fmix.device.budget_clock`).
        device: where the networks train: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or
            ``cuda:N`` (:func:`fmix.device.resolve_device`, when the attack is built); protection
            runs on the CPU, as ``fmix mask`` does (default: the ``attack`` section's).

    The fields the ``attack`` section also holds take its defaults, so the two cannot disagree;
    :meth:`from_params` takes a section's values.
    """

    # Measured: the moving average against the last snapshot is in docs/attacks.md ("The moving average of
    # the inversion networks"); the SSIM term raised S3 by about 0.09 at equal steps on aligned LFW.

    width: int = 48
    levels: int | None = None
    skip_channels: int = 8
    head_min: int = 16
    batch_size: int = AttackParams.batch_size
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    ssim_weight: float = 1.0
    adv_weight: float = 0.01
    adv_warmup: int = 200
    gan_loss: str = "lsgan"
    disc_width: int = 16
    disc_layers: int = 3
    flip: bool = True
    ema_decay: float = 0.99
    seed: int = AttackParams.seed
    clock: str = "auto"
    device: str = AttackParams.device

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"Expected batch_size >= 2 (mixing needs partners), got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"Expected lr > 0, got {self.lr}")
        if self.ssim_weight < 0 or self.adv_weight < 0 or self.adv_warmup < 0:
            raise ValueError("Expected ssim_weight, adv_weight and adv_warmup >= 0")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"Expected gan_loss in {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"Expected clock in {CLOCKS}, got {self.clock!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Expected ema_decay in [0, 1), got {self.ema_decay}")
        check_device_spec(self.device, "device")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_params(cls, params: AttackParams, **overrides) -> "AttackConfig":
        """The network settings of the ``attack`` section: its batch size, seed and device, defaults for the rest.

        Args:
            params: the ``attack`` section.
            overrides: further fields to set (e.g. ``clock``).
        """
        return cls(**{"batch_size": params.batch_size, "seed": params.seed, "device": params.device, **overrides})


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    previous, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # CUDA ops without a deterministic kernel warn
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn)


def _faces_tensor(faces: object) -> Tensor:
    """(N, H, W, 3) uint8 array or (N, 3, H, W) tensor -> (N, 3, H, W) tensor (uint8 kept compact)."""
    if isinstance(faces, np.ndarray):
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 array of shape (N, H, W, 3), got {faces.dtype} {faces.shape}")
        return torch.from_numpy(faces).permute(0, 3, 1, 2).contiguous()
    faces = check_tensor(faces, "faces")
    if faces.dim() != 4 or faces.shape[1] != 3:
        raise ValueError(f"Expected faces of shape (N, 3, H, W), got {tuple(faces.shape)}")
    return faces


def _gan_loss(kind: str, logits: Tensor, real: bool) -> Tensor:
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


class ReconstructionAttack:
    """A trainable inversion attack.

    Args:
        config: network and training settings.

    Attributes:
        generator: the inversion network being trained (after :meth:`fit`).
        averaged: the moving average of its weights (``config.ema_decay``), which inverts; the
            generator itself with ``ema_decay = 0``.
        discriminator: the PatchGAN (None with ``adv_weight = 0``).
        history: one dict per step: ``step``, ``l1``, ``ssim_loss``, ``adv`` (generator),
            ``disc`` (discriminator), ``seconds`` (budget clock since the start).
    """

    def __init__(self, config: AttackConfig | None = None) -> None:
        self.config = config or AttackConfig()
        self.device = resolve_device(self.config.device)
        self.clock = budget_clock(self.device) if self.config.clock == "auto" else self.config.clock
        self.generator: UNetGenerator | None = None
        self.averaged: UNetGenerator | None = None
        self.discriminator: PatchDiscriminator | None = None
        self.history: list[dict] = []
        self.shape: tuple[int, int, int] | None = None  # (input channels, input side, output side)

    def _clock(self) -> float:
        return time.process_time() if self.clock == "process" else time.perf_counter()

    def _build(self, probe: Tensor, out_size: int) -> None:
        c = self.config
        _, channels, side, _ = probe.shape
        self.shape = (channels, side, out_size)
        self.generator = UNetGenerator(channels, side, out_size, c.width, c.levels, c.skip_channels, c.head_min).to(
            self.device
        )
        self.averaged = copy.deepcopy(self.generator).requires_grad_(False) if c.ema_decay > 0 else self.generator
        if c.adv_weight > 0:
            self.discriminator = PatchDiscriminator(channels, c.disc_width, c.disc_layers).to(self.device)

    def _batches(self, count: int, generator: torch.Generator) -> Iterator[Tensor]:
        size = self.config.batch_size
        while True:
            order = torch.randperm(count, generator=generator)
            for start in range(0, count - size + 1, size):
                yield order[start : start + size]

    def fit(
        self,
        faces: np.ndarray | Tensor,
        protector: Protector,
        labels: Tensor | None = None,
        steps: int | None = None,
        seconds: float | None = None,
        on_step: Callable[[int, ReconstructionAttack], None] | None = None,
    ) -> ReconstructionAttack:
        """Train on public faces, protecting each batch on the fly.

        Training stops at ``steps`` steps or after ``seconds`` of the configured clock,
        whichever comes first. With a step budget the run is deterministic given the seed (same
        loss history on the same machine and thread count); with a time budget only its length
        varies. Calling ``fit`` again trains the same networks further.

        Args:
            faces: the attacker's public faces: (N, H, W, 3) uint8 array, or (N, 3, H, W) tensor
                in [0, 255].
            protector: ``(images, labels, generator) -> ProtectedPairs``
                (:mod:`fmix.attacks.protectors`).
            labels: identity label of every face (default: all distinct), for mixing partners.
            steps: largest number of steps.
            seconds: time budget.
            on_step: called with the step's index and the attack after every step (e.g. to score
                snapshots, ``experiments/attack_snapshots.py``); its time is not budgeted.

        Returns:
            ``self``, trained.
        """
        if steps is None and seconds is None:
            raise ValueError("Give a budget: steps, seconds or both")
        if (steps is not None and steps < 1) or (seconds is not None and seconds <= 0):
            raise ValueError(f"Expected steps >= 1 and seconds > 0, got steps={steps}, seconds={seconds}")
        data = _faces_tensor(faces)
        count, c = data.shape[0], self.config
        if count < c.batch_size:
            raise ValueError(f"Expected at least batch_size={c.batch_size} faces, got {count}")
        if labels is None:
            labels = torch.arange(count)
        labels = check_tensor(labels, "labels")
        check_integer(labels, "labels")
        if labels.shape != (count,):
            raise ValueError(f"Expected labels of shape ({count},), got {tuple(labels.shape)}")

        rng = torch.Generator().manual_seed(c.seed)
        self.history = []
        with _deterministic(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            batches = self._batches(count, rng)
            start = self._clock()
            step = 0
            beat = Heartbeat("attack reconstruction", total=steps, budget_s=seconds, clock=self._clock)
            while (steps is None or step < steps) and (seconds is None or self._clock() - start < seconds):
                index = next(batches)
                images = data[index].float()
                if c.flip:
                    flipped = torch.rand(len(index), generator=rng) < 0.5
                    images = torch.where(flipped[:, None, None, None], images.flip(-1), images)
                pairs = protector(images, labels[index], rng)
                if self.generator is None:
                    self._build(pairs.x, images.shape[-1])
                    self._optimisers()
                target = images[pairs.heaviest()].to(self.device)
                pairs = pairs._replace(x=pairs.x.to(self.device))
                self.history.append(self._step(step, pairs, target) | {"seconds": self._clock() - start})
                beat(step + 1, l1=self.history[-1]["l1"])
                self._average(step)
                if on_step is not None:
                    paused = self._clock()
                    on_step(step, self)
                    start += self._clock() - paused
                step += 1
        self.generator.eval()
        return self

    @torch.no_grad()
    def _average(self, step: int) -> None:
        if self.averaged is self.generator:
            return
        decay = min(self.config.ema_decay, (1 + step) / (10 + step))
        for average, weight in zip(self.averaged.parameters(), self.generator.parameters()):
            average.lerp_(weight, 1.0 - decay)
        for average, buffer in zip(self.averaged.buffers(), self.generator.buffers()):
            average.copy_(buffer)  # batch-norm statistics are running averages already

    def _optimisers(self) -> None:
        c = self.config
        self._opt_g = torch.optim.Adam(self.generator.parameters(), lr=c.lr, betas=c.betas)
        self._opt_d = None
        if self.discriminator is not None:
            self._opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=c.lr, betas=c.betas)

    def _step(self, step: int, pairs: ProtectedPairs, target: Tensor) -> dict:
        c, g, d = self.config, self.generator, self.discriminator
        g.train()
        recon = g(pairs.x)
        l1 = (recon - target).abs().mean() / 255.0
        loss, log = l1, {"step": step, "l1": l1.item(), "ssim_loss": 0.0, "adv": 0.0, "disc": 0.0}
        if c.ssim_weight > 0:
            ssim_loss = 1.0 - ssim_separable(recon, target).mean()
            loss = loss + c.ssim_weight * ssim_loss
            log["ssim_loss"] = ssim_loss.item()
        adversarial = d is not None and step >= c.adv_warmup
        if adversarial:
            adv = _gan_loss(c.gan_loss, d(pairs.x, recon), real=True)
            loss = loss + c.adv_weight * adv
            log["adv"] = adv.item()
        self._opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._opt_g.step()
        if adversarial:
            disc = 0.5 * (
                _gan_loss(c.gan_loss, d(pairs.x, target), True)
                + _gan_loss(c.gan_loss, d(pairs.x, recon.detach()), False)
            )
            self._opt_d.zero_grad(set_to_none=True)
            disc.backward()
            self._opt_d.step()
            log["disc"] = disc.item()
        return log

    def state_dict(self) -> dict:
        """The trained networks, their shape and settings, for :meth:`from_state` (e.g. a shared prior).

        Raises:
            RuntimeError: the attack is not trained.
        """
        if self.generator is None:
            raise RuntimeError("The attack is not trained: call fit() first")
        return {
            "config": self.config.to_dict(),
            "shape": list(self.shape),
            "steps": len(self.history),
            "generator": self.generator.state_dict(),
            "averaged": self.averaged.state_dict(),
            "discriminator": None if self.discriminator is None else self.discriminator.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict, config: AttackConfig | None = None) -> "ReconstructionAttack":
        """An attack with the networks of :meth:`state_dict`; :meth:`fit` trains them further (fresh optimisers).

        Args:
            state: :meth:`state_dict` of a trained attack.
            config: the settings to continue with (default: the state's own). Only ``device`` and
                ``clock`` may differ from the state's: the rest made the networks.

        Raises:
            ValueError: ``config`` differs from the state's in another field (the fields are named).
        """
        saved = AttackConfig(**{**state["config"], "betas": tuple(state["config"]["betas"])})
        config = config or saved
        differ = [k for k, v in saved.to_dict().items() if k not in ("device", "clock") and config.to_dict()[k] != v]
        if differ:
            raise ValueError(f"the attack's settings differ from the saved networks' in {differ}")
        attack = cls(config)
        channels, side, out_size = state["shape"]
        attack._build(torch.zeros(1, channels, side, side), out_size)
        attack.generator.load_state_dict(state["generator"])
        if attack.averaged is not attack.generator:
            attack.averaged.load_state_dict(state["averaged"])
        if attack.discriminator is not None:
            attack.discriminator.load_state_dict(state["discriminator"])
        attack._optimisers()
        attack.generator.eval()
        return attack

    def invert(self, protected: Tensor, batch_size: int = 64) -> Tensor:
        """Reconstruct faces from protected samples with the averaged generator (:func:`invert`)."""
        if self.generator is None:
            raise RuntimeError("The attack is not trained: call fit() first")
        return invert(self.averaged, protected, batch_size)


def fit_inverter(
    config: AttackConfig, images: Tensor, protector: Protector, labels: Tensor, steps: int | None, seconds: float | None
) -> tuple[ReconstructionAttack, dict]:
    """A new attack fitted on ``images`` (the attacker's faces) through ``protector``, and what it took.

    Args:
        config: the inversion network's settings.
        images: :math:`(N, 3, H, W)` faces in [0, 255].
        protector: how the faces are protected before inversion.
        labels: their identities, :math:`(N,)`.
        steps: the step budget (None: only ``seconds``).
        seconds: the budget's cap in the attack's clock (None: only ``steps``).

    Returns:
        ``(attack, {"steps", "cpu_seconds"})``: the steps taken and the process's CPU seconds.
    """
    start = time.process_time()
    attack = ReconstructionAttack(config).fit(images, protector, labels=labels, steps=steps, seconds=seconds)
    return attack, {"steps": len(attack.history), "cpu_seconds": time.process_time() - start}


@torch.no_grad()
def invert(generator: nn.Module, protected: Tensor, batch_size: int = 64) -> Tensor:
    """Run an inversion network over protected samples in eval mode, batch by batch.

    Args:
        generator: e.g. a trained :class:`UNetGenerator`.
        protected: protected samples, as the generator was trained on.
        batch_size: samples per forward pass.

    Shape:
        - protected: :math:`(B, K, h, w)`.
        - Output: :math:`(B, 3, H, W)` in [0, 255].

    Returns:
        The reconstructions, float32, on the CPU (the batches run on the generator's device).
    """
    protected = check_tensor(protected, "protected")
    check_float(protected, "protected")
    if protected.dim() != 4:
        raise ValueError(f"Expected protected of shape (B, K, h, w), got {tuple(protected.shape)}")
    was_training = generator.training
    generator.eval()
    try:
        device = next(generator.parameters()).device
        parts = [
            generator(protected[i : i + batch_size].to(device).float()).cpu()
            for i in range(0, protected.shape[0], batch_size)
        ]
    finally:
        generator.train(was_training)
    if not parts:
        raise ValueError("Expected at least one protected sample, got 0")
    return torch.cat(parts)


def constituents_of(images: Tensor, pairs: ProtectedPairs) -> tuple[Tensor, Tensor]:
    """The faces each protected sample was made of, for scoring (the evaluator knows them).

    Shape:
        - images: :math:`(B, 3, H, W)`, the batch given to the protector.
        - Output: constituents :math:`(B, k_{max}, 3, H, W)`; valid :math:`(B, k_{max})` bool.

    Returns:
        ``(constituents, valid)``, valid where the weight is positive.
    """
    return images[pairs.partners], pairs.weights > 0


@dataclass
class ReconstructionScores:
    """Per-sample attack scores (docs/design.md §6): S3 and PSNR against the best constituent, and the floor.

    Attributes:
        ssim: best-constituent SSIM (S3 per sample), :math:`(B,)`.
        best_index: the constituent column that matched best, :math:`(B,)`.
        psnr: PSNR against that constituent, :math:`(B,)`.
        floor: the free floor of each sample (mean face, best constituent), or None.
    """

    ssim: Tensor
    best_index: Tensor
    psnr: Tensor
    floor: Tensor | None

    def summary(self) -> dict:
        """Means: ``S3``, ``psnr`` (infinite values excluded), ``floor`` and ``S3 - floor``."""
        finite = self.psnr[torch.isfinite(self.psnr)]
        out = {
            "S3": self.ssim.mean().item(),
            "psnr": finite.mean().item() if finite.numel() else float("inf"),
            "n": self.ssim.numel(),
        }
        if self.floor is not None:
            out |= {"floor": self.floor.mean().item(), "S3_minus_floor": (self.ssim - self.floor).mean().item()}
        return out


def evaluate_reconstruction(
    recon: Tensor,
    originals: Tensor,
    valid: Tensor | None = None,
    mean_face: Tensor | None = None,
    floor: Tensor | None = None,
) -> ReconstructionScores:
    """Score reconstructions against the originals, or against the best constituent of each mix.

    Args:
        recon: reconstructions.
        originals: the original faces :math:`(B, 3, H, W)`, or the constituents of each sample
            :math:`(B, k_{max}, 3, H, W)` (then ``valid`` is required).
        valid: which constituents exist, :math:`(B, k_{max})` bool.
        mean_face: the mean public face :math:`(3, H, W)`, for the free floor.
        floor: the free floor of each sample :math:`(B,)`, when an earlier call's scores hold it
            (several attacks on the same samples); then ``mean_face`` is not used.

    Returns:
        The per-sample scores.
    """
    recon = check_tensor(recon, "recon")
    originals = check_tensor(originals, "originals")
    if originals.dim() == 4:
        if valid is not None:
            raise ValueError("valid is only used with constituents of shape (B, k_max, 3, H, W)")
        originals, valid = originals[:, None], torch.ones(originals.shape[0], 1, dtype=torch.bool)
    elif valid is None:
        raise ValueError("Constituents of shape (B, k_max, 3, H, W) need valid")
    best, index = best_constituent_ssim(recon, originals, valid)
    matched = originals[torch.arange(originals.shape[0]), index]
    if floor is None and mean_face is not None:
        floor = mix_floor(mean_face, originals, valid)
    elif floor is not None and floor.shape != best.shape:
        raise ValueError(f"Expected floor of shape {tuple(best.shape)}, got {tuple(floor.shape)}")
    return ReconstructionScores(best, index, psnr(recon.float(), matched.float()), floor)


__all__ = [
    "AttackConfig",
    "ReconstructionAttack",
    "ReconstructionScores",
    "constituents_of",
    "evaluate_reconstruction",
    "invert",
]
