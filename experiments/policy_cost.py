"""The strategy network's price (issue 34 item 5): training time of ``adaptive`` against fixed k, side by side.

Makes: the numbers behind the defaults of ``train.adaptive.policy_gradient`` / ``sampled_from`` /
``policy_batch`` / ``n_fr`` (params.yaml): ``fr_step_b16`` is the default since, ``old`` the one before.

Usage: python experiments/policy_cost.py [--out runs/policy_cost] [--identities 96] [--per-identity 20]
       [--epochs 4] [--seeds 0] [--arms mixup4 old ...] [--set train.width=0.25 ...]
Needs only the shared LFW photos (../shared/data/lfw). The first run aligns ``--identities`` people
with at least 15 photos (``--per-identity`` photos each) into OUT/aligned, splits them (70 % of the
people private, validation 20 % of their faces) and exports a masker; later runs reuse them.

Every arm trains with the train section of --params (the pipeline's recipe: IResNet-18 at width
0.5, batch 64, u = 2, 4 epochs, un-mixed for the first half, 1 thread) on those faces; only the
method and ``train.adaptive`` differ (:data:`ARMS`). The arms run one after the other, in an order
that rotates with the seed, so a slower or busier stretch of the machine does not fall on one arm
only. Printed per arm and seed: wall seconds of the whole ``fmix train`` (and per epoch), seconds
of the FR and policy steps of the game's epochs (the ``train_log.jsonl`` step timings) and their
ratio to mixup k=4's, ``policy_overhead`` (policy seconds / FR seconds, last epoch, as in
``train_summary.json``), closed-set validation accuracy, mean k and MI(k; difficulty) of the last
epoch. Then the mean over seeds, and the full quick run projected from the measured extra cost of
the game's epochs (the default run's 685 s / 1,151 s, issue 34): ``685 + F + (466 - F) * extra / extra_old``,
``extra`` being an arm's game-epoch step seconds minus mixup4's and ``F`` its extra wall seconds
outside the steps (the price's calibration on 1,024 faces per game epoch, as many at full scale).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
from compare_methods import parse_set  # a sibling script: experiments/ is on sys.path when run

from fmix.params import (
    ExportParams,
    MixingParams,
    MixupParams,
    SplitParams,
    TrainParams,
    check_sections,
    load_section,
)
from fmix.train.loop import train

REPO = Path(__file__).resolve().parents[1]
# Settings of the game before issue 34 (the old default): every k scored on the whole batch, every 2 FR steps.
OLD_GAME = {"policy_gradient": "expected", "policy_batch": None, "n_fr": 2}
FR_STEP = {"policy_gradient": "sampled", "sampled_from": "fr_step"}
ARMS = {
    "mixup4": {"method": "mixup", "mixup": {"k": 4}},
    "old": {"method": "adaptive", "adaptive": OLD_GAME},
    "expected_b16": {"method": "adaptive", "adaptive": {**OLD_GAME, "policy_batch": 16}},
    "fr_step_b16": {"method": "adaptive", "adaptive": {**FR_STEP, "policy_batch": 16, "n_fr": 1}},
    "fr_step_b32": {"method": "adaptive", "adaptive": {**FR_STEP, "policy_batch": 32, "n_fr": 1}},
    "fr_step_n2": {
        "method": "adaptive",
        "adaptive": {**FR_STEP, "policy_batch": None, "n_fr": 2},
    },
    # The default game without the FR network's confidence as the policy's input (the masked face only).
    "fr_step_b16_no_signal": {
        "method": "adaptive",
        "adaptive": {**FR_STEP, "policy_batch": 16, "n_fr": 1, "policy_signal": "none"},
    },
}
QUICK_MIXUP4_S, QUICK_ADAPTIVE_S = 685.0, 1151.0  # the default (quick) run, issue 34


def prepare(out: Path, identities: int, per_identity: int) -> dict[str, Path]:
    """Aligned faces, splits and a masker for ``identities`` LFW people with >= 15 photos (made once)."""
    from fmix.data.align import align_folder
    from fmix.data.root import data_root
    from fmix.data.splits import make_split, write_split
    from fmix.masker.export import export_masker
    from fmix.params import AlignParams

    paths = {"aligned": out / "aligned", "splits": out / "splits", "masker": out / "masker.onnx"}
    if paths["masker"].exists():
        return paths
    photos = {d.name: sorted(d.iterdir()) for d in (data_root(relative_to=REPO) / "lfw/images_deepfunneled").iterdir()}
    names = sorted((n for n in photos if len(photos[n]) >= 15), key=lambda n: (-len(photos[n]), n))[:identities]
    for name in names:  # the first photos of each person, copied (the shared folder stays read-only)
        (out / "lfw" / name).mkdir(parents=True, exist_ok=True)
        for path in photos[name][:per_identity]:
            shutil.copy(path, out / "lfw" / name / path.name)
    align_folder(out / "lfw", paths["aligned"], AlignParams(workers=1), progress=False)
    split = SplitParams(folds=2, pairs_per_fold=20, private_fraction=0.7, public_fraction=0.15, val_fraction=0.2)
    write_split(make_split(paths["aligned"], split), paths["splits"], split)
    export_masker(paths["aligned"], paths["splits"] / "public.csv", paths["masker"], ExportParams())
    return paths


def arm_params(base: TrainParams, arm: dict, seed: int) -> TrainParams:
    changes: dict = {"method": arm["method"], "seed": seed}
    if "mixup" in arm:
        changes["mixup"] = MixupParams(**arm["mixup"])
    if "adaptive" in arm:
        changes["adaptive"] = dataclasses.replace(base.adaptive, **arm["adaptive"])
    return dataclasses.replace(base, **changes)


def run_arm(params: TrainParams, mixing: MixingParams, paths: dict[str, Path], out: Path) -> dict:
    """Train one arm (read back when done); its timings and accuracy."""
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    summary = train(params, paths["aligned"], paths["splits"], out, paths["masker"], progress=False, mixing=mixing)
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    game = [row for row in history if "mean_k" in row]  # the mixing epochs (the game's, for adaptive)
    steps = sum(
        row["fr_steps"] * row["seconds_per_fr_step"]
        + (row.get("policy_steps") or 0) * (row.get("seconds_per_policy_step") or 0.0)
        for row in game
    )
    result = {
        "wall": wall,
        "epochs": len(history),
        "game_step_seconds": steps,
        "policy_steps": sum(row.get("policy_steps") or 0 for row in game),
        "policy_overhead": summary.get("policy_overhead"),
        "val_accuracy": summary["val_accuracy"],
        "mean_k": summary["final_mean_k"],
        "mi": summary.get("final_k_difficulty_mutual_information"),
    }
    out.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result))
    return result


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/policy_cost"))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--identities", type=int, default=96)
    parser.add_argument("--per-identity", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--set", nargs="*", default=[], help="train.KEY=VALUE overrides (YAML values)")
    args = parser.parse_args()
    if "mixup4" not in args.arms or "old" not in args.arms:
        parser.error("--arms needs mixup4 and old: the ratios are against them")
    paths = prepare(args.out, args.identities, args.per_identity)
    base = load_section(
        TrainParams, args.params, "train", epochs=args.epochs, device="cpu", threads=1, **parse_set(args.set)
    )
    mixing = load_section(MixingParams, args.params, "mixing")
    torch.set_num_threads(base.threads)
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for n, seed in enumerate(args.seeds):
        order = args.arms[n % len(args.arms) :] + args.arms[: n % len(args.arms)]  # rotated with the seed
        for arm in order:
            params = arm_params(base, ARMS[arm], seed)
            check_sections(params, mixing)
            result = run_arm(params, mixing, paths, args.out / "arms" / arm / f"seed{seed}")
            results[arm].append(result)
            print(f"{arm} seed {seed}: {result['wall']:.0f} s, val {result['val_accuracy']:.3f}", flush=True)

    def mean(arm: str, key: str) -> float | None:
        values = [r[key] for r in results[arm] if r[key] is not None]
        return sum(values) / len(values) if values else None

    faces = sum(1 for _ in open(paths["splits"] / "private_train.csv")) - 1
    print(
        f"\n{faces} training faces, batch {base.batch_size}, width {base.width}, {args.epochs} epochs "
        f"(mixing from {base.mix_warmup_fraction * args.epochs:g}), seeds {args.seeds}, 1 thread"
    )
    print(
        "| arm | wall s | s/epoch | wall / mixup4 | game-epoch step s | game / mixup4 | policy steps | "
        "policy_overhead | val accuracy | mean k | MI bits | projected quick run / mixup4 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    m_wall, m_game = mean("mixup4", "wall"), mean("mixup4", "game_step_seconds")
    extra_old = mean("old", "game_step_seconds") - m_game
    for arm in args.arms:
        wall, game = mean(arm, "wall"), mean(arm, "game_step_seconds")
        extra = game - m_game
        # What does not scale with the steps (the price's calibration on 1,024 faces per game epoch): kept as measured.
        fixed = (wall - m_wall) - extra
        scaled = (QUICK_ADAPTIVE_S - QUICK_MIXUP4_S - fixed) * extra / extra_old
        projected = (QUICK_MIXUP4_S + fixed + scaled) / QUICK_MIXUP4_S
        accuracies = " / ".join(f"{r['val_accuracy']:.3f}" for r in results[arm])
        print(
            f"| {arm} | {wall:.0f} | {wall / args.epochs:.1f} | {wall / m_wall:.2f} | {game:.1f} | {game / m_game:.2f} | "
            f"{mean(arm, 'policy_steps'):.0f} | {fmt(mean(arm, 'policy_overhead'))} | "
            f"{accuracies} | {fmt(mean(arm, 'mean_k'))} | "
            f"{fmt(mean(arm, 'mi'), 3)} | {projected:.2f} |"
        )
    print("\n| arm | val accuracy - mixup4, paired by seed (mean, SE) | - old (mean, SE) |")
    print("|---|---|---|")
    for arm in args.arms:
        cells = []
        for against in ("mixup4", "old"):
            diffs = [a["val_accuracy"] - b["val_accuracy"] for a, b in zip(results[arm], results[against])]
            sem = (sum((d - sum(diffs) / len(diffs)) ** 2 for d in diffs) / max(1, len(diffs) - 1) / len(diffs)) ** 0.5
            cells.append(f"{sum(diffs) / len(diffs):+.3f} ({sem:.3f})")
        print(f"| {arm} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
