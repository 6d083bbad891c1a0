"""GPU check: every heavy stage once on a CUDA machine, timed, in about 8 minutes at most.

Usage (from the repository root, with the shared data at ../shared/data):

    benchmarks/gpu_check.sh [--work DIR] [--identities 100] [--budget 420] [--device cuda]
    benchmarks/gpu_check.sh --cpu-rehearsal   # without a GPU: the same stages at toy sizes on the CPU

Stages, each a real ``fmix`` command on a small slice of the default data (LFW deep-funneled,
the first ``--identities`` people with at least 5 photos):

1. the tests marked ``cuda`` (``pytest -m cuda``);
2. ``fmix align`` (CPU, RetinaFace), ``fmix split``, ``fmix export``;
3. ``fmix train`` of ppfrfd, mixup4 (mixup, k = 4) and adaptive, 2 epochs each on the GPU
   (``train.device``): images/s of the FR steps (batch / seconds per FR step) and end to end;
   then ``benchmarks/bench_amp.py`` (ppfrfd, one epoch): bf16 autocast against float32 on the GPU;
4. ``fmix evaluator`` and ``fmix evaluate`` (adaptive) on the GPU;
5. ``fmix attack protection`` (ppfrfd, 100 steps, the RGB evaluator as judge) and ``fmix attack
   invert`` (adaptive) on the GPU (``attack.device``: the attack's seconds are wall-clock there);
6. ``fmix mask`` of the private training faces through ONNX Runtime (CUDA provider when the
   installed onnxruntime has it; the line says which): faces/s.

Prints the wall time of every stage. Stages that would start after ``--budget`` seconds are
skipped (and said so). Without a CUDA GPU it says so and exits 0. Exit status 1 when a stage fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LFW_IMAGES = REPO.parent / "shared" / "data" / "lfw" / "images_deepfunneled"


BATCH = 64


def overlay(identities: int, device: str, threads: int, tiny: bool = False) -> str:
    """The params file of the check: short settings over the defaults (``tiny``: the CPU rehearsal's)."""
    batch, extra = (8, ", width: 0.125, embedding_size: 32, epochs: 1") if tiny else (BATCH, "")
    steps = 5 if tiny else 100
    return f"""\
align: {{workers: {threads}, min_images: 5, max_identities: {identities}}}
split: {{folds: 2, pairs_per_fold: {8 if tiny else 50}}}
export: {{stats_images: 500}}
train: {{epochs: 2, batch_size: {batch}, threads: {threads}, device: "{device}", adaptive: {{policy_warmup_epochs: 0.5}}, checkpoint_every: 1000{extra}}}
evaluator: {{epochs: 2, threads: {threads}, device: "{device}"{", width: 0.125" if tiny else ""}}}
evaluate: {{device: "{device}"}}
attack: {{steps: {steps}, seconds: 60.0, eval_faces: {8 if tiny else 64}, batch_size: {8 if tiny else 16}, judge: evaluator, invert_seconds: {2.0 if tiny else 10.0}, invert_identities: {2 if tiny else 8}, device: "{device}"}}
"""


class Stages:
    """Runs the stages in order, times them, stops starting new ones after the budget."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget, self.rows, self.failed = time.perf_counter(), budget, [], False

    def run(self, name: str, argv: list[str], timeout: float = 300.0) -> float | None:
        elapsed = time.perf_counter() - self.start
        if self.failed or elapsed > self.budget:
            why = "an earlier stage failed" if self.failed else f"past the {self.budget:.0f} s budget"
            print(f"[skip] {name}: {why}", flush=True)
            self.rows.append((name, None, "skipped"))
            return None
        print(f"[run ] {name}: {' '.join(argv)}", flush=True)
        begin = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=min(timeout, max(30.0, self.budget + 60 - elapsed)),
            )
        except subprocess.TimeoutExpired:
            self.failed = True
            print(f"[FAIL] {name}: timed out", flush=True)
            self.rows.append((name, time.perf_counter() - begin, "timed out"))
            return None
        seconds = time.perf_counter() - begin
        tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
        print("\n".join(f"       {line}" for line in tail), flush=True)
        ok = done.returncode == 0 or (name == "cuda tests" and done.returncode == 5)  # 5: none collected
        self.failed |= not ok
        self.rows.append((name, seconds, "ok" if ok else f"exit {done.returncode}"))
        print(f"[{'ok' if ok else 'FAIL':4}] {name}: {seconds:.1f} s", flush=True)
        return seconds if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--work", type=Path, default=None, help="Working folder (default: a temporary one, removed after)."
    )
    parser.add_argument("--identities", type=int, default=100, help="LFW people (with at least 5 photos) to use.")
    parser.add_argument("--budget", type=float, default=420.0, help="Seconds after which no new stage starts.")
    parser.add_argument("--device", default="cuda", help="Device of the torch stages (cuda or cuda:N).")
    parser.add_argument(
        "--cpu-rehearsal",
        action="store_true",
        help="Without a GPU: run the same stages on the CPU at toy sizes (checks the script itself).",
    )
    args = parser.parse_args()

    import torch

    if args.cpu_rehearsal:
        args.device, args.identities = "cpu", min(args.identities, 20)
        print("gpu_check: CPU rehearsal at toy sizes (no GPU numbers)")
    elif not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU on this machine (torch {torch.__version__}, torch.cuda.is_available() is False): nothing to check"
        )
        return 0
    import onnxruntime as ort

    from fmix.device import resolve_device

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"gpu_check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, onnxruntime {ort.__version__} providers {ort.get_available_providers()}"
    )
    if not LFW_IMAGES.is_dir():
        print(f"gpu_check: the shared data is missing: {LFW_IMAGES}")
        return 1
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="fmix_gpu_check_") as work:
            return check(Path(work), args)
    args.work.mkdir(parents=True, exist_ok=True)
    return check(args.work, args)


def check(work: Path, args: argparse.Namespace) -> int:
    threads = os.cpu_count() or 1
    params = work / "params.yaml"
    params.write_text(overlay(args.identities, args.device, threads, tiny=args.cpu_rehearsal))
    fmix = [sys.executable, "-m", "fmix"]
    aligned, splits, masker, models, results = (
        work / "aligned",
        work / "splits",
        work / "masker.onnx",
        work / "models",
        work / "results",
    )
    stages = Stages(args.budget)
    p = ["-p", str(params)]

    if not args.cpu_rehearsal:
        stages.run(
            "cuda tests",
            [sys.executable, "-m", "pytest", "-m", "cuda", "tests", "-q", "-p", "no:cacheprovider"],
            timeout=180,
        )
    stages.run("align (CPU)", [*fmix, "align", str(LFW_IMAGES), str(aligned), *p, "--quiet"], timeout=240)
    stages.run("split", [*fmix, "split", str(aligned), str(splits), *p])
    stages.run("export masker", [*fmix, "export", str(aligned), str(splits / "public.csv"), str(masker), *p])
    train_rows = {}
    for name, options in (
        ("ppfrfd", ["--method", "ppfrfd"]),
        ("mixup4", ["--method", "mixup", "--k", "4"]),
        ("adaptive", ["--method", "adaptive"]),
    ):
        seconds = stages.run(
            f"train {name}",
            [
                *fmix,
                "train",
                str(aligned),
                str(splits),
                str(models / name),
                "--masker",
                str(masker),
                *p,
                *options,
                "--quiet",
            ],
        )
        summary_path = models / name / "train_summary.json"
        if seconds is not None and summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            batch = 8 if args.cpu_rehearsal else BATCH
            fr_rate = batch / summary["seconds_per_fr_step"] if summary.get("seconds_per_fr_step") else float("nan")
            overall = summary["training_faces"] * summary["epochs"] / seconds
            train_rows[name] = (fr_rate, overall, summary["val_accuracy"])
            print(
                f"       {name}: {fr_rate:.0f} images/s in FR steps, {overall:.0f} images/s end to end (process start included), val accuracy {summary['val_accuracy']:.3f}"
            )
    if not args.cpu_rehearsal:  # bf16 autocast against float32 on the same model and batches (train.amp)
        amp = [sys.executable, str(Path(__file__).with_name("bench_amp.py")), "--method", "ppfrfd", "--epochs", "1"]
        stages.run(
            "bf16 against fp32",
            [
                *amp,
                "--device",
                args.device,
                "--aligned",
                str(aligned),
                "--splits",
                str(splits),
                "--masker",
                str(masker),
            ],
            timeout=120,
        )
    stages.run("evaluator", [*fmix, "evaluator", str(aligned), str(splits), str(models / "evaluator"), *p, "--quiet"])
    stages.run(
        "evaluate adaptive",
        [
            *fmix,
            "evaluate",
            str(models / "adaptive" / "model.pt"),
            str(aligned),
            str(splits),
            str(results / "adaptive" / "verification.json"),
            *p,
        ],
    )
    evaluator = str(models / "evaluator" / "model.pt")
    stages.run(
        "attack ppfrfd",
        [
            *fmix,
            "attack",
            "protection",
            str(models / "ppfrfd" / "model.pt"),
            str(aligned),
            str(splits),
            evaluator,
            str(results / "ppfrfd"),
            *p,
            "--name",
            "ppfrfd",
        ],
    )
    stages.run(
        "invert adaptive",
        [
            *fmix,
            "attack",
            "invert",
            str(models / "adaptive" / "model.pt"),
            str(aligned),
            str(splits),
            evaluator,
            str(results / "adaptive"),
            *p,
        ],
    )
    faces = _count_rows(splits / "private_train.csv")
    seconds = stages.run(
        "mask (ONNX Runtime)",
        [
            *fmix,
            "mask",
            str(aligned),
            str(work / "protected"),
            "--masker",
            str(masker),
            "--faces",
            str(splits / "private_train.csv"),
            "--ledger",
            str(work / "ledger.jsonl"),
            *p,
            "--quiet",
        ],
    )
    mask_rate = faces / seconds if seconds else None

    print("\n== gpu_check summary ==")
    for name, seconds, status in stages.rows:
        print(f"{name:22s} {'-' if seconds is None else f'{seconds:7.1f} s'}  {status}")
    for name, (fr_rate, overall, accuracy) in train_rows.items():
        print(
            f"train {name:16s} {fr_rate:7.0f} images/s (FR steps), {overall:.0f} images/s end to end, val accuracy {accuracy:.3f}"
        )
    if mask_rate is not None:
        import onnxruntime as ort

        provider = (
            "CUDAExecutionProvider"
            if "CUDAExecutionProvider" in ort.get_available_providers()
            else "CPUExecutionProvider (no CUDA provider in this onnxruntime: pip install onnxruntime-gpu)"
        )
        print(f"mask                   {mask_rate:7.0f} faces/s ({faces} faces, process start included) on {provider}")
    print(f"total                  {time.perf_counter() - stages.start:7.1f} s")
    return 1 if stages.failed else 0


def _count_rows(csv_path: Path) -> int:
    try:
        return max(0, len(csv_path.read_text().strip().splitlines()) - 1)
    except FileNotFoundError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
