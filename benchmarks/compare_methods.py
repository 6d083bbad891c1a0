"""Train and evaluate several protection methods with the same recipe; print one table.

Usage: python benchmarks/compare_methods.py --runs ppfrfd none mixup:2 mixup:4 mixup:6 adaptive
       [--params params.yaml] [--out runs/compare] [--set train.epochs=8 ...]
Needs `data/aligned`, `data/splits` and `models/masker.onnx` (the pipeline's outputs).
Each run: its verification accuracy, AUC, the raw-feature floor on the same pairs, closed-set
validation accuracy, mean k and k histogram of the last epoch, seconds per FR / policy step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from fmix.evaluate.run import evaluate_model
from fmix.params import EvaluateParams, TrainParams, load_section
from fmix.train.loop import train


def parse_run(text: str) -> dict:
    method, _, k = text.partition(":")
    return {"method": method, **({"k": int(k)} if k else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=["ppfrfd", "none", "mixup:2", "mixup:4", "mixup:6", "adaptive"])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--set", nargs="*", default=[], help="train.KEY=VALUE overrides (YAML values)")
    parser.add_argument("--aligned", type=Path, default=Path("data/aligned"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--masker", type=Path, default=Path("models/masker.onnx"))
    args = parser.parse_args()
    overrides = {item.split("=", 1)[0].removeprefix("train."): yaml.safe_load(item.split("=", 1)[1]) for item in args.set}
    base = load_section(TrainParams, args.params, "train", **overrides)
    rows = []
    for text in args.runs:
        params = dataclasses.replace(base, **parse_run(text))
        out = args.out / text.replace(":", "_")
        start = time.perf_counter()
        summary = train(params, args.aligned, args.splits, out, args.masker, progress=False)
        seconds = time.perf_counter() - start
        metrics = evaluate_model(out / "model.pt", args.aligned, args.splits / "pairs.csv", EvaluateParams(), args.splits / "private_val.csv")
        (out / "evaluate.json").write_text(json.dumps(metrics, indent=2))
        ver, floor = metrics["verification"], metrics["raw_feature_floor"]
        rows.append((text, ver["accuracy_mean"], ver["accuracy_std"], ver["auc"], floor["accuracy_mean"], metrics["val_accuracy"],
                     summary["final_mean_k"], summary["final_k_histogram"], summary["seconds_per_fr_step"], summary["seconds_per_policy_step"], seconds))
        print(f"{text}: acc {ver['accuracy_mean']:.3f}±{ver['accuracy_std']:.3f} auc {ver['auc']:.3f} floor {floor['accuracy_mean']:.3f} "
              f"val {metrics['val_accuracy']:.3f} mean_k {summary['final_mean_k']} ({seconds:.0f} s)", flush=True)
    print("\n| run | accuracy | AUC | raw floor | val acc | mean k | k histogram | s/FR step | s/policy step | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run, acc, std, auc, floor, val, mean_k, hist, fr, pi, sec in rows:
        hist_text = " ".join(f"{k}:{v:.2f}" for k, v in hist.items()) if hist else "-"
        print(f"| {run} | {acc:.3f} ± {std:.3f} | {auc:.3f} | {floor:.3f} | {val:.3f} | {mean_k if mean_k is None else round(mean_k, 2)} | "
              f"{hist_text} | {fr:.3f} | {pi if pi is None else round(pi, 3)} | {sec:.0f} |")


if __name__ == "__main__":
    main()
