"""The trainer: one FR step, the policy's turn, the end of an epoch, checkpoints and the saved model.

:func:`fmix.train.loop.train` sets the run up and drives the epochs; everything a step does is
here, and everything that differs between methods comes from the method's hooks
(:class:`fmix.methods.base.Method`), which see the run through a :class:`~fmix.methods.base.RunContext` only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fmix.data.faces import FaceSet
from fmix.data.sources import WORKER_CONTEXT, FaceBatch, FaceSource, collate_faces
from fmix.evaluate.closed_set import closed_set_accuracy
from fmix.masker.protection import Protection
from fmix.methods.base import Method, RunContext
from fmix.metrics.policy import k_histogram, mutual_information
from fmix.models.artifact import ModelRecord
from fmix.models.encoders import encoder_spec
from fmix.models.frnet import FRNet
from fmix.params import MixingParams, TrainParams, plain_dict
from fmix.train.checkpoint import restore_rng_state, rng_state, save_checkpoint
from fmix.train.data import batch_indices, epoch_order


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to 0 or steps of x0.1 at 60% and 85% of training."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return 0.1 ** sum(step >= total * mark for mark in (0.6, 0.85))


@dataclass
class EpochStats:
    """What one epoch accumulates (checkpointed as a plain dict, so a resumed epoch continues it)."""

    loss: float = 0.0
    fr_steps: int = 0
    fr_seconds: float = 0.0
    policy_steps: int = 0
    policy_seconds: float = 0.0
    reward: float = 0.0
    entropy: float = 0.0
    k: dict[int, int] = field(default_factory=dict)  # k -> samples mixed with it
    k_by_difficulty: list[list[int]] | None = None  # difficulty quartile x k counts (the method's turns)

    def count_k(self, ks: Tensor) -> None:
        """Add the k of each sample of a mixed step."""
        for k_value, count in Counter(ks.tolist()).items():
            self.k[k_value] = self.k.get(k_value, 0) + count

    def add_policy_step(self, step: dict) -> None:
        """Add the statistics of one step of the method's turn (:meth:`fmix.methods.base.Method.take_turn`)."""
        self.reward += step["reward"]
        self.entropy += step["entropy"]
        table = step["k_by_difficulty"]
        self.k_by_difficulty = (
            table
            if self.k_by_difficulty is None
            else [[a + b for a, b in zip(x, y)] for x, y in zip(self.k_by_difficulty, table)]
        )

    def to_state(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "EpochStats":
        return cls(**{**state, "k": {int(k): int(n) for k, n in state["k"].items()}})

    def row(self, epoch: int, val_accuracy: float, lr: float, k_values: tuple[int, ...], turns: dict | None) -> dict:
        """The epoch's line of ``train_log.jsonl`` (``k_values``: the histogram's columns; ``turns``: the
        fields of a method that takes turns, :meth:`fmix.methods.base.Method.end_epoch`, or None)."""
        fr, pi = max(1, self.fr_steps), self.policy_steps
        row = {
            "epoch": epoch,
            "loss": self.loss / fr,
            "val_accuracy": val_accuracy,
            "lr": lr,
            "fr_steps": self.fr_steps,
            "seconds_per_fr_step": self.fr_seconds / fr,
        }
        if self.k:
            row["k_histogram"] = k_histogram(self.k, k_values)
            row["mean_k"] = sum(k * n for k, n in self.k.items()) / sum(self.k.values())
        if turns is not None:
            row.update(
                policy_steps=pi,
                seconds_per_policy_step=self.policy_seconds / pi if pi else None,
                policy_overhead=self.policy_seconds / self.fr_seconds if self.fr_seconds else None,
                mean_reward=self.reward / pi if pi else None,
                entropy=self.entropy / pi if pi else None,
                **turns,
            )
            if self.k_by_difficulty:
                # Rows: quartiles of the un-mixed loss (easiest first); columns: k. The MI shows per-sample choice.
                row["k_by_difficulty"] = self.k_by_difficulty
                row["k_difficulty_mutual_information"] = mutual_information(self.k_by_difficulty)
        return row


@dataclass
class TrainState:
    """Where a run is: epoch, batch within it, global step, the finished epochs' rows, this epoch's stats."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    stats: EpochStats = field(default_factory=EpochStats)

    def to_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "history": self.history,
            "epoch_stats": self.stats.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "TrainState":
        return cls(
            state["epoch"], state["batch"], state["step"], state["history"], EpochStats.from_state(state["epoch_stats"])
        )


# train keys that change how the faces are read, not which faces a step sees: a run may resume under others.
HOW_FACES_ARE_READ = ("source", "workers")


def _random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


class Trainer:
    """Trains an FR network with one method; the pieces of a run, each a method.

    Args:
        params: the ``train`` parameters.
        method: the run's protection method (its own object: :func:`fmix.methods.build_method`).
        mixing: the ``mixing`` section (the method may change it: :meth:`~fmix.methods.base.Method.mixing`).
        encoder: images -> network inputs (the method's).
        net: the FR network.
        train_set: the private training faces (a face source: in memory or streamed, ``train.source``).
        device: where training runs.
        rank: this process's rank.
        world: number of processes (DDP when more than one).
    """

    def __init__(
        self,
        params: TrainParams,
        method: Method,
        mixing: MixingParams,
        encoder: nn.Module,
        net: FRNet,
        train_set: FaceSource,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.params, self.method, self.encoder, self.net = params, method, encoder, net
        self.num_classes = net.head.num_classes
        self.mixing = method.mixing(mixing)
        method.check(self.mixing, world)
        self.protection = method.build_protection(self.mixing)
        if self.protection is not None and method.sign_invariant(self.mixing):
            # The network reads |x|, which the sign mask leaves bit for bit (with mixing.noise n drawn after it,
            # |s x + n| = |x + s n| has the law of |x + n|, n being symmetric): drawing it costs time only.
            self.protection = Protection(
                self.protection.graph,
                dataclasses.replace(self.protection.mixing, sign_flip=False),
                self.protection.k_values,
            )
        self.train_set, self.device, self.rank, self.world = train_set, device, rank, world
        model: nn.Module = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
        trained = list(net.parameters()) + (list(encoder.parameters()) if method.trainable_encoder else [])
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            trained, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
        self.steps_per_epoch = len(self.batches(0))
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_set)} training faces make no full batch of {params.batch_size} per process")
        self.total_steps = params.epochs * self.steps_per_epoch
        warmup = int(params.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, self.total_steps, warmup, params.schedule)
        )
        self.generator = torch.Generator().manual_seed(params.seed * 7919 + rank)
        self.amp = params.amp and device.type == "cuda"
        self.state = TrainState()
        self.game_on = False  # whether the method's turn was on in the last FR step
        self.ctx = RunContext(
            params,
            self.mixing,
            self.protection,
            encoder,
            net,
            model,
            optimizer,
            train_set,
            self.generator,
            device,
            world,
            0,
            self.total_steps,
        )
        method.setup(self.ctx)
        self.model, self.optimizer = self.ctx.model, self.ctx.optimizer  # the method may have wrapped them

    @property
    def context(self) -> RunContext:
        """What the method's hooks see, its step counter current."""
        self.ctx.step = self.state.step
        return self.ctx

    # ------------------------------------------------------------------ schedule
    def batches(self, epoch: int) -> list[Tensor]:
        """This rank's full batches of ``epoch`` (a function of the seed and the epoch only)."""
        return batch_indices(
            epoch_order(len(self.train_set), epoch, self.params.seed), self.params.batch_size, self.rank, self.world
        )

    def loader(self, epoch: int, start: int = 0) -> DataLoader:
        """The faces of ``epoch``'s batches from batch ``start`` on (:meth:`batches`' order), read by ``train.workers``
        loader processes for a streamed source (the in-memory one batches by one indexing in this process)."""
        order = [batch.tolist() for batch in self.batches(epoch)[start:]]
        workers = self.params.workers if self.train_set.kind != "memory" else 0
        return DataLoader(
            self.train_set,
            batch_sampler=order,
            num_workers=workers,
            collate_fn=collate_faces,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            multiprocessing_context=WORKER_CONTEXT if workers else None,
        )

    @property
    def progress(self) -> float:
        """Training progress in [0, 1): steps done over all steps."""
        return self.state.step / self.total_steps

    def position(self, epoch: int, number: int) -> float:
        """Where batch ``number`` of ``epoch`` lies, in epochs."""
        return epoch + number / self.steps_per_epoch

    def mixing_at(self, position: float) -> bool:
        """Whether the method mixes at ``position`` (after the un-mixed curriculum, ``train.mix_warmup_fraction``)."""
        return self.method.mixes and position >= self.params.mix_warmup_fraction * self.params.epochs

    def game_on_at(self, position: float) -> bool:
        """Whether the method's turn is on at ``position`` (mixing, and the method's own start: :meth:`~fmix.methods.base.Method.plays_at`)."""
        return self.mixing_at(position) and self.method.plays_at(position)

    # ------------------------------------------------------------------ steps
    def fr_loss(self, x: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
        """Per-sample loss of the (possibly wrapped) network, in bf16 autocast on CUDA with ``train.amp``."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(x, labels, weights)

    def fr_step(self, batch: FaceBatch, epoch: int, number: int) -> tuple[Tensor, Tensor]:
        """One FR step on a batch of faces: encode, maybe mix, one optimiser step.

        Args:
            batch: the batch's faces and labels (:meth:`loader`).
            epoch: the current epoch.
            number: the batch's number within the epoch.

        Returns:
            The encoded un-mixed batch and its labels (the method's turn plays on them).
        """
        params, stats = self.params, self.state.stats
        start = time.perf_counter()
        images = batch.float_images().to(self.device, non_blocking=True)
        if params.flip:
            images = _random_flip(images, self.generator)
        labels = batch.labels.to(self.device, non_blocking=True)
        with torch.set_grad_enabled(self.method.trainable_encoder):
            x = self.encoder(images)
        position = self.position(epoch, number)
        mixing = self.mixing_at(position)
        self.game_on = self.game_on_at(position)
        if mixing:
            ctx = self.context
            k = self.method.choose_k(ctx, x, self.game_on)
            mixed = self.method.mix(ctx, x, labels, k)
            loss = self.fr_loss(mixed.x, labels[mixed.partners], mixed.weights).mean()
            stats.count_k(mixed.k)
        else:
            shown = self.protection.permute(x, self.generator) if self.protection is not None else x
            loss = self.fr_loss(shown, labels, None).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]], params.clip_grad
        )
        self.optimizer.step()
        self.scheduler.step()
        stats.fr_steps += 1
        stats.fr_seconds += time.perf_counter() - start
        stats.loss += loss.item()
        return x.detach(), labels

    def policy_due(self) -> bool:
        """Whether the method takes its turn after the step just done (once its turn is on)."""
        return self.game_on and self.method.turn_due(self.context)

    def policy_turn(self, x: Tensor, labels: Tensor) -> None:
        """The method's turn on the same batch (the adaptive game: REINFORCE steps, FR frozen), timed."""
        stats, start = self.state.stats, time.perf_counter()
        steps = self.method.take_turn(self.context, x, labels)
        for step in steps:
            stats.add_policy_step(step)
        stats.policy_steps += len(steps)
        stats.policy_seconds += time.perf_counter() - start

    def end_epoch(self, epoch: int, val_set: FaceSet) -> dict:
        """Validation accuracy, the method's end of epoch (the game's dual step), the epoch's log row; the next epoch starts."""
        val_accuracy = closed_set_accuracy(self.encoder, self.net, val_set, self.device)
        turns = None
        if self.method.learns_policy:
            played = self.game_on_at(self.position(epoch, self.steps_per_epoch - 1))  # as at the epoch's last step
            turns = self.method.end_epoch(self.context, val_accuracy, played)
        k_values = self.protection.k_values if self.protection is not None else self.mixing.k_values
        row = self.state.stats.row(epoch, val_accuracy, self.scheduler.get_last_lr()[0], k_values, turns)
        self.state.history.append(row)
        self.state = TrainState(epoch + 1, 0, self.state.step, self.state.history)
        return row

    def network_changed(self) -> None:
        """The FR network changed after training (batch norm re-estimated): the method updates what depends on it."""
        played = self.game_on_at(self.position(self.params.epochs - 1, self.steps_per_epoch - 1))
        self.method.network_changed(self.context, played)

    # ------------------------------------------------------------------ checkpoints
    def settings(self) -> dict:
        """The parameters a resumed run must share: the ``train`` section (but how faces are read) and the method's mixing."""
        train = {key: value for key, value in dataclasses.asdict(self.params).items() if key not in HOW_FACES_ARE_READ}
        return {**plain_dict(train), "mixing": plain_dict(dataclasses.asdict(self.mixing))}

    def checkpoint_state(self) -> dict:
        """Everything needed to resume (tensors and plain containers)."""
        return {
            **self.state.to_state(),
            "params": self.settings(),
            "net": self.net.state_dict(),
            "encoder": self.encoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "rng": rng_state(self.generator),
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write the checkpoint (rank 0 only)."""
        if self.rank == 0:
            save_checkpoint(self.checkpoint_state(), path)

    def restore(self, saved: dict, path: Path) -> None:
        """Continue from a checkpoint written with the same parameters.

        Raises:
            ValueError: the checkpoint was written with other ``train`` parameters.
        """
        if saved["params"] != self.settings():
            raise ValueError(f"{path} was written with other train parameters; use another folder or drop --resume")
        self.net.load_state_dict(saved["net"])
        self.encoder.load_state_dict(saved["encoder"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.method.load_state_dict(saved["method"])
        restore_rng_state(saved["rng"], self.generator)
        self.state = TrainState.from_state(saved)

    def model_record(self, num_classes: int) -> ModelRecord:
        """The trained model as ``model.pt`` holds it (the encoder's spec as it is now: learned parts included)."""
        return ModelRecord(
            params=self.params,
            encoder=encoder_spec(self.method.name, self.encoder),
            backbone=self.net.backbone.state_dict(),
            head=self.net.head.state_dict(),
            policy=self.method.policy_state(),
            num_classes=num_classes,
            input_shape=(self.encoder.channels, self.encoder.size),
            mixing=self.mixing,
            privacy=self.method.privacy(self.context),
            net_fix=self.method.net_fix,
            sign_invariant=self.method.sign_invariant(self.mixing),
        )
