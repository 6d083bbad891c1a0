"""bf16 autocast (``train.amp``) against float32: the same model, the same batches, side by side.

Builds two trainers of one method from the same seed on a pipeline's aligned faces, splits and
masker, one in float32 and one under ``torch.autocast(bfloat16)``, and runs the same FR steps
through both, alternating so that both see the same machine state. Prints seconds per step, the
speed-up, the largest relative difference of the two loss curves, and the closed-set validation
accuracy of both networks after the steps. ``fmix train`` uses autocast only on CUDA
(``train.amp: true``); this benchmark runs it wherever ``--device`` says, so the same numbers can
be read on the CPU (where bf16 is emulated unless the CPU has AMX/AVX512-BF16) and on a GPU.

Usage (after ``make run``, from the repository root):

    python benchmarks/bench_amp.py [--method ppfrfd] [--epochs 1] [--device auto] \
        [--aligned data/aligned] [--splits data/splits] [--masker models/masker.onnx]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fmix.device import resolve_device
from fmix.evaluate.closed_set import closed_set_accuracy
from fmix.params import TrainParams
from fmix.train.loop import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="ppfrfd")
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs of FR steps (the schedule of train.epochs = this)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aligned", default="data/aligned")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--masker", default="models/masker.onnx")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    params = TrainParams(method=args.method, epochs=args.epochs, mix_warmup_fraction=0.0, threads=args.threads)
    arms = {}
    for name, amp in (("float32", False), ("bf16", True)):
        trainer, val_set = build_trainer(
            dataclasses.replace(params, amp=amp), args.aligned, args.splits, args.masker, device=device
        )
        trainer.amp = amp  # fmix train turns autocast on for CUDA only; here it follows the arm
        arms[name] = {"trainer": trainer, "seconds": 0.0, "losses": []}
    reader = arms["float32"]["trainer"]
    batches = [
        (epoch, number, batch) for epoch in range(args.epochs) for number, batch in enumerate(reader.loader(epoch, 0))
    ]
    steps = len(batches) - 1
    for step, (epoch, number, batch) in enumerate(batches):
        for arm in arms.values():
            trainer = arm["trainer"]
            before = trainer.state.stats.loss
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            trainer.fr_step(batch, epoch, number)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step > 0:  # the first step warms up
                arm["seconds"] += time.perf_counter() - start
            arm["losses"].append(trainer.state.stats.loss - before)
    for name, arm in arms.items():
        trainer = arm["trainer"]
        arm["val"] = closed_set_accuracy(trainer.encoder, trainer.net, val_set, device)
        print(
            f"{name:8s} {arm['seconds'] / steps:.3f} s/step  final loss {arm['losses'][-1]:.3f}  "
            f"val accuracy after {steps + 1} steps {arm['val']:.3f}"
        )
    fp32, bf16 = (torch.tensor(arms[name]["losses"]) for name in ("float32", "bf16"))
    gap = ((bf16 - fp32).abs() / fp32.abs()).max().item()
    speed = arms["float32"]["seconds"] / arms["bf16"]["seconds"]
    print(
        f"{args.method} on {device} ({args.threads} thread(s)): bf16 speed-up {speed:.2f}x; loss curves differ by at most "
        f"{100 * gap:.1f}% (relative); validation accuracy {arms['bf16']['val']:.3f} (bf16) against "
        f"{arms['float32']['val']:.3f} (float32)"
    )


if __name__ == "__main__":
    main()
