"""``fmix train``: set a run up, drive its epochs through the :class:`~fmix.train.trainer.Trainer`, save it.

Files in the output folder: ``checkpoint.pt`` (everything needed to resume, written atomically
every ``checkpoint_every`` steps and at each epoch's end), ``train_log.jsonl`` (one row per
epoch: losses, k histogram, reward, baseline, nu, entropy, validation accuracy, step times),
``model.pt`` (the final FR network, head, policy and input encoder: :class:`fmix.models.artifact.ModelRecord`)
and ``train_summary.json``. What differs between methods comes from the method's module
(:mod:`fmix.methods`); this file never looks at the method's name.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fmix.data.faces import FaceSet, load_face_set
from fmix.data.sources import FaceSource, open_source, read_faces
from fmix.device import rank_device, resolve_device
from fmix.evaluate.closed_set import closed_set_accuracy
from fmix.io import atomic_write, write_json_atomic
from fmix.methods import build_method
from fmix.methods.base import TrainInputs
from fmix.models.encoders import RgbEncoder
from fmix.models.frnet import build_net
from fmix.params import MixingParams, TrainParams
from fmix.progress import Heartbeat
from fmix.train.checkpoint import load_checkpoint
from fmix.train.trainer import Trainer


@torch.no_grad()
def recalibrate_batchnorm(
    encoder: nn.Module, backbone: nn.Module, faces: FaceSource, device: torch.device, batch_size: int = 128
) -> bool:
    """Re-estimate batch-norm statistics on un-mixed faces (training saw mixed ones).

    Args:
        encoder: images -> network inputs.
        backbone: the FR backbone.
        faces: the training faces (in memory or streamed).
        device: where the network runs.
        batch_size: faces per forward pass.

    Returns:
        False when the backbone has no batch norm (nothing to do).
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    backbone.train()
    for start in range(0, len(faces) - 1, batch_size):
        index = range(start, min(start + batch_size, len(faces)))
        if len(index) > 1:
            backbone(encoder(read_faces(faces, index).float_images().to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return True


def _distributed(device_spec: str = "auto") -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if resolve_device(device_spec).type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def init_backbone(backbone: nn.Module, encoder: nn.Module, params: TrainParams) -> nn.Module:
    """Start the backbone from ``train.init_backbone``, an arcface_torch ``backbone.pth`` (before the method changes the network).

    Args:
        backbone: the freshly built backbone.
        encoder: the method's encoder: only an RGB one of 3 x 112 x 112 faces fits pretrained RGB weights.
        params: the ``train`` parameters (``init_backbone``, the method's name).

    Returns:
        ``backbone``, with the pretrained weights.

    Raises:
        ValueError: the method's input is not RGB 3 x 112 x 112, or the file does not fit the network
            (naming the first missing or mis-shaped key).
        FileNotFoundError: no such file.
    """
    from fmix.models.backbone_import import load_arcface_backbone

    if not isinstance(encoder, RgbEncoder) or (encoder.channels, encoder.size) != (3, 112):
        raise ValueError(
            f"train.init_backbone needs a method whose network reads RGB faces of 3x112x112; method {params.method!r} "
            f"feeds it {encoder.channels}x{encoder.size}x{encoder.size} {type(encoder).__name__} inputs, so its input does not allow "
            "a pretrained RGB backbone (set train.init_backbone: null)"
        )
    return load_arcface_backbone(params.init_backbone, backbone)


def build_trainer(
    params: TrainParams,
    aligned: str | Path,
    splits: str | Path,
    masker_path: str | Path | None = None,
    mixing: MixingParams | None = None,
    device: torch.device | None = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[Trainer, FaceSet]:
    """Load the faces, build the method's encoder and the FR network, and the trainer around them.

    Args:
        params: the ``train`` parameters.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split``.
        masker_path: ``masker.onnx`` of ``fmix export`` (masking methods).
        mixing: the ``mixing`` section (default: its defaults).
        device: where training runs (default: the CPU).
        rank: this process's rank.
        world: number of processes.

    Returns:
        (the trainer, the validation faces). The training faces are read as ``train.source`` says: decoded
        into memory up front, or streamed from the folder batch by batch; the validation faces are held in memory.

    Raises:
        ValueError: parameters the method refuses.
    """
    method = build_method(params)
    device = device or torch.device("cpu")
    splits = Path(splits)
    train_set = open_source(params.source, aligned, splits / "private_train.csv")
    val_set = load_face_set(aligned, splits / "private_val.csv")
    encoder = method.build_encoder(
        TrainInputs(params, Path(aligned), splits, Path(masker_path) if masker_path else None)
    ).to(device)
    num_classes = train_set.num_classes
    mixing = mixing or MixingParams()
    net = build_net(params, encoder.channels, encoder.size, num_classes, method.sign_invariant(method.mixing(mixing)))
    if params.init_backbone is not None:
        init_backbone(net.backbone, encoder, params)
    trainer = Trainer(
        params, method, mixing, encoder, method.prepare_net(net).to(device), train_set, device, rank, world
    )
    return trainer, val_set


def train(
    params: TrainParams,
    aligned: str | Path,
    splits: str | Path,
    out_dir: str | Path,
    masker_path: str | Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    mixing: MixingParams | None = None,
) -> dict:
    """Train an FR network with one protection method; resumable from ``out_dir/checkpoint.pt``.

    Args:
        params: the ``train`` parameters.
        aligned: output folder of ``fmix align``.
        splits: output folder of ``fmix split`` (private_train/val, public CSVs).
        out_dir: where checkpoints, logs and the final model go.
        masker_path: ``masker.onnx`` from ``fmix export`` (masking methods).
        resume: continue from the checkpoint in ``out_dir`` if there is one.
        max_steps: stop (after checkpointing) once this many steps are done; for tests of resume.
        progress: show a progress bar.
        mixing: the ``mixing`` section (default: its defaults); the method may change it.

    Returns:
        The summary (also ``train_summary.json``), or ``{"stopped_at_step": n}`` with ``max_steps``.
    """
    rank, world = _distributed(params.device)
    device = rank_device(params.device, rank)  # train.device: auto = CUDA when available (rank r on GPU r mod count)
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    out_dir = Path(out_dir)
    trainer, val_set = build_trainer(params, aligned, splits, masker_path, mixing, device, rank, world)
    net, encoder, train_set, num_classes = trainer.net, trainer.encoder, trainer.train_set, trainer.num_classes

    checkpoint_path = out_dir / "checkpoint.pt"
    if resume and checkpoint_path.exists():
        trainer.restore(load_checkpoint(checkpoint_path, device), checkpoint_path)
    state = trainer.state
    net.train()
    bar = tqdm(
        total=trainer.total_steps,
        initial=state.step,
        desc=f"train {params.method}",
        unit="step",
        disable=not progress or rank > 0,
    )
    beat = Heartbeat(f"train {params.method}", total=trainer.total_steps)
    for epoch in range(state.epoch, params.epochs):
        for number, batch in enumerate(trainer.loader(epoch, trainer.state.batch), start=trainer.state.batch):
            x, labels = trainer.fr_step(batch, epoch, number)
            beat(trainer.state.step + 1, epoch=epoch + 1, loss=trainer.state.stats.loss / trainer.state.stats.fr_steps)
            if trainer.policy_due():
                trainer.policy_turn(x, labels)
            trainer.state.step += 1
            trainer.state.batch = number + 1
            bar.update()
            if _checkpoint_due(trainer, checkpoint_path, params.checkpoint_every, max_steps):
                bar.close()
                return {"stopped_at_step": trainer.state.step}
        trainer.end_epoch(epoch, val_set)
        trainer.save_checkpoint(checkpoint_path)
        if rank == 0:
            _write_log(out_dir / "train_log.jsonl", trainer.state.history)
    bar.close()
    recalibrated = params.recalibrate_bn and recalibrate_batchnorm(encoder, net.backbone, train_set, device)
    if recalibrated:
        trainer.network_changed()  # e.g. the adaptive policy's confidence signal moved with the batch norm: it prices k again
    final_val = closed_set_accuracy(encoder, net, val_set, device)
    record = trainer.model_record(num_classes)
    summary = _summary(
        params, trainer.state.history, final_val, recalibrated, num_classes, len(train_set), record.privacy
    )
    if rank == 0:
        record.save(out_dir / "model.pt")
        write_json_atomic(out_dir / "train_summary.json", summary)
    return summary


def _summary(
    params: TrainParams,
    history: list[dict],
    final_val: float,
    recalibrated: bool,
    num_classes: int,
    faces: int,
    privacy: dict,
) -> dict:
    fr_times = [row["seconds_per_fr_step"] for row in history if row["fr_steps"]]
    policy_times = [row["seconds_per_policy_step"] for row in history if row.get("seconds_per_policy_step")]
    ks = [row["mean_k"] for row in history if "mean_k" in row]
    # The steps' seconds of each epoch, FR and policy (validation and the policy's pricing left out).
    epoch_seconds = [
        row["fr_steps"] * row["seconds_per_fr_step"]
        + (row.get("policy_steps") or 0) * (row.get("seconds_per_policy_step") or 0.0)
        for row in history
    ]
    summary = {
        "method": params.method,
        "val_accuracy": final_val,
        "val_accuracy_before_bn_recalibration": history[-1]["val_accuracy"],
        "bn_recalibrated": recalibrated,
        "identities": num_classes,
        "training_faces": faces,
        "epochs": len(history),
        "seconds_per_fr_step": sum(fr_times) / len(fr_times) if fr_times else None,
        "seconds_per_policy_step": sum(policy_times) / len(policy_times) if policy_times else None,
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "policy_overhead": history[-1].get("policy_overhead"),  # policy seconds / FR seconds, last epoch
        "final_k_histogram": history[-1].get("k_histogram"),
        "final_mean_k": ks[-1] if ks else None,
        "final_k_by_difficulty": history[-1].get("k_by_difficulty"),
        "final_k_difficulty_mutual_information": history[-1].get("k_difficulty_mutual_information"),
    }
    if privacy:
        summary["privacy"] = privacy
        summary["epsilon"] = privacy.get("epsilon")  # the report's column
    return summary


def _checkpoint_due(trainer, checkpoint_path: Path, every: int, max_steps: int | None) -> bool:
    """After a step: checkpoint every ``every`` steps, and once ``max_steps`` are done (then True: stop)."""
    stop = max_steps is not None and trainer.state.step >= max_steps
    if stop or trainer.state.step % every == 0:
        trainer.save_checkpoint(checkpoint_path)
    return stop


def _write_log(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as out:
        out.writelines(json.dumps(row) + "\n" for row in history)
