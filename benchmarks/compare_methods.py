"""Train and evaluate several protection methods with the same recipe; print one table.

Usage: python benchmarks/compare_methods.py --runs ppfrfd none mixup:2 mixup:4 mixup:6 adaptive
       [--params params.yaml] [--out runs/compare] [--set train.epochs=8 ...]
Needs `data/aligned`, `data/splits` and `models/masker.onnx` (the pipeline's outputs).
Each run: its verification accuracy ± fold std, AUC, TAR at FAR 1e-3, the raw-feature floor on the
same pairs, closed-set validation accuracy, mean k and k histogram of the last epoch, the mutual
information between k and per-sample difficulty (adaptive), seconds per FR / policy step. Then every
adaptive run against every fixed-k run, paired over the same 10 folds (mean difference, its std,
t = mean / standard error, folds won).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import yaml

from fmix.evaluate import paired_fold_difference
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
        rows.append({"run": text, "ver": ver, "floor": floor["accuracy_mean"], "val": metrics["val_accuracy"], "summary": summary, "seconds": seconds})
        print(f"{text}: acc {ver['accuracy_mean']:.3f}±{ver['accuracy_std']:.3f} auc {ver['auc']:.3f} floor {floor['accuracy_mean']:.3f} "
              f"val {metrics['val_accuracy']:.3f} mean_k {summary['final_mean_k']} ({seconds:.0f} s)", flush=True)
    print("\n| run | accuracy ± fold std | AUC | TAR@FAR1e-3 | raw floor | val acc | mean k | k histogram | MI(k; difficulty) bits | s/FR step | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ver, summary = row["ver"], row["summary"]
        hist = summary["final_k_histogram"]
        hist_text = " ".join(f"{k}:{v:.2f}" for k, v in hist.items()) if hist else "-"
        mean_k, mi = summary["final_mean_k"], summary.get("final_k_difficulty_mutual_information")
        print(f"| {row['run']} | {ver['accuracy_mean']:.3f} ± {ver['accuracy_std']:.3f} | {ver['auc']:.3f} | {ver['tar_at_far_1e-3']} | "
              f"{row['floor']:.3f} | {row['val']:.3f} | {'-' if mean_k is None else round(mean_k, 2)} | {hist_text} | "
              f"{'-' if mi is None else round(mi, 4)} | {summary['seconds_per_fr_step']:.3f} | {row['seconds']:.0f} |")
    adaptive = [row for row in rows if row["summary"]["method"] == "adaptive"]
    fixed = [row for row in rows if row["summary"]["method"] == "mixup"]
    if adaptive and fixed:
        print("\n| adaptive | against | mean k (adaptive / fixed) | accuracy difference (paired) | std | t | folds won |")
        print("|---|---|---|---|---|---|---|")
        for a in adaptive:
            for b in fixed:
                d = paired_fold_difference(a["ver"]["fold_accuracies"], b["ver"]["fold_accuracies"])
                print(f"| {a['run']} | {b['run']} | {a['summary']['final_mean_k']:.2f} / {b['summary']['final_mean_k']:.0f} | "
                      f"{d['mean']:+.3f} | {d['std']:.3f} | {d['t']:.2f} | {d['wins']}/{d['folds']} |")


if __name__ == "__main__":
    main()
