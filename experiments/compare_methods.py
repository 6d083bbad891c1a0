"""Train and evaluate several protection methods with the same recipe; print one table.

Makes: docs/results/ (2026-11-29-issue-12-without-sign-mask.md, "Runs outside the pipeline";
2026-12-03-cooperative-policy.md, the allocation ceiling and the cooperative policy).

Usage: python experiments/compare_methods.py --runs ppfrfd none mixup:2 mixup:4 mixup:6 adaptive adaptive:k5 adaptive_paper:k5
       [--seeds 0 1 2] [--params params.yaml] [--out runs/compare] [--set train.epochs=8 train.adaptive.n_fr=1 ...]
Needs `data/aligned`, `data/splits` and `models/masker.onnx` (the pipeline's outputs). The train,
mixing and evaluate sections come from --params. A run whose OUT/RUN/seedS/evaluate.json exists is
read back, not trained again (an interrupted comparison resumes).
Each run and seed: its verification accuracy ± fold std, AUC, TAR at FAR 1e-3, the raw-feature floor
on the same pairs, closed-set validation accuracy, mean k and k histogram of the last epoch, the
mutual information between k and per-sample difficulty (adaptive), seconds per FR step. Then, paired
over the same 10 folds of every seed (mean difference, its std, t = mean / standard error, folds won):
every adaptive run against every fixed-k run, and the allocation ceiling, the smallest fixed k
against each larger one. If more faces never help a sample, no allocation of k >= k_min at a mean
k_hi beats fixed k_hi by more than fixed k_min does.
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
from fmix.io import write_json_atomic
from fmix.params import EvaluateParams, MixingParams, MixupParams, TrainParams, load_section, merge_sections
from fmix.train.loop import train


def parse_run(text: str, base: TrainParams) -> dict:
    """``mixup:4`` (fixed k), ``adaptive:k4`` (ours at a mean-k budget of 4), ``adaptive_paper:k4`` (the paper's
    adversarial game at that budget), or a method name alone."""
    method, _, k = text.partition(":")
    if method in ("adaptive", "adaptive_paper"):
        game = {"policy_objective": "adversarial"} if method == "adaptive_paper" else {}
        if k:
            game["target_mean_k"] = float(k.removeprefix("k"))
        return {"method": "adaptive", "adaptive": dataclasses.replace(base.adaptive, **game)}
    return {"method": method, **({"mixup": MixupParams(k=int(k))} if k else {})}


def parse_set(items: list[str]) -> dict:
    """``train.KEY=VALUE`` (``train.SECTION.KEY=VALUE`` for a method's section) -> nested train overrides."""
    overrides: dict = {}
    for item in items:
        path, text = item.split("=", 1)
        *sections, key = path.removeprefix("train.").split(".")
        override = {key: yaml.safe_load(text)}
        for name in reversed(sections):
            override = {name: override}
        overrides = merge_sections(overrides, override)
    return overrides


def train_and_evaluate(
    params: TrainParams, mixing: MixingParams, evaluate: EvaluateParams, args: argparse.Namespace, out: Path
) -> dict:
    """One run at one seed: its evaluation metrics and training summary (read back when already done)."""
    if (out / "evaluate.json").exists():
        summary = json.loads((out / "train_summary.json").read_text())
        return {"metrics": json.loads((out / "evaluate.json").read_text()), "summary": summary, "seconds": None}
    start = time.perf_counter()
    summary = train(
        params,
        args.aligned,
        args.splits,
        out,
        args.masker,
        resume=(out / "checkpoint.pt").exists(),
        progress=False,
        mixing=mixing,
    )
    seconds = time.perf_counter() - start
    metrics = evaluate_model(
        out / "model.pt", args.aligned, args.splits / "pairs.csv", evaluate, args.splits / "private_val.csv"
    )
    write_json_atomic(out / "evaluate.json", metrics)  # the resume marker: never half written
    return {"metrics": metrics, "summary": summary, "seconds": seconds}


def paired_over_seeds(a: dict, b: dict) -> dict:
    """Paired fold difference of two runs (a minus b), the folds of every seed together."""

    def folds(row: dict) -> list[float]:
        return [acc for seed in row["seeds"] for acc in seed["ver"]["fold_accuracies"]]

    return paired_fold_difference(folds(a), folds(b))


def print_pairs(title: str, pairs: list[tuple[dict, dict]]) -> None:
    if not pairs:
        return
    print(f"\n| {title} | against | mean k | accuracy difference (paired) | std | SE | t | folds won |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in pairs:
        d = paired_over_seeds(a, b)
        print(
            f"| {a['run']} | {b['run']} | {a['mean_k']:.2f} / {b['mean_k']:.2f} | {d['mean']:+.3f} | {d['std']:.3f} | "
            f"{d['sem']:.3f} | {d['t']:.2f} | {d['wins']}/{d['folds']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=["ppfrfd", "none", "mixup:2", "mixup:4", "mixup:6", "adaptive"])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--set", nargs="*", default=[], help="train.KEY=VALUE overrides (YAML values)")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="train.seed values (default: the params file's)"
    )
    parser.add_argument("--aligned", type=Path, default=Path("data/aligned"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--masker", type=Path, default=Path("models/masker.onnx"))
    args = parser.parse_args()
    base = load_section(TrainParams, args.params, "train", **parse_set(args.set))
    mixing = load_section(MixingParams, args.params, "mixing")
    evaluate = load_section(EvaluateParams, args.params, "evaluate")
    seeds = args.seeds if args.seeds is not None else [base.seed]
    rows = []
    for text in args.runs:
        row = {"run": text, "seeds": []}
        for seed in seeds:
            params = dataclasses.replace(base, seed=seed, **parse_run(text, base))
            done = train_and_evaluate(params, mixing, evaluate, args, args.out / text.replace(":", "_") / f"seed{seed}")
            ver, floor, summary = done["metrics"]["verification"], done["metrics"]["raw_feature_floor"], done["summary"]
            row["seeds"].append(
                {
                    "seed": seed,
                    "ver": ver,
                    "floor": floor["accuracy_mean"],
                    "val": done["metrics"]["val_accuracy"],
                    "summary": summary,
                    "seconds": done["seconds"],
                }
            )
            print(
                f"{text} seed {seed}: acc {ver['accuracy_mean']:.3f}±{ver['accuracy_std']:.3f} auc {ver['auc']:.3f} floor {floor['accuracy_mean']:.3f} "
                f"val {done['metrics']['val_accuracy']:.3f} mean_k {summary['final_mean_k']}"
                + ("" if done["seconds"] is None else f" ({done['seconds']:.0f} s)"),
                flush=True,
            )
        mean_ks = [seed["summary"]["final_mean_k"] or 1.0 for seed in row["seeds"]]
        row.update(
            method=params.method,
            k=params.mixup.k,
            mean_k=sum(mean_ks) / len(mean_ks),
            objective=params.adaptive.policy_objective,
            budget=params.adaptive.target_mean_k,
        )
        rows.append(row)
    print(
        "\n| run | seed | accuracy ± fold std | AUC | TAR@FAR1e-3 | raw floor | val acc | mean k | k histogram | MI(k; difficulty) bits | s/FR step | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for seed in row["seeds"]:
            ver, summary = seed["ver"], seed["summary"]
            hist = summary["final_k_histogram"]
            hist_text = " ".join(f"{k}:{v:.2f}" for k, v in hist.items()) if hist else "-"
            mean_k, mi = summary["final_mean_k"], summary.get("final_k_difficulty_mutual_information")
            print(
                f"| {row['run']} | {seed['seed']} | {ver['accuracy_mean']:.3f} ± {ver['accuracy_std']:.3f} | {ver['auc']:.3f} | {ver['tar_at_far_1e-3']} | "
                f"{seed['floor']:.3f} | {seed['val']:.3f} | {'-' if mean_k is None else round(mean_k, 2)} | {hist_text} | "
                f"{'-' if mi is None else round(mi, 4)} | {summary['seconds_per_fr_step']:.3f} | {'-' if seed['seconds'] is None else round(seed['seconds'])} |"
            )
        if len(row["seeds"]) > 1:
            means = [seed["ver"]["accuracy_mean"] for seed in row["seeds"]]
            print(f"| {row['run']} | mean of {len(means)} | {sum(means) / len(means):.3f} | | | | | | | | | |")
    adaptive = [row for row in rows if row["method"] == "adaptive"]
    fixed = sorted((row for row in rows if row["method"] == "mixup"), key=lambda row: row["k"])
    print_pairs("adaptive", [(a, b) for a in adaptive for b in fixed])
    ours = [row for row in adaptive if row["objective"] == "cooperative"]
    papers = [row for row in adaptive if row["objective"] == "adversarial"]
    print_pairs("ours", [(a, b) for a in ours for b in papers if a["budget"] == b["budget"]])
    print_pairs("ceiling: smallest fixed k", [(fixed[0], b) for b in fixed[1:] if b["k"] > fixed[0]["k"]])


if __name__ == "__main__":
    main()
