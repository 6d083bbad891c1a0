"""Privacy table: the same attacks against several protection methods, side by side in one run.

Makes: the table it prints (the same attacks against several methods); no table in docs/results/.

For each method (masking alone, fixed k = 2 and 6, adaptive) it exports the method's masker,
runs the white-box and black-box reconstruction attacks and the model inversion of that
method's trained FR model, all scored by one independent evaluator, and prints
S1, S2, S3, S4 (white-box), PSNR, the free floor, black-box S3/S4, inversion top-1, Score_pp and
Score_cls (verification accuracy from `compare_methods.py`'s evaluate.json).

Usage: python experiments/privacy_table.py --runs runs/c1 runs/c2 --evaluator runs/c1/none/model.pt
       [--seconds 90] [--eval-faces 256] [--out runs/privacy]
Needs data/aligned, data/splits and the trained runs (ppfrfd, mixup_2, mixup_6, adaptive).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fmix.attacks.run import invert_model
from fmix.params import AttackParams, ExportParams, load_section
from fmix.pipeline.model_attack import attack_protection

RUNS = ("ppfrfd", "mixup_2", "mixup_6", "adaptive")  # run folders; each model.pt says its method (fmix.methods)


def find_run(roots: list[Path], name: str) -> Path:
    for root in roots:
        if (root / name / "model.pt").is_file():
            return root / name
    raise SystemExit(f"no trained run {name} under {roots}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("runs/c1"), Path("runs/c2")])
    parser.add_argument("--evaluator", type=Path, default=Path("runs/c1/none/model.pt"))
    parser.add_argument("--aligned", type=Path, default=Path("data/aligned"))
    parser.add_argument("--splits", type=Path, default=Path("data/splits"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--invert-seconds", type=float, default=60.0)
    parser.add_argument("--eval-faces", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=list(RUNS), help="run folders under --runs")
    parser.add_argument("--out", type=Path, default=Path("runs/privacy"))
    args = parser.parse_args()
    export = load_section(ExportParams, args.params, "export")
    rows = []
    for name in args.methods:
        run = find_run(args.runs, name)
        out = args.out / name
        attack = AttackParams(seconds=args.seconds, eval_faces=args.eval_faces)
        record = attack_protection(
            run / "model.pt",
            args.aligned,
            args.splits,
            args.evaluator,
            out,
            export,
            attack,
            run / "evaluate.json",
            name,
        )
        if record["row"] is None:
            print(f"{name}: {record['reason']}", flush=True)
            continue
        inversion = invert_model(
            run / "model.pt",
            args.aligned,
            args.splits,
            args.evaluator,
            out,
            dataclasses.replace(attack, invert_seconds=args.invert_seconds),
        )
        rows.append((name, record, inversion))
        print(f"{name}: {json.dumps(record['row'])}", flush=True)
    print(
        f"\nevaluator {args.evaluator}; chance top-1 {rows[0][1]['chance_top1']:.4f}; {args.seconds:.0f} CPU s per attacker\n"
    )
    print(
        "| method | S1 | S2 | S3 white | floor | S4 white | top-5 | PSNR | S3 black | S4 black | inversion top-1 / top-5 | Score_pp | Score_cls |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r, inv in rows:
        w, b, row = r["white"], r["black"], r["row"]
        print(
            f"| {name} | {row['S1']:.3f} | {row['S2']:.3f} | {w['S3']:.3f} | {w['floor']:.3f} | {w['S4']:.3f} | {w['top5']:.3f} | {w['psnr']:.1f} | "
            f"{b['S3']:.3f} | {b['S4']:.3f} | {inv['decoder']['top1']:.3f} / {inv['decoder']['top5']:.3f} | {row['Score_pp']:.3f} | {row['Score_cls']:.3f} |"
        )


if __name__ == "__main__":
    main()
