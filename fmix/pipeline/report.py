"""The pipeline's report (``fmix report``): every sweep entry's utility and privacy in one place.

Reads, per entry of the params file's ``sweep`` section, ``<results>/<entry>/verification.json``,
``privacy.json``, ``inversion.json`` and the grids (the attack's in ``<entry>/attack/``, where the
pipeline puts them, else beside ``privacy.json``), and ``<models>/<entry>/train_log.jsonl``;
writes ``report.md`` (figures beside it), ``report.html`` (self-contained: figures inlined as
base64), ``methods.json`` (DVC metrics), ``tradeoff.csv`` and ``curves/<entry>.csv`` (DVC plots:
one training curve per entry, x = epoch, counted from 1 as in the figures) and the figures
``tradeoff.png``, ``curves.png``, ``k_distribution.png``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from fmix.io import atomic_write, read_json, write_json_atomic
from fmix.metrics.policy import mutual_information
from fmix.params import AttackParams, TrainParams, merge_sections, read_params_file, section_from_mapping, sweep_entries
from fmix.pipeline.profiles import PROFILES_DIR, profile_of

ATTACK_FILES = (
    "attack"  # <results>/<entry>/attack/: the grid (and masker) of `fmix attack protection --artifacts` in the pipeline
)
CURVES = "curves"  # <report>/curves/<entry>.csv
CURVE_COLUMNS = ("epoch", "loss", "val_accuracy", "mean_k")
PACKAGES = ("fmix-privacy", "torch", "numpy", "onnxruntime", "matplotlib", "dvc", "snakemake")
COLUMNS = (
    ("accuracy", "accuracy"),
    ("accuracy_std", "± std"),
    ("auc", "AUC"),
    ("tar_1e-3", "TAR@FAR 1e-3"),
    ("floor_accuracy", "raw floor"),
    ("S1", "S1"),
    ("S2", "S2"),
    ("S3", "S3"),
    ("S4", "S4"),
    ("S4_worst", "S4 worst stratum"),
    ("worst_stratum", "stratum (attacker)"),
    ("ssim_floor", "SSIM floor"),
    ("chance", "chance"),
    ("check_S4", "check S4"),
    ("attack_works", "attack works"),
    ("Score_pp", "Score_pp"),
    ("Score_cls", "Score_cls"),
    ("inversion_top1", "inversion top-1"),
    ("mean_k", "final mean k"),
    ("epsilon", "ε"),
)


@dataclass
class Block:
    """One piece of the report: a heading, paragraph, table, image or code block."""

    kind: str
    text: str = ""
    rows: list[list[str]] | None = None
    path: Path | None = None


def _read_json(path: Path) -> dict | None:
    """A JSON object of a stage, or None when the stage wrote none; a damaged file is an error naming it."""
    return read_json(path, f"{path.name} of the pipeline") if path.is_file() else None


def _has_numbers(values: object, keys: tuple[str, ...]) -> bool:
    return isinstance(values, dict) and all(
        isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool) for key in keys
    )


def _read_verification(path: Path, entry: str) -> dict:
    """``verification.json`` of ``fmix evaluate`` for a sweep entry, with the fields the report reads checked."""
    data = _read_json(path)
    if data is None:
        raise FileNotFoundError(f"no verification metrics for sweep entry {entry}: {path}")
    verification, floor = data.get("verification"), data.get("raw_feature_floor")
    if not (
        isinstance(data.get("method"), str)
        and _has_numbers(verification, ("accuracy_mean", "accuracy_std"))
        and _has_numbers(floor, ("accuracy_mean",))
    ):
        raise ValueError(
            f"{path} is not a verification.json of `fmix evaluate`: it needs 'method', 'verification' (accuracy_mean, accuracy_std) "
            "and 'raw_feature_floor' (accuracy_mean)"
        )
    return data


def _read_log(path: Path) -> list[dict]:
    """The rows of a training log (JSON lines); a bad line is an error naming the file and the line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from err
            if not isinstance(rows[-1], dict):
                raise ValueError(f"{path}, line {number}: expected a JSON object")
    return rows


def collect(results: Path, models: Path, entries: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Each entry's numbers: verification, privacy, inversion, training log.

    Args:
        results: the sweep's results folder (``data.results``).
        models: the sweep's models folder (``data.models``).
        entries: the sweep section (entry name -> train overrides).

    Returns:
        Entry name -> ``{"row": table values, "log": training log rows, "note": why it was not
        attacked, "judge": the S2/S4 judge}``.
    """
    out = {}
    for name in entries:
        verification = _read_verification(results / name / "verification.json", name)
        privacy = _read_json(results / name / "privacy.json") or {}
        inversion = _read_json(results / name / "inversion.json") or {}
        summary = _read_json(models / name / "train_summary.json") or {}
        log = _read_log(models / name / "train_log.jsonl")
        ver, floor = verification["verification"], verification["raw_feature_floor"]
        attack = privacy.get("row") or {}
        worst = privacy.get("worst_stratum") or {}
        row = {
            "method": verification["method"],
            "accuracy": ver["accuracy_mean"],
            "accuracy_std": ver["accuracy_std"],
            "auc": ver.get("auc"),
            "tar_1e-3": ver.get("tar_at_far_1e-3"),
            "floor_accuracy": floor["accuracy_mean"],
            "S1": attack.get("S1"),
            "S2": attack.get("S2"),
            "S3": attack.get("S3"),
            "S4": attack.get("S4"),
            "S4_worst": worst.get("S4"),
            "worst_stratum": f"{worst['stratum']} ({worst['attacker']}, n {worst['n']})" if worst else None,
            "ssim_floor": attack.get("floor"),
            "chance": privacy.get("chance_top1"),
            "check_S4": (privacy.get("check") or {}).get("S4"),
            "attack_works": privacy.get("attack_works"),
            "Score_pp": attack.get("Score_pp"),
            "Score_cls": ver["accuracy_mean"],
            "inversion_top1": (inversion.get("decoder") or {}).get("top1"),
            "mean_k": summary.get("final_mean_k"),
            "epsilon": summary.get("epsilon"),
        }
        out[name] = {
            "row": row,
            "log": log,
            "note": privacy.get("reason"),
            "judge": privacy.get("judge") or inversion.get("judge"),
            "check_min_s4": privacy.get("check_min_s4"),
            "inversion_chance": (inversion.get("decoder") or {}).get("chance"),
            "k_by_difficulty": summary.get("final_k_by_difficulty"),
            "k_values": list((summary.get("final_k_histogram") or {}).keys()),
            "folds": ver.get("fold_accuracies"),
        }
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _figure_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _write_png(path: Path, figure) -> Path:
    import matplotlib.pyplot as plt

    data = _figure_bytes(figure)
    plt.close(figure)
    with atomic_write(path, "wb") as out:
        out.write(data)
    return path


def tradeoff_figure(rows: dict[str, dict], path: Path) -> Path:
    """Privacy (Score_pp) against utility (verification accuracy), one point per entry, floors drawn."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.2))
    for name, row in rows.items():
        x = row["Score_pp"] if row["Score_pp"] is not None else 0.0  # no masking: the faces themselves are shared
        if row["Score_pp"] is None:
            axis.scatter([x], [row["accuracy"]], s=40, marker="x")
        elif row["attack_works"] is False:  # attackers too weak to credit privacy: a hollow point
            axis.scatter([x], [row["accuracy"]], s=40, marker="o", facecolors="none", edgecolors="grey")
        else:
            axis.scatter([x], [row["accuracy"]], s=40, marker="o")
        axis.annotate(name, (x, row["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for floor in sorted({round(row["floor_accuracy"], 3) for row in rows.values()}):
        axis.axhline(floor, linestyle="--", linewidth=0.8, color="grey")
        axis.text(0.01, floor, f" raw-feature floor {floor:.3f}", fontsize=7, color="grey", va="bottom")
    axis.axhline(0.5, linestyle=":", linewidth=0.8, color="black")
    axis.set(
        xlabel="privacy: Score_pp (higher is more private; x at 0: no masking)",
        ylabel="utility: verification accuracy",
        xlim=(-0.05, 1.05),
    )
    axis.set_title(
        "privacy / utility trade-off (dashed: floors, dotted: chance; hollow: privacy not credited)", fontsize=9
    )
    return _write_png(path, figure)


def curves_figure(logs: dict[str, list[dict]], path: Path) -> Path:
    """Training loss and closed-set validation accuracy per epoch (from 1), one line per entry."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, log in logs.items():
        epochs = [row["epoch"] + 1 for row in log]
        loss_axis.plot(epochs, [row["loss"] for row in log], marker=".", label=name)
        acc_axis.plot(epochs, [row["val_accuracy"] for row in log], marker=".", label=name)
    loss_axis.set(xlabel="epoch", ylabel="training loss")
    acc_axis.set(xlabel="epoch", ylabel="validation accuracy (un-mixed, closed set)")
    acc_axis.legend(fontsize=7)
    for axis in (loss_axis, acc_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, as in curves/<entry>.csv
    return _write_png(path, figure)


def k_figure(logs: dict[str, list[dict]], path: Path) -> Path:
    """The k distribution of each epoch (stacked fractions), one panel per entry that mixes."""
    import matplotlib.pyplot as plt

    mixing = {name: log for name, log in logs.items() if any("k_histogram" in row for row in log)}
    figure, axes = plt.subplots(1, max(1, len(mixing)), figsize=(3.6 * max(1, len(mixing)), 3.2), squeeze=False)
    if not mixing:
        axes[0][0].text(0.5, 0.5, "no sweep entry mixes faces", ha="center", va="center")
        axes[0][0].set_axis_off()
    for axis, (name, log) in zip(axes[0], mixing.items()):
        rows = [row for row in log if "k_histogram" in row]
        ks = sorted({int(k) for row in rows for k in row["k_histogram"]})
        bottom = [0.0] * len(rows)
        for k in ks:
            shares = []
            for row in rows:
                histogram = {int(key): value for key, value in row["k_histogram"].items()}
                total = sum(histogram.values()) or 1
                shares.append(histogram.get(k, 0) / total)
            axis.bar([row["epoch"] + 1 for row in rows], shares, bottom=bottom, label=f"k={k}")
            bottom = [b + s for b, s in zip(bottom, shares)]
        axis.set(title=name, xlabel="epoch", ylabel="share of samples", ylim=(0, 1))
        axis.legend(fontsize=7)
    return _write_png(path, figure)


def frontier_curves(rows: dict[str, dict], objectives: dict[str, str]) -> dict[str, list[tuple[str, dict]]]:
    """The sweep's points by curve: fixed k (``mixup``), ours (cooperative ``adaptive``) and the paper's game.

    Args:
        rows: entry -> its table row (``mean_k``, ``accuracy``, ``S4``, ``attack_works``).
        objectives: entry -> policy objective of the adaptive entries (:func:`policy_objectives`).

    Returns:
        Curve name -> its (entry, row) points ordered by mean k; only points with a mean k.
    """
    curves: dict[str, list[tuple[str, dict]]] = {}
    for name, row in rows.items():
        if row["mean_k"] is None:
            continue
        if row["method"] == "mixup":
            curve = "fixed k"
        elif name in objectives:
            curve = "paper's game (adversarial)" if objectives[name] == "adversarial" else "ours (cooperative)"
        else:
            continue
        curves.setdefault(curve, []).append((name, row))
    return {curve: sorted(points, key=lambda point: point[1]["mean_k"]) for curve, points in curves.items()}


def frontier_pairs(curves: dict[str, list[tuple[str, dict]]], folds: dict[str, list[float] | None]) -> list[dict]:
    """Each policy point against fixed k at the same mean k, and ours against the paper's game, paired over the folds.

    A policy point's budget is its mean k rounded to an integer; fixed k has exactly that mean k.

    Args:
        curves: :func:`frontier_curves`.
        folds: entry -> its verification accuracy per fold (None: not recorded).

    Returns:
        One dict per comparison: ``mean_k``, ``a``, ``b`` and
        :func:`~fmix.evaluate.verification.paired_fold_difference` of a minus b; comparisons whose
        folds are missing or differ in number are left out.
    """
    from fmix.evaluate.verification import paired_fold_difference

    def budget(row: dict) -> int:
        return round(row["mean_k"])

    fixed = {budget(row): name for name, row in curves.get("fixed k", [])}
    paper = {budget(row): name for name, row in curves.get("paper's game (adversarial)", [])}
    pairs = []
    for curve in ("ours (cooperative)", "paper's game (adversarial)"):
        for name, row in curves.get(curve, []):
            against = [fixed.get(budget(row))] + ([paper.get(budget(row))] if curve == "ours (cooperative)" else [])
            for other in against:
                a, b = folds.get(name), folds.get(other) if other else None
                if a and b and len(a) == len(b) >= 2:
                    pairs.append({"mean_k": budget(row), "a": name, "b": other, **paired_fold_difference(a, b)})
    return sorted(pairs, key=lambda pair: (pair["mean_k"], pair["a"], pair["b"]))


def frontier_figure(curves: dict[str, list[tuple[str, dict]]], path: Path) -> Path:
    """Accuracy against mean k and against S4, one line per curve (hollow points: privacy not credited)."""
    import matplotlib.pyplot as plt

    figure, (k_axis, s4_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    if not any(len(points) >= 2 for points in curves.values()):
        k_axis.text(0.5, 0.5, "no curve of two mean-k points in this sweep\n(profile frontier draws one)", ha="center")
    for curve, points in curves.items():
        rows = [row for _, row in points]
        accuracy = [row["accuracy"] for row in rows]
        errors = [row["accuracy_std"] or 0.0 for row in rows]
        k_axis.errorbar([row["mean_k"] for row in rows], accuracy, yerr=errors, marker="o", capsize=3, label=curve)
        credited = [row for row in rows if row["S4"] is not None]
        line = s4_axis.plot([row["S4"] for row in credited], [row["accuracy"] for row in credited], label=curve)[0]
        for row in credited:
            hollow = row["attack_works"] is False
            s4_axis.scatter(
                [row["S4"]],
                [row["accuracy"]],
                color=line.get_color(),
                facecolors="none" if hollow else line.get_color(),
            )
    k_axis.set(xlabel="mean k (faces per mix)", ylabel="verification accuracy (± fold std)")
    s4_axis.set(xlabel="white-box S4 (top-1 identified; lower is more private)", ylabel="verification accuracy")
    s4_axis.set_title("hollow: privacy not credited (attack check failed)", fontsize=8)
    k_axis.legend(fontsize=7)
    return _write_png(path, figure)


def versions() -> list[list[str]]:
    """Python and the versions of the packages the results depend on."""
    rows = [["python", platform.python_version()]]
    for name in PACKAGES:
        try:
            rows.append([name, metadata.version(name)])
        except metadata.PackageNotFoundError:
            rows.append([name, "not installed"])
    return rows


JUDGE_WORDS = {"dlib": "dlib's pretrained face descriptor (trained by no run)", "evaluator": "the RGB evaluator"}


def difficulty_rows(collected: dict[str, dict]) -> list[list[str]]:
    """Mean k per quartile of the un-mixed loss (last epoch's policy steps) and their mutual information, per learned policy.

    Args:
        collected: the output of :func:`collect`.

    Returns:
        A header row, then one row per entry whose policy logged k against difficulty (none: an empty list).
    """
    rows = []
    for name, item in collected.items():
        table, k_values = item.get("k_by_difficulty"), item.get("k_values")
        if not table or not k_values:
            continue
        means = [sum(int(k) * count for k, count in zip(k_values, counts)) / max(1, sum(counts)) for counts in table]
        rows.append(
            [name, *(f"{mean:.2f}" for mean in means), f"{mutual_information(table):.3f}", str(sum(map(sum, table)))]
        )
    if not rows:
        return []
    quartiles = [f"mean k, quartile {i + 1}" for i in range(len(rows[0]) - 3)]
    return [["entry", *quartiles, "MI (bits)", "samples"], *rows]


AGGREGATE_ATTACKS = (("single", "single sample"), ("heaviest", "mean where heaviest"), ("weighted", "weighted mean"))


def read_aggregate(path: str | Path) -> dict:
    """``aggregate.json`` of ``fmix attack aggregate``, with the fields the report reads checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON object with ``attacks``, ``controls``, ``headline``, ``strata`` and ``targets``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aggregate.json of `fmix attack aggregate` not found: {path}")
    data = read_json(path, "aggregate.json of `fmix attack aggregate`")
    attacks, controls = data.get("attacks"), data.get("controls")
    complete = (
        isinstance(attacks, dict)
        and all(_has_numbers(attacks.get(name), ("top1", "chance_top1")) for name, _ in AGGREGATE_ATTACKS)
        and isinstance(controls, dict)
        and all(_has_numbers(controls.get(name), ("top1",)) for name in ("positive", "shuffled"))
        and _has_numbers(data.get("headline"), ("top1", "top5", "chance_top1", "chance_top5"))
        and isinstance((data.get("strata") or {}).get("names"), list)
        and _has_numbers(data.get("targets"), ("selected",))
    )
    if complete:  # every attack and control scored per stratum
        names = data["strata"]["names"]
        parts = [attacks[name] for name, _ in AGGREGATE_ATTACKS] + [controls["positive"], controls["shuffled"]]
        complete = all(
            isinstance(part.get("by_stratum"), dict) and all(isinstance(part["by_stratum"].get(s), dict) for s in names)
            for part in parts
        )
    if not complete:
        raise ValueError(
            f"{path} is not an aggregate.json of `fmix attack aggregate`: it needs attacks (single, heaviest, weighted), controls (positive, shuffled), headline, strata and targets"
        )
    return data


def aggregate_blocks(record: dict) -> list[Block]:
    """The release's worst case (``aggregate.json``): top-1 per stratum of each attack, their maximum, chance and the controls."""
    attacks, controls, head = record["attacks"], record["controls"], record["headline"]
    positive, shuffled = controls["positive"], controls["shuffled"]
    header = [
        "stratum (photos)",
        "targets",
        *(title for _, title in AGGREGATE_ATTACKS),
        "max",
        "chance",
        "un-mixed control",
        "shuffled control",
    ]

    def row(title: str, scores: dict[str, dict]) -> list[str]:
        values = [scores[name]["top1"] for name, _ in AGGREGATE_ATTACKS]
        scored = [value for value in values if value is not None]
        return [
            title,
            str(scores["single"]["n"]),
            *map(_fmt, values),
            _fmt(max(scored) if scored else None),
            f"{scores['single']['chance_top1']:.4f}",
            _fmt(scores["positive"]["top1"]),
            _fmt(scores["shuffled"]["top1"]),
        ]

    everything = {
        name: attacks.get(name) or controls.get(name)
        for name in (*(n for n, _ in AGGREGATE_ATTACKS), "positive", "shuffled")
    }
    rows = [header, row("all", everything)]
    for stratum in record["strata"]["names"]:
        rows.append(row(stratum, {name: scores["by_stratum"][stratum] for name, scores in everything.items()}))
    targets = record["targets"]
    verdict = (
        f"The control (the same inverter on un-mixed masked photos of the same people) named {_fmt(positive['top1'])} of them, at least {positive.get('min_top1')} needed: the attack works at this budget."
        if record.get("attack_works")
        else f"The control (the same inverter on un-mixed masked photos of the same people) named only {_fmt(positive['top1'])} of them, below {positive.get('min_top1')}: "
        "the inverter is too weak at this budget and these numbers credit no privacy."
    )
    nulls = [attacks[name].get("null_top1") for name, _ in AGGREGATE_ATTACKS]
    null = (
        f" The judge named each target for the other targets' reconstructions at {' / '.join(map(_fmt, nulls))} "
        f"({', '.join(title for _, title in AGGREGATE_ATTACKS)}): what its favourite identities give for nothing."
        if all(isinstance(value, (int, float)) for value in nulls)
        else ""
    )
    return [
        Block("h2", "Worst case of the release: the people it holds most of"),
        Block(
            "p",
            f"The {targets['selected']} published labels that are the heaviest constituent of the most released samples "
            f"(median {(targets.get('heaviest_samples') or {}).get('median', '—')} samples each), attacked one by one from index.csv alone: "
            "one sample, the mean of what the attackers read (|x| under a sign mask) over the samples where the label is heaviest, and the weight-weighted mean "
            f"over every sample holding it, each inverted by the attack check's network. Top-1 among {record.get('identities', '—')} private identities "
            f"({record.get('judge', 'dlib')} judge), per stratum of photos per identity in the private training split. "
            f"Headline, the maximum over the attacks: top-1 {_fmt(head['top1'])} ({head.get('attack')}), top-5 {_fmt(head['top5'])}, "
            f"chance {head['chance_top1']:.4f} / {head['chance_top5']:.4f}; worst stratum {head.get('worst_stratum')}: top-1 {_fmt(head.get('worst_stratum_top1'))}. "
            f"{verdict} The shuffled control (each template scored as another target) named {_fmt(shuffled['top1'])}.{null}",
        ),
        Block("table", rows=rows),
    ]


def game_line(objectives: dict[str, str]) -> str | None:
    """One line naming which ``adaptive`` entries play the paper's game and which ours.

    Args:
        objectives: entry name -> its ``train.adaptive.policy_objective`` (entries of the adaptive method only).

    Returns:
        The line, or None without adaptive entries.
    """
    if not objectives:
        return None
    paper = sorted(name for name, objective in objectives.items() if objective == "adversarial")
    ours = sorted(name for name, objective in objectives.items() if objective != "adversarial")
    parts = []
    if paper:
        parts.append(
            f"{', '.join(paper)}: the paper's adversarial game (the strategy network maximises the FR loss, docs/design.md §3)"
        )
    if ours:
        parts.append(
            f"{', '.join(ours)}: ours, the cooperative variant (the strategy network minimises it at the same mean-k budget)"
        )
    return "Strategy networks: " + "; ".join(parts) + "."


def policy_objectives(entries: dict[str, dict], train: dict | None) -> dict[str, str]:
    """Entry -> ``policy_objective`` of every sweep entry that trains the adaptive method (its overrides on ``train``)."""
    out = {}
    for name, overrides in entries.items():
        params = section_from_mapping(TrainParams, merge_sections(train or {}, overrides), f"train (with sweep.{name})")
        if params.method == "adaptive":
            out[name] = params.adaptive.policy_objective
    return out


def profile_line(params: dict, root: str | Path = ".") -> str:
    """The report's first line: the profile the run used, its scale, and where the full results come from."""
    name = profile_of(params, root)
    train, attack = params.get("train") or {}, params.get("attack") or {}
    scale = (
        f"{len(params.get('sweep') or {})} sweep entries, {train.get('epochs')} epochs at width {train.get('width')}, "
        f"attackers of {attack.get('steps')} steps or {attack.get('seconds')} s"
    )
    if name == "quick":
        said = "quick, the default run (params.yaml's defaults: a check of every entry that fits a coffee break on 2 cores)"
    elif name is None:
        said = "none of the named ones (params edited by hand)"
    else:
        said = f"{name} ({PROFILES_DIR / (name + '.yaml')} merged into params.yaml)"
    return (
        f"Profile: {said}; {scale}. Full results come from the cpu profile (2 CPU cores) "
        "and the paper profile (GPUs): `fmix pipeline profile NAME`, docs/pipeline.md."
    )


def worst_case_line(collected: dict[str, dict]) -> str | None:
    """The headline on the people most at risk: each attacked entry's highest reconstruction top-1 in any stratum.

    Args:
        collected: entry -> its collected results (the rows' ``S4_worst``, ``worst_stratum``,
            ``attack_works`` and ``chance``).

    Returns:
        One sentence naming every entry's worst stratum (uncredited ones marked), or None when no
        entry was attacked per stratum.
    """
    attacked = {name: item["row"] for name, item in collected.items() if item["row"].get("S4_worst") is not None}
    if not attacked:
        return None
    parts = [
        f"{name} {_fmt(row['S4_worst'])} ({row['worst_stratum']}"
        + (", not credited: its check failed)" if row["attack_works"] is False else ")")
        for name, row in attacked.items()
    ]
    chance = next(iter(attacked.values()))["chance"]
    return (
        "Worst case, the people most at risk: the highest reconstruction top-1 in any stratum of photos per identity, "
        f"over the attackers: {'; '.join(parts)}; chance {_fmt(chance)}."
    )


def inversion_check(collected: dict[str, dict], check_min: float) -> str | None:
    """The headline on model inversion: None when it names ``check_min`` of the identities from an undefended model.

    Model inversion only credits privacy to a defence when the same attack recovers people from a
    model trained without one (method ``none``): that is its check, as the attack check is the
    reconstruction attacks'.

    Args:
        collected: :func:`collect`'s entries.
        check_min: the share of identities the inversion must name (``attack.check_min_s4``).

    Returns:
        The headline sentence, or None when the check passes or nothing was inverted.
    """
    inverted = {name: item for name, item in collected.items() if item["row"]["inversion_top1"] is not None}
    if not inverted:
        return None
    undefended = {name: item for name, item in inverted.items() if item["row"]["method"] == "none"}
    if not undefended:
        return (
            "Headline: model inversion is unchecked in this run: the sweep has no undefended entry (method none) "
            "to show that it names anyone, so its top-1 on the defences credits no privacy."
        )
    name, item = max(undefended.items(), key=lambda pair: pair[1]["row"]["inversion_top1"])
    top1 = item["row"]["inversion_top1"]
    if top1 >= check_min:
        return None
    return (
        f"Headline: model inversion is a smoke test in this run: from the undefended {name} model it names "
        f"{_fmt(top1)} of the identities (chance {_fmt(item['inversion_chance'])}; its check asks {check_min}), so its "
        "top-1 on the defences credits no privacy (give it more budget: attack.invert_seconds)."
    )


def build_blocks(
    collected: dict[str, dict],
    figures: dict[str, Path],
    grids: list[tuple[str, Path]],
    params_text: str,
    aggregate: dict | None = None,
    objectives: dict[str, str] | None = None,
    headlines: list[str] | None = None,
    frontier_stats: list[dict] | None = None,
) -> list[Block]:
    """The report's content, in order, for both renderings (``aggregate``: the release's worst case, :func:`aggregate_blocks`;
    ``objectives``: the adaptive entries' policy objectives, :func:`policy_objectives`; ``headlines``: paragraphs
    before everything else, the profile line and :func:`inversion_check`'s; ``frontier_stats``: :func:`frontier_pairs`)."""
    header = ["entry"] + [title for _, title in COLUMNS]
    table = [header] + [[name] + [_fmt(item["row"][key]) for key, _ in COLUMNS] for name, item in collected.items()]
    notes = [f"{name}: {item['note']}" for name, item in collected.items() if item["note"]]
    judges = sorted(
        {JUDGE_WORDS.get(item.get("judge"), str(item.get("judge"))) for item in collected.values() if item.get("judge")}
    ) or ["no judge"]
    weak = [
        f"{name} (check S4 {_fmt(item['row']['check_S4'])} < {item['check_min_s4']})"
        for name, item in collected.items()
        if item["row"]["attack_works"] is False
    ]
    blocks = [Block("h1", "fmix report")] + [Block("p", line) for line in headlines or [] if line]
    if weak:
        blocks.append(
            Block(
                "p",
                "Headline: privacy NOT credited for "
                + "; ".join(weak)
                + ". The attack check (the same white-box attack on the same masking, un-mixed) found the attackers too weak at this budget, "
                "so these entries' S3, S4 and Score_pp credit no privacy: for them this run measured utility only "
                "(give the attackers more steps: attack.steps, attack.seconds).",
            )
        )
    line = game_line(objectives or {})
    blocks += [
        Block(
            "p",
            "Verification on held-out identities (accuracy over folds ± fold std, AUC, TAR@FAR) beside the raw-feature floor; "
            "reconstruction attacks S1-S4 (S1/S3 SSIM against the best constituent, read against the SSIM floor of the mean public face; "
            f"S2/S4 top-1 among the private identities by {' and '.join(judges)}, read against chance; S3/S4 of the white-box attacker that names "
            "the most: trained on the mixes, or, where the attackers' shared prior serves the masking, the prior fine-tuned on them or applied to them as they are; "
            "S4 worst stratum: the highest "
            "top-1 of the white-box and black-box attackers in a stratum of photos per identity (2-4, 5-19, 20+), the people most at risk), Score_pp = 0.4 (1 - (S1+S2)/2) + 0.6 (1 - (S3+S4)/2), Score_cls = verification accuracy; "
            "model inversion top-1 (decoder); ε where the method defines one.",
        ),
        Block("h2", "Methods"),
        Block("table", rows=table),
    ]
    if line:
        blocks.append(Block("p", line))
    if notes:
        blocks.append(Block("p", "Not attacked: " + "; ".join(notes) + "."))
    if aggregate is not None:
        blocks += aggregate_blocks(aggregate)
    blocks += [
        Block("h2", "Privacy against utility"),
        Block("img", "privacy/utility scatter", path=figures["tradeoff"]),
    ]
    if "frontier" in figures:
        blocks += [
            Block("h2", "The trade-off frontier"),
            Block(
                "p",
                "Fixed k, our cooperative policy and the paper's adversarial game at each mean-k budget: accuracy against mean k "
                "and against white-box S4. Where one curve lies above another at the same mean k (or S4) it dominates there; "
                "read differences against the fold std.",
            ),
            Block("img", "trade-off frontier", path=figures["frontier"]),
        ]
        if frontier_stats:
            header = ["mean k", "a", "b", "a − b (accuracy)", "std of the fold differences", "t", "folds a won"]
            table = [header] + [
                [str(pair["mean_k"]), pair["a"], pair["b"], _fmt(pair["mean"]), _fmt(pair["std"]), f"{pair['t']:.2f}"]
                + [f"{pair['wins']} of {pair['folds']}"]
                for pair in frontier_stats
            ]
            blocks += [
                Block(
                    "p",
                    "Paired over the same verification folds: each policy against fixed k at its mean k, and ours against the "
                    "paper's game; |t| above about 2.3 (10 folds) is a difference the folds resolve.",
                ),
                Block("table", rows=table),
            ]
    blocks += [
        Block("h2", "Training curves"),
        Block("img", "training curves", path=figures["curves"]),
        Block("h2", "Learned k over epochs"),
        Block("img", "k distribution", path=figures["k"]),
    ]
    by_difficulty = difficulty_rows(collected)
    if by_difficulty:
        blocks += [
            Block("h2", "Learned k against difficulty"),
            Block(
                "p",
                "The last epoch's policy steps: the mean k the policy drew in each quartile of the frozen FR network's un-mixed loss "
                "(quartile 1: the easiest samples of the batch), and the mutual information between k and the quartile. "
                "A policy that ignores the sample still shows a small positive MI from the finite count (about 0.01-0.02 bits here).",
            ),
            Block("table", rows=by_difficulty),
        ]
    blocks.append(Block("h2", "Image grids"))
    for title, path in grids:
        blocks += [Block("h3", title), Block("img", title, path=path)]
    blocks += [
        Block("h2", "Versions"),
        Block("table", rows=[["package", "version"]] + versions()),
        Block("h2", "Parameters"),
        Block("code", params_text),
    ]
    return blocks


def render_markdown(blocks: list[Block], folder: Path) -> str:
    """Markdown; images linked relative to the report's folder."""
    parts = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append("#" * int(block.kind[1]) + " " + block.text)
        elif block.kind == "p":
            parts.append(block.text)
        elif block.kind == "table":
            head, *body = block.rows
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            parts.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]))
        elif block.kind == "img":
            parts.append(f"![{block.text}]({Path(os.path.relpath(block.path, folder)).as_posix()})")
        elif block.kind == "code":
            parts.append("```yaml\n" + block.text.rstrip() + "\n```")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block]) -> str:
    """One self-contained HTML page: images inlined as base64 data URIs."""
    parts = []
    for block in blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append(f"<{block.kind}>{html.escape(block.text)}</{block.kind}>")
        elif block.kind == "p":
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif block.kind == "table":
            head, *body = block.rows
            cells = "".join(f"<th>{html.escape(cell)}</th>" for cell in head)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body)
            parts.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>")
        elif block.kind == "img":
            data = base64.b64encode(block.path.read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(block.text)}" src="data:image/png;base64,{data}">')
        elif block.kind == "code":
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
    style = "body{font-family:sans-serif;max-width:72em;margin:2em auto}table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}img{max-width:100%}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>fmix report</title><style>{style}</style></head><body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_write(path) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_curves(folder: Path, logs: dict[str, list[dict]]) -> list[Path]:
    """``<folder>/<entry>.csv`` per entry: epoch (from 1, as in the figures), loss, val_accuracy, mean_k.

    CSV files of entries no longer in the sweep are removed, so the folder (one DVC plot per file)
    holds this sweep only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.csv"):
        if stale.stem not in logs:
            stale.unlink()
    written = []
    for name, log in logs.items():
        rows = [[row["epoch"] + 1, row["loss"], row["val_accuracy"], row.get("mean_k")] for row in log]
        _write_csv(folder / f"{name}.csv", list(CURVE_COLUMNS), rows)
        written.append(folder / f"{name}.csv")
    return written


def write_report(
    results: str | Path,
    models: str | Path,
    out_dir: str | Path,
    params_path: str | Path,
    aggregate: str | Path | None = None,
    root: str | Path = ".",
) -> dict[str, dict]:
    """Collect every sweep entry's results and write the report files.

    Args:
        results: the sweep's results folder (``data.results``).
        models: the sweep's models folder (``data.models``).
        out_dir: the report folder (``data.report``).
        params_path: the params file (its ``sweep`` section orders the entries; all of it is shown).
        aggregate: ``aggregate.json`` of ``fmix attack aggregate`` (the release's worst case; its
            ``aggregate_grid.png`` beside it is shown too), or None.
        root: the repository root holding ``workflow/params/`` (the profiles the report names).

    Returns:
        Entry name -> its table row (as in ``methods.json``).
    """
    from fmix._optional import require

    require("matplotlib", "pipeline").use("Agg")
    results, models, out_dir = Path(results), Path(models), Path(out_dir)
    params = read_params_file(params_path)
    entries = sweep_entries(params.get("sweep"), params.get("train"))
    worst = read_aggregate(aggregate) if aggregate is not None else None
    collected = collect(results, models, entries)
    rows = {name: item["row"] for name, item in collected.items()}
    logs = {name: item["log"] for name, item in collected.items()}
    figures = {
        "tradeoff": tradeoff_figure(rows, out_dir / "tradeoff.png"),
        "curves": curves_figure(logs, out_dir / "curves.png"),
        "k": k_figure(logs, out_dir / "k_distribution.png"),
    }
    grids = []
    for name in entries:
        attack_grid = next(
            (
                path
                for path in (results / name / ATTACK_FILES / "grid.png", results / name / "grid.png")
                if path.is_file()
            ),
            None,
        )
        if attack_grid is not None:
            grids.append((f"{name}: original / protected / white-box reconstruction", attack_grid))
        if (results / name / "inversion_grid.png").is_file():
            grids.append((f"{name}: model inversion", results / name / "inversion_grid.png"))
    if aggregate is not None and (Path(aggregate).parent / "aggregate_grid.png").is_file():
        grids.append(
            (
                "release: original / single sample / mean where heaviest / weighted mean, inverted",
                Path(aggregate).parent / "aggregate_grid.png",
            )
        )
    objectives = policy_objectives(entries, params.get("train"))
    curves = frontier_curves(rows, objectives)
    frontier = frontier_figure(curves, out_dir / "frontier.png")  # always written: a declared output
    if sum(len(points) >= 2 for points in curves.values()) >= 2:  # shown with two curves of two points or more
        figures["frontier"] = frontier
    check_min = section_from_mapping(AttackParams, params.get("attack") or {}, "attack").check_min_s4
    headlines = [profile_line(params, root), worst_case_line(collected), inversion_check(collected, check_min)]
    stats = frontier_pairs(curves, {name: item["folds"] for name, item in collected.items()})
    blocks = build_blocks(
        collected, figures, grids, yaml.safe_dump(params, sort_keys=False), worst, objectives, headlines, stats
    )
    write_json_atomic(out_dir / "methods.json", rows)
    _write_csv(
        out_dir / "tradeoff.csv",
        ["method", "Score_pp", "accuracy"],
        [[name, row["Score_pp"], row["accuracy"]] for name, row in rows.items() if row["Score_pp"] is not None],
    )
    write_curves(out_dir / CURVES, logs)
    with atomic_write(out_dir / "report.md") as out:
        out.write(render_markdown(blocks, out_dir))
    with atomic_write(out_dir / "report.html") as out:
        out.write(render_html(blocks))
    return rows
