"""``fmix train --release``: the FR network trained on a release of ``fmix mask``, with its published soft labels.

A release (:mod:`fmix.release.folder`) is what leaves the data owner: protected samples (the
masker's channels of k faces, mixed) and, per sample, the labels of its constituents with their
weights, rounded as published. Training reads it through :class:`fmix.release.source.ReleaseSource`
(streamed, per-rank shares under DDP) and minimises, per sample,

    sum_i w_i CE(margin_logits(f(x), y_i), y_i)

on the published (rounded) weights as they are: no renormalisation (a rounded row sums to
``1 +- k * 0.005``), padding columns (label -1, weight 0) contribute nothing. The samples are not
re-encoded, flipped or mixed again: they are the network's inputs.

The masker that made the release (``--masker``, checked against ``run.json``'s SHA-256) gives
what the saved ``model.pt`` needs to embed un-mixed faces at evaluation: its frequency transform
(kept channels, statistics, upsampling) as the model's encoder, and whether the network reads
``|x|`` (a mixed release under the masker's sign mask; a masked-only release carries no sign mask).
The release holds no un-mixed faces: there is no validation during training, and the batch-norm
statistics are those of the released mixes (their noise included), not of the un-mixed faces the
model embeds at evaluation. ``--calibrate DIR`` re-estimates them after training on un-mixed faces
of an aligned folder the trainer holds (public faces of other people, masked by the model's
encoder; docs/results/2026-12-05-release-noise.md). Evaluate the model with ``fmix evaluate`` on
held-out pairs (masked with the same transform by the model's encoder). Its labels are the release's (a random numbering of the
identities), so ``model.pt`` records the release and ``fmix evaluate`` reports no closed-set accuracy.

``--init MODEL`` starts the backbone from another ``model.pt`` of the same masking (a warm start):
say, one the third party trained with ``fmix train`` on public faces of its own under the
release's masker. The head starts fresh (the release's labels are other people).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from fmix.data.sources import FolderSource, SoftLabelBatch, epoch_batches, face_loader
from fmix.device import rank_device
from fmix.io import write_json_atomic
from fmix.models.artifact import ModelRecord
from fmix.models.encoders import FrequencyEncoder, encoder_spec
from fmix.models.frnet import FRNet, build_net
from fmix.models.heads import margin_loss
from fmix.params import MixingParams, MixupParams, TrainParams, plain_dict
from fmix.progress import Heartbeat
from fmix.release.source import ReleaseSource
from fmix.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from fmix.train.trainer import HOW_FACES_ARE_READ, TrainState, lr_factor

# The method a release-trained model is recorded under: masked faces mixed k at a time by the masker.
RELEASE_METHOD = "mixup"
# Published weights are rounded to 2 decimals (fmix.release.protect.WEIGHT_DECIMALS): a row sums to 1 within k * 0.005.
ROUNDING_SLACK = 0.005


@dataclasses.dataclass
class ReleaseInputs:
    """A release opened for training, with the masker that made it.

    Attributes:
        source: the release's samples and soft labels.
        encoder: the masker's frequency transform (the model's encoder at evaluation).
        sign_invariant: the network reads ``|x|`` (a mixed release under the masker's sign mask).
        mixing: the masker's mixing.
        masker_sha256: SHA-256 of the masker file.
        fixed_k: the masker policy's fixed k (None for a strategy network).
    """

    source: ReleaseSource
    encoder: FrequencyEncoder
    sign_invariant: bool
    mixing: MixingParams
    masker_sha256: str
    fixed_k: int | None

    @property
    def release_id(self) -> str:
        return self.source.run["release"]

    def record(self) -> dict:
        """What ``model.pt`` and the summary say about the release."""
        return {
            "release": self.release_id,
            "samples": len(self.source),
            "faces": int((self.source.labels >= 0).sum()),
            "labels": self.source.num_classes,
            "mixed": bool(self.source.run["mix"]),
            "masker_sha256": self.masker_sha256,
        }


def open_release(release: str | Path, masker: str | Path, k_max: int | None = None) -> ReleaseInputs:
    """Open a release and check it against the masker that made it.

    Args:
        release: the release folder of ``fmix mask``.
        masker: the ``masker.onnx`` that protected it.
        k_max: columns of the soft labels (default: the release's largest k).

    Raises:
        FileNotFoundError: a missing folder or file.
        ValueError: the masker is not the one of ``run.json`` (SHA-256), its metadata is invalid, the
            samples do not have its shape, or a sample's weights do not sum to 1 within their rounding.
    """
    from fmix.masker.build import masker_from_metadata, read_masker_metadata
    from fmix.masker.metadata import validate_masker_metadata

    source = ReleaseSource(release, k_max)
    masker = Path(masker)
    if not masker.is_file():
        raise FileNotFoundError(f"masker not found: {masker} (give the masker.onnx that made the release)")
    digest = hashlib.sha256(masker.read_bytes()).hexdigest()
    recorded = source.run.get("masker_sha256")
    if recorded != digest:
        raise ValueError(
            f"{masker} is not the masker that made {release} (run.json records masker_sha256 {recorded}, the file has {digest}): give the release's masker"
        )
    metadata = read_masker_metadata(masker)
    settings = validate_masker_metadata(metadata, str(masker))
    encoder = FrequencyEncoder(masker_from_metadata(metadata).transform, settings["input_size"])
    expected = (encoder.channels, encoder.size, encoder.size)
    if tuple(source.sample_shape) != expected:
        raise ValueError(
            f"{release} holds samples of shape {tuple(source.sample_shape)}, its masker {masker} makes {expected}"
        )
    config = settings["mixing"]
    mixed = bool(source.run["mix"])
    released = source.summary().get("released_mixing")
    if mixed and released is not None and bool(released.get("sign_flip")) != bool(config.sign_flip):
        raise ValueError(
            f"{release}/summary.json says sign_flip={released.get('sign_flip')}, its masker's metadata sign_flip={config.sign_flip}"
        )
    sums = source.weights.sum(dim=1)
    sizes = (source.labels >= 0).sum(dim=1)
    off = ((sums - 1).abs() > sizes * ROUNDING_SLACK + 1e-6).nonzero().flatten()
    if off.numel():
        row = int(off[0])
        raise ValueError(
            f"{release}/index.csv: sample {source.names[row]} has weights summing to {float(sums[row]):.4f}, not 1 within their rounding: not soft labels"
        )
    mixing = MixingParams(
        k_values=tuple(settings["k_values"]),
        weight_law=config.weight_law,
        cap=config.cap,
        sign_flip=config.sign_flip,
        permute_channels=config.permute_channels,
        rescale=config.rescale,
        noise=config.noise,
    )
    kind, _, value = settings["policy"].partition(":")
    return ReleaseInputs(
        source, encoder, mixed and bool(config.sign_flip), mixing, digest, int(value) if kind == "fixed" else None
    )


def check_init_model(record: ModelRecord, inputs: ReleaseInputs, path: str | Path) -> None:
    """Refuse a warm start whose network does not read the release's samples as the release-trained one will.

    Args:
        record: the ``model.pt`` to start the backbone from.
        inputs: the opened release.
        path: its file, for messages.

    Raises:
        ValueError: another masking (encoder kind, upsampling, kept channels or their statistics), ``x``
            against ``|x|``, or layers changed by opacus.
    """
    ours = encoder_spec(RELEASE_METHOD, inputs.encoder)
    theirs = record.encoder
    for key in ("kind", "upsample", "kept_channels"):
        if theirs.get(key) != ours[key]:
            raise ValueError(
                f"{path} was trained on another masking than the release's masker ({key} {theirs.get(key)!r}, the masker's {ours[key]!r}): "
                "train it with `fmix train --masker` on the release's masker"
            )
    for key in ("channel_mean", "channel_std"):
        if not torch.allclose(torch.tensor(theirs[key]), torch.tensor(ours[key]), rtol=1e-5, atol=1e-6):
            raise ValueError(f"{path} was trained on other channel statistics ({key}) than the release's masker")
    if record.sign_invariant != inputs.sign_invariant:
        reads = {True: "|x|", False: "x"}
        raise ValueError(
            f"{path}'s network reads {reads[record.sign_invariant]}, a network of this release reads {reads[inputs.sign_invariant]}: "
            "start from a model of a mixing method under the same sign mask"
        )
    if record.net_fix:
        raise ValueError(
            f"{path}'s layers were changed by {record.net_fix} (DP-SGD): its backbone does not fit this network"
        )


class SoftLabelLoss(nn.Module):
    """The FR network's per-sample loss on published soft labels (the head's margin loss, no simplex check).

    ``sum_i weights[:, i] * CE(margin_logits(backbone(x), labels[:, i]), labels[:, i])``; columns
    with label -1 (padding) must have weight 0 and add nothing.

    Args:
        net: the FR network.

    Shape:
        - x: :math:`(B, K, h, w)`; labels, weights: :math:`(B, k_{max})`.
        - Output: :math:`(B,)` float32.
    """

    def __init__(self, net: FRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        head = self.net.head
        return margin_loss(head.weight, self.net.backbone(x), labels.clamp(min=0), weights, head.kind, head.s, head.m)


class ReleaseTrainer:
    """Trains an FR network on a release: the loader, one step, an epoch's end, checkpoints, the saved model.

    Args:
        params: the ``train`` parameters (method settings other than the network's are not used).
        inputs: the opened release (:func:`open_release`).
        device: where training runs.
        rank: this process's rank.
        world: number of processes (DDP when more than one).
        workers: loader worker processes.
        init: a ``model.pt`` of the same masking to start the backbone from (:func:`check_init_model`).

    Raises:
        ValueError: ``init``'s masking or network does not fit (its backbone's shapes: other ``train`` settings).
    """

    def __init__(
        self,
        params: TrainParams,
        inputs: ReleaseInputs,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        init: str | Path | None = None,
    ) -> None:
        counts = Counter(int(k) for k in (inputs.source.labels >= 0).sum(dim=1).tolist())
        k = inputs.fixed_k or counts.most_common(1)[0][0]
        self.params = dataclasses.replace(params, method=RELEASE_METHOD, mixup=MixupParams(k=k))
        self.inputs, self.device, self.rank, self.world = inputs, device, rank, world
        source, encoder = inputs.source, inputs.encoder
        self.net = build_net(self.params, encoder.channels, encoder.size, source.num_classes, inputs.sign_invariant).to(
            device
        )
        self.init = None if init is None else self._start_from(Path(init))
        self.loss_module = SoftLabelLoss(self.net)
        self.model: nn.Module = (
            torch.nn.parallel.DistributedDataParallel(self.loss_module) if world > 1 else self.loss_module
        )
        self.optimizer = torch.optim.SGD(
            self.net.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
        self.loader = face_loader(
            source, params.batch_size, params.seed, rank, world, workers, pin_memory=device.type == "cuda"
        )
        self.steps_per_epoch = self.loader.batch_sampler.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(source)} released samples make no full batch of {params.batch_size} per process")
        self.total_steps = params.epochs * self.steps_per_epoch
        warmup = int(params.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, warmup, params.schedule)
        )
        self.generator = torch.Generator().manual_seed(
            params.seed * 7919 + rank
        )  # nothing draws from it; kept for the checkpoint's shape
        self.amp = params.amp and device.type == "cuda"
        self.state = TrainState()

    def _start_from(self, path: Path) -> dict:
        """Load ``path``'s backbone into the network; returns what the model and summary record of it."""
        record = ModelRecord.load(path)
        check_init_model(record, self.inputs, path)
        try:
            self.net.backbone.load_state_dict(record.backbone)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[1:2] or [str(error)]
            raise ValueError(
                f"{path}'s backbone does not fit this network (train.backbone, width, embedding_size, strides or norm differ): {first[0].strip()}"
            ) from None
        return {"model": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "method": record.method}

    def batches(self, epoch: int, start: int = 0):
        """This rank's batches of ``epoch`` from batch ``start`` (a function of the seed and the epoch)."""
        return epoch_batches(self.loader, epoch, start)

    def loss(self, batch: SoftLabelBatch) -> Tensor:
        """Per-sample soft-label loss of a batch, in bf16 autocast on CUDA with ``train.amp``."""
        x, labels, weights = (t.to(self.device, non_blocking=True) for t in batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.model(x, labels, weights)

    def step(self, batch: SoftLabelBatch) -> float:
        """One optimiser step on a batch; returns its mean loss."""
        start = time.perf_counter()
        loss = self.loss(batch).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.params.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        stats = self.state.stats
        stats.fr_steps += 1
        stats.fr_seconds += time.perf_counter() - start
        stats.loss += loss.item()
        stats.count_k((batch.labels >= 0).sum(dim=1))
        return loss.item()

    def end_epoch(self, epoch: int) -> dict:
        """The epoch's log row (no validation: the release has no un-mixed faces); the next epoch starts."""
        k_values = tuple(sorted(set(self.inputs.mixing.k_values) | set(self.state.stats.k)))
        row = self.state.stats.row(epoch, None, self.scheduler.get_last_lr()[0], k_values, None)
        self.state.history.append(row)
        self.state = TrainState(epoch + 1, 0, self.state.step, self.state.history)
        return row

    def settings(self) -> dict:
        """What a resumed run must share: the ``train`` section (but how samples are read) and the release."""
        train = {key: value for key, value in dataclasses.asdict(self.params).items() if key not in HOW_FACES_ARE_READ}
        return {
            **plain_dict(train),
            "release": self.inputs.release_id,
            "masker_sha256": self.inputs.masker_sha256,
            "init_sha256": None if self.init is None else self.init["sha256"],
        }

    def save_checkpoint(self, path: Path) -> None:
        """Write everything needed to resume (rank 0 only)."""
        if self.rank == 0:
            save_checkpoint(
                {
                    **self.state.to_state(),
                    "params": self.settings(),
                    "net": self.net.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": rng_state(self.generator),
                },
                path,
            )

    def restore(self, saved: dict, path: Path) -> None:
        """Continue from a checkpoint of the same run.

        Raises:
            ValueError: it was written with other ``train`` parameters or another release.
        """
        if saved.get("params") != self.settings():
            raise ValueError(
                f"{path} was written with other train parameters or another release; use another folder or drop --resume"
            )
        self.net.load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_rng_state(saved["rng"], self.generator)
        self.state = TrainState.from_state(saved)

    def model_record(self) -> ModelRecord:
        """``model.pt``: the masker's transform as encoder, |x| when the release was sign-masked, the release recorded."""
        encoder = self.inputs.encoder
        return ModelRecord(
            params=self.params,
            encoder=encoder_spec(RELEASE_METHOD, encoder),
            backbone=self.net.backbone.state_dict(),
            head=self.net.head.state_dict(),
            policy={},
            num_classes=self.inputs.source.num_classes,
            input_shape=(encoder.channels, encoder.size),
            mixing=self.inputs.mixing,
            sign_invariant=self.inputs.sign_invariant,
            release=self.inputs.record() | ({"init": self.init} if self.init else {}),
        )


def train_on_release(
    params: TrainParams,
    release: str | Path,
    masker: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    workers: int = 0,
    init: str | Path | None = None,
    calibrate: str | Path | None = None,
) -> dict:
    """Train an FR network on a release of ``fmix mask``; resumable from ``out_dir/checkpoint.pt``; torchrun-ready.

    Args:
        params: the ``train`` parameters (network, optimiser, schedule, epochs, batch size, seed, device).
        release: the release folder.
        masker: the ``masker.onnx`` that made it.
        out_dir: where ``checkpoint.pt``, ``train_log.jsonl``, ``model.pt`` and ``train_summary.json`` go.
        resume: continue from the checkpoint in ``out_dir`` if there is one.
        max_steps: stop (after checkpointing) once this many steps are done.
        progress: show a progress bar.
        workers: loader worker processes per rank.
        init: a ``model.pt`` of the release's masking to start the backbone from (a warm start; a
            resumed run must give the same one).
        calibrate: an aligned face folder whose un-mixed faces re-estimate the batch-norm statistics
            after training (:func:`~fmix.train.loop.recalibrate_batchnorm`).

    Returns:
        The summary (also ``train_summary.json``), or ``{"stopped_at_step": n}`` with ``max_steps``.
    """
    from fmix.train.loop import _checkpoint_due, _distributed, _write_log, recalibrate_batchnorm

    rank, world = _distributed(params.device)
    device = rank_device(params.device, rank)
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    out_dir = Path(out_dir)
    inputs = open_release(release, masker)
    calibration_faces = None if calibrate is None else FolderSource.of_folder(calibrate)
    trainer = ReleaseTrainer(params, inputs, device, rank, world, workers, init)
    checkpoint_path = out_dir / "checkpoint.pt"
    if resume and checkpoint_path.exists():
        trainer.restore(load_checkpoint(checkpoint_path, device), checkpoint_path)
    trainer.net.train()
    bar = tqdm(
        total=trainer.total_steps,
        initial=trainer.state.step,
        desc="train on release",
        unit="step",
        disable=not progress or rank > 0,
    )
    beat = Heartbeat("train release", total=trainer.total_steps)
    for epoch in range(trainer.state.epoch, params.epochs):
        for batch in trainer.batches(epoch, trainer.state.batch):
            trainer.step(batch)
            trainer.state.step += 1
            beat(trainer.state.step, epoch=epoch + 1)
            trainer.state.batch += 1
            bar.update()
            if _checkpoint_due(trainer, checkpoint_path, params.checkpoint_every, max_steps):
                bar.close()
                return {"stopped_at_step": trainer.state.step}
        trainer.end_epoch(epoch)
        trainer.save_checkpoint(checkpoint_path)
        if rank == 0:
            _write_log(out_dir / "train_log.jsonl", trainer.state.history)
    bar.close()
    calibration = None
    if calibration_faces is not None and rank == 0:
        recalibrate_batchnorm(inputs.encoder.to(device), trainer.net.backbone, calibration_faces, device)
        calibration = {"folder": str(calibrate), "faces": len(calibration_faces)}
    history = trainer.state.history
    times = [row["seconds_per_fr_step"] for row in history if row["fr_steps"]]
    summary = {
        "method": RELEASE_METHOD,
        "trained_on": "release",
        **inputs.record(),
        "init": trainer.init,
        "sign_invariant": inputs.sign_invariant,
        "kept_channels": inputs.encoder.channels,
        "val_accuracy": None,  # no un-mixed faces in a release: evaluate with `fmix evaluate`
        "bn_recalibrated": calibration is not None,
        "calibration": calibration,
        "identities": inputs.source.num_classes,
        "training_faces": inputs.record()["faces"],
        "epochs": len(history),
        "final_loss": history[-1]["loss"],
        "seconds_per_fr_step": sum(times) / len(times) if times else None,
        "final_k_histogram": history[-1].get("k_histogram"),
        "final_mean_k": history[-1].get("mean_k"),
    }
    if rank == 0:
        trainer.model_record().save(out_dir / "model.pt")
        write_json_atomic(out_dir / "train_summary.json", summary)
    return summary
