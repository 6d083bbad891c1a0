"""``fmix train``: the FR training loop (all methods), checkpoints, resume and torchrun DDP.

Files in the output folder: ``checkpoint.pt`` (everything needed to resume, written atomically
every ``checkpoint_every`` steps and at each epoch's end), ``train_log.jsonl`` (one row per
epoch: losses, k histogram, reward, baseline, nu, entropy, validation accuracy, step times),
``model.pt`` (the final FR network, head, policy and input encoder) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from fmix.data.faces import read_face_list
from fmix.freq import frequency_mixup
from fmix.io import atomic_write, write_json_atomic
from fmix.models import DEFAULT_K_VALUES, MarginHead, build_backbone
from fmix.params import TrainParams, plain_dict
from fmix.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from fmix.train.data import FaceSet, batch_indices, epoch_order, load_face_set
from fmix.train.encoders import MIXING_METHODS, build_encoder
from fmix.train.game import AdaptiveGame, k_histogram, mutual_information

K_VALUES = DEFAULT_K_VALUES  # the adaptive policy's actions


class FRNet(nn.Module):
    """Backbone + margin head; ``forward`` returns the per-sample (mixed-label) loss."""

    def __init__(self, backbone: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.head(self.backbone(x), labels, weights)


def build_net(params: TrainParams, in_channels: int, input_size: int, num_classes: int) -> FRNet:
    backbone = build_backbone(params.backbone, in_channels, input_size, params.embedding_size, params.width, params.strides, params.norm)
    return FRNet(backbone, MarginHead(params.embedding_size, num_classes, params.head, params.scale, params.margin))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine decay to 0 or steps of x0.1 at 60% and 85% of training."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return 0.1 ** sum(step >= total * mark for mark in (0.6, 0.85))


@torch.no_grad()
def closed_set_accuracy(encoder: nn.Module, net: FRNet, faces: FaceSet, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 identity accuracy of un-mixed faces against the head's class centres."""
    net.eval()
    correct = 0
    for start in range(0, len(faces), batch_size):
        index = torch.arange(start, min(start + batch_size, len(faces)))
        logits = net.head.logits(net.backbone(encoder(faces.float_images(index).to(device))))
        correct += (logits.argmax(dim=1).cpu() == faces.labels[index]).sum().item()
    net.train()
    return correct / len(faces)


@torch.no_grad()
def recalibrate_batchnorm(encoder: nn.Module, backbone: nn.Module, faces: FaceSet, device: torch.device, batch_size: int = 128) -> bool:
    """Re-estimate batch-norm statistics on un-mixed faces (training saw mixed ones).

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
        index = torch.arange(start, min(start + batch_size, len(faces)))
        if len(index) > 1:
            backbone(encoder(faces.float_images(index).to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return True


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _average_gradients(module: nn.Module, world: int) -> None:
    if world > 1:
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def _random_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def train(
    params: TrainParams,
    aligned: str | Path,
    splits: str | Path,
    out_dir: str | Path,
    masker_path: str | Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
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

    Returns:
        The summary (also ``train_summary.json``), or ``{"stopped_at_step": n}`` with ``max_steps``.
    """
    from tqdm import tqdm

    rank, world = _distributed()
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    out_dir, splits = Path(out_dir), Path(splits)
    train_set = load_face_set(aligned, splits / "private_train.csv")
    val_set = load_face_set(aligned, splits / "private_val.csv")
    public = [path for path, _ in read_face_list(splits / "public.csv")] if params.method == "freq" else []
    encoder, spec = build_encoder(params.method, masker_path, aligned, public)
    encoder = encoder.to(device)
    num_classes = int(train_set.labels.max()) + 1
    net = build_net(params, encoder.channels, encoder.size, num_classes).to(device)
    trained = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD(net.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    steps_per_epoch = len(batch_indices(epoch_order(len(train_set), 0, params.seed), params.batch_size, rank, world))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training faces make no full batch of {params.batch_size} per process")
    total_steps = params.epochs * steps_per_epoch
    warmup = int(params.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, params.schedule))
    game = AdaptiveGame(encoder.channels, K_VALUES, params).to(device) if params.method == "adaptive" else None
    generator = torch.Generator().manual_seed(params.seed * 7919 + rank)
    amp = params.amp and device.type == "cuda"

    state = {"epoch": 0, "batch": 0, "step": 0, "history": [], "epoch_stats": _new_epoch_stats()}
    checkpoint_path = out_dir / "checkpoint.pt"
    if resume and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path, device)
        if saved["params"] != plain_dict(asdict(params)):
            raise ValueError(f"{checkpoint_path} was written with other train parameters; use another folder or drop --resume")
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if game is not None:
            game.load_state_dict(saved["game"])
        restore_rng_state(saved["rng"], generator)
        state = {key: saved[key] for key in state}

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(
                {
                    **state,
                    "params": plain_dict(asdict(params)),
                    "net": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "game": game.state_dict() if game is not None else {},
                    "rng": rng_state(generator),
                },
                checkpoint_path,
            )

    def fr_loss(x: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return trained(x, labels, weights)

    net.train()
    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {params.method}", unit="step", disable=not progress or rank > 0)
    for epoch in range(state["epoch"], params.epochs):
        batches = batch_indices(epoch_order(len(train_set), epoch, params.seed), params.batch_size, rank, world)
        stats = state["epoch_stats"]
        for number in range(state["batch"], len(batches)):
            start = time.perf_counter()
            images = train_set.float_images(batches[number]).to(device)
            if params.flip:
                images = _random_flip(images, generator)
            labels = train_set.labels[batches[number]].to(device)
            with torch.no_grad():
                x = encoder(images)
            done = state["step"] / total_steps
            position = epoch + number / len(batches)  # in epochs
            mixing = params.method in MIXING_METHODS and position >= params.mix_warmup_fraction * params.epochs
            game_on = game is not None and mixing and position >= params.policy_warmup_epochs
            if mixing:
                k = _choose_k(params, game, game_on, x, done, generator)
                mixed = frequency_mixup(x, labels, k, max(K_VALUES), params.mix_law, params.mix_cap, generator=generator, rescale=params.mix_rescale)
                loss = fr_loss(mixed.x, labels[mixed.partners], mixed.weights).mean()
                for k_value, count in Counter(mixed.k.tolist()).items():
                    stats["k"][k_value] = stats["k"].get(k_value, 0) + count
            else:
                loss = fr_loss(x, labels, None).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), params.clip_grad)
            optimizer.step()
            scheduler.step()
            stats["fr_steps"] += 1
            stats["fr_seconds"] += time.perf_counter() - start
            stats["loss"] += loss.item()
            if game_on and (state["step"] + 1) % params.n_fr == 0:
                # The policy's turn, on the same batch: FR frozen, n_pi REINFORCE steps.
                start = time.perf_counter()
                net.eval()
                for _ in range(params.n_pi):
                    step_stats = game.policy_step(x, labels, done, generator, lambda xs, ls, ws: net(xs, ls, ws))
                    _average_gradients(game.policy, world)  # keeps the ranks' policies equal
                    stats["reward"] += step_stats["reward"]
                    stats["entropy"] += step_stats["entropy"]
                    stats["k_by_difficulty"] = _add_tables(stats.get("k_by_difficulty"), step_stats["k_by_difficulty"])
                net.train()
                stats["policy_steps"] += params.n_pi
                stats["policy_seconds"] += time.perf_counter() - start
            state["step"] += 1
            state["batch"] = number + 1
            bar.update()
            if state["step"] % params.checkpoint_every == 0:
                checkpoint()
            if max_steps is not None and state["step"] >= max_steps:
                checkpoint()
                bar.close()
                return {"stopped_at_step": state["step"]}
        val_accuracy = closed_set_accuracy(encoder, net, val_set, device)
        nu = game.end_epoch(val_accuracy) if game is not None and game_on else (game.dual.value if game else None)
        state["history"].append(_epoch_row(epoch, stats, val_accuracy, nu, game, scheduler))
        state.update(epoch=epoch + 1, batch=0, epoch_stats=_new_epoch_stats())
        checkpoint()
        if rank == 0:
            _write_log(out_dir / "train_log.jsonl", state["history"])
    bar.close()
    recalibrated = params.recalibrate_bn and recalibrate_batchnorm(encoder, net.backbone, train_set, device)
    final_val = closed_set_accuracy(encoder, net, val_set, device)
    summary = _summary(params, state["history"], final_val, recalibrated, num_classes, len(train_set))
    if rank == 0:
        save_checkpoint(
            {
                "params": plain_dict(asdict(params)),
                "encoder": spec,
                "backbone": net.backbone.state_dict(),
                "head": net.head.state_dict(),
                "policy": game.policy.state_dict() if game is not None else {},
                "num_classes": num_classes,
                "input": [encoder.channels, encoder.size],
            },
            out_dir / "model.pt",
        )
        write_json_atomic(out_dir / "train_summary.json", summary)
    return summary


def _choose_k(params: TrainParams, game: AdaptiveGame | None, game_on: bool, x: Tensor, done: float, generator: torch.Generator) -> Tensor | int:
    if params.method == "mixup":
        return params.k
    if game_on:
        return game.choose_k(x, done, generator)
    # FR warm-up of the adaptive method: the mildest mixing, so the FR network starts learning.
    return min(K_VALUES)


def _new_epoch_stats() -> dict:
    return {"loss": 0.0, "fr_steps": 0, "fr_seconds": 0.0, "policy_steps": 0, "policy_seconds": 0.0, "reward": 0.0, "entropy": 0.0, "k": {}}


def _epoch_row(epoch: int, stats: dict, val_accuracy: float, nu: float | None, game: AdaptiveGame | None, scheduler) -> dict:
    fr, pi = max(1, stats["fr_steps"]), stats["policy_steps"]
    row = {
        "epoch": epoch,
        "loss": stats["loss"] / fr,
        "val_accuracy": val_accuracy,
        "lr": scheduler.get_last_lr()[0],
        "fr_steps": stats["fr_steps"],
        "seconds_per_fr_step": stats["fr_seconds"] / fr,
    }
    if stats["k"]:
        row["k_histogram"] = k_histogram(stats["k"], K_VALUES)
        row["mean_k"] = sum(k * n for k, n in stats["k"].items()) / sum(stats["k"].values())
    if game is not None:
        row.update(
            policy_steps=pi,
            seconds_per_policy_step=stats["policy_seconds"] / pi if pi else None,
            policy_overhead=stats["policy_seconds"] / stats["fr_seconds"] if stats["fr_seconds"] else None,
            mean_reward=stats["reward"] / pi if pi else None,
            entropy=stats["entropy"] / pi if pi else None,
            baseline=game.baseline.value,
            nu=nu,
            k_price=game.penalty,
        )
        if stats.get("k_by_difficulty"):
            # Rows: quartiles of the un-mixed loss (easiest first); columns: k. The MI shows per-sample choice.
            row["k_by_difficulty"] = stats["k_by_difficulty"]
            row["k_difficulty_mutual_information"] = mutual_information(stats["k_by_difficulty"])
    return row


def _add_tables(total: list[list[int]] | None, table: list[list[int]]) -> list[list[int]]:
    if total is None:
        return table
    return [[a + b for a, b in zip(row_a, row_b)] for row_a, row_b in zip(total, table)]


def _summary(params: TrainParams, history: list[dict], final_val: float, recalibrated: bool, num_classes: int, faces: int) -> dict:
    fr_times = [row["seconds_per_fr_step"] for row in history if row["fr_steps"]]
    policy_times = [row["seconds_per_policy_step"] for row in history if row.get("seconds_per_policy_step")]
    ks = [row["mean_k"] for row in history if "mean_k" in row]
    return {
        "method": params.method,
        "val_accuracy": final_val,
        "val_accuracy_before_bn_recalibration": history[-1]["val_accuracy"],
        "bn_recalibrated": recalibrated,
        "identities": num_classes,
        "training_faces": faces,
        "epochs": len(history),
        "seconds_per_fr_step": sum(fr_times) / len(fr_times) if fr_times else None,
        "seconds_per_policy_step": sum(policy_times) / len(policy_times) if policy_times else None,
        "policy_overhead": history[-1].get("policy_overhead"),  # policy seconds / FR seconds, last epoch
        "final_k_histogram": history[-1].get("k_histogram"),
        "final_mean_k": ks[-1] if ks else None,
        "final_k_by_difficulty": history[-1].get("k_by_difficulty"),
        "final_k_difficulty_mutual_information": history[-1].get("k_difficulty_mutual_information"),
    }


def _write_log(path: Path, history: list[dict]) -> None:
    with atomic_write(path) as out:
        out.writelines(json.dumps(row) + "\n" for row in history)

