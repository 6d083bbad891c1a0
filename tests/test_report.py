"""`fmix report` on fixed inputs: the method table, the figures, the self-contained page, the errors."""

import json
import re

import yaml
from typer.testing import CliRunner

from fmix.cli import app

runner = CliRunner()


def _entry(
    results,
    models,
    name,
    method,
    accuracy,
    privacy_row=None,
    k_histogram=None,
    k_by_difficulty=None,
    check_s4=0.5,
    inversion_top1=0.25,
    mean_k=3.0,
    folds=None,
):
    folder = results / name
    folder.mkdir(parents=True)
    verification = {"accuracy_mean": accuracy, "accuracy_std": 0.05, "auc": 0.9, "tar_at_far_1e-3": None}
    if folds is not None:
        verification["fold_accuracies"] = folds
    (folder / "verification.json").write_text(
        json.dumps({"method": method, "verification": verification, "raw_feature_floor": {"accuracy_mean": 0.6}})
    )
    check = {
        "check": {"S4": check_s4},
        "check_min_s4": 0.25,
        "attack_works": check_s4 >= 0.25,
        "worst_stratum": {"attacker": "black", "stratum": "20+", "n": 12, "S4": 0.375},
    }
    privacy = (
        {"row": privacy_row, "chance_top1": 0.004, "judge": "dlib", **check}
        if privacy_row
        else {"row": None, "reason": "nothing to reconstruct"}
    )
    (folder / "privacy.json").write_text(json.dumps(privacy))
    (folder / "inversion.json").write_text(json.dumps({"decoder": {"top1": inversion_top1, "chance": 0.004}}))
    log = [
        {"epoch": e, "loss": 10.0 - e, "val_accuracy": 0.1 * e, **({"k_histogram": k_histogram} if k_histogram else {})}
        for e in range(3)
    ]
    (models / name).mkdir(parents=True)
    (models / name / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    summary = {
        "final_mean_k": mean_k if k_histogram else None,
        "final_k_histogram": k_histogram,
        "final_k_by_difficulty": k_by_difficulty,
    }
    (models / name / "train_summary.json").write_text(json.dumps(summary))


def test_report_tables_figures_and_page(tmp_path):
    results, models, out = tmp_path / "results", tmp_path / "models", tmp_path / "report"
    row = {"S1": 0.4, "S2": 0.1, "S3": 0.55, "S4": 0.2, "floor": 0.5, "Score_pp": 0.7}
    _entry(results, models, "none", "none", 0.84)
    _entry(results, models, "mixup3", "mixup", 0.61, row, {"3": 90})
    _entry(results, models, "mixup5", "mixup", 0.55, row, {"5": 90}, check_s4=0.125)  # its attackers fail the check
    params = tmp_path / "params.yaml"
    sweep = {
        "none": {"method": "none"},
        "mixup3": {"method": "mixup", "mixup": {"k": 3}},
        "mixup5": {"method": "mixup", "mixup": {"k": 5}},
    }
    params.write_text(yaml.safe_dump({"train": {}, "sweep": sweep}, sort_keys=False))
    result = runner.invoke(app, ["report", str(results), str(models), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "methods.json").read_text())
    assert list(table) == ["none", "mixup3", "mixup5"]
    assert table["mixup3"] == {
        "method": "mixup",
        "accuracy": 0.61,
        "accuracy_std": 0.05,
        "auc": 0.9,
        "tar_1e-3": None,
        "floor_accuracy": 0.6,
        "S1": 0.4,
        "S2": 0.1,
        "S3": 0.55,
        "S4": 0.2,
        "S4_worst": 0.375,
        "worst_stratum": "20+ (black, n 12)",
        "ssim_floor": 0.5,
        "chance": 0.004,
        "check_S4": 0.5,
        "attack_works": True,
        "Score_pp": 0.7,
        "Score_cls": 0.61,
        "inversion_top1": 0.25,
        "mean_k": 3.0,
        "epsilon": None,
    }
    markdown = (out / "report.md").read_text()
    assert (
        "| mixup3 | 0.610 | 0.050 | 0.900 | — | 0.600 | 0.400 | 0.100 | 0.550 | 0.200 | 0.375 | 20+ (black, n 12) | 0.500 | 0.004 | 0.500 | yes | 0.700 | 0.610 | 0.250 | 3.000 | — |"
        in markdown
    )
    assert (
        "| mixup5 | 0.550 | 0.050 | 0.900 | — | 0.600 | 0.400 | 0.100 | 0.550 | 0.200 | 0.375 | 20+ (black, n 12) | 0.500 | 0.004 | 0.125 | no |"
        in markdown
    )
    # Uncredited privacy is said in the headline, before the table.
    headline = markdown.index("Headline: privacy NOT credited for mixup5 (check S4 0.125 < 0.25).")
    assert headline < markdown.index("## Methods") and "for them this run measured utility only" in markdown
    worst = (
        "Worst case, the people most at risk: the highest reconstruction top-1 in any stratum of photos per identity, over the attackers: "
        "mixup3 0.375 (20+ (black, n 12)); mixup5 0.375 (20+ (black, n 12), not credited: its check failed); chance 0.004."
    )
    assert worst in markdown and markdown.index(worst) < markdown.index("## Methods")
    assert "Strategy networks" not in markdown  # no adaptive entry
    assert "Not attacked: none: nothing to reconstruct." in markdown
    assert (
        "S2/S4 top-1 among the private identities by dlib's pretrained face descriptor (trained by no run)" in markdown
    )  # the judge the attacks used
    assert (out / "tradeoff.csv").read_text() == "method,Score_pp,accuracy\nmixup3,0.7,0.61\nmixup5,0.7,0.55\n"
    assert sorted(path.name for path in (out / "curves").iterdir()) == [
        "mixup3.csv",
        "mixup5.csv",
        "none.csv",
    ]  # one DVC plot per entry
    assert (
        out / "curves" / "mixup3.csv"
    ).read_text() == "epoch,loss,val_accuracy,mean_k\n1,10.0,0.0,\n2,9.0,0.1,\n3,8.0,0.2,\n"  # epochs from 1
    for figure in ("tradeoff.png", "curves.png", "k_distribution.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "Learned k against difficulty" not in markdown  # no learned policy in this sweep


def test_report_shows_the_learned_k_against_difficulty(tmp_path):
    results, models, out = tmp_path / "results", tmp_path / "models", tmp_path / "report"
    row = {"S1": 0.4, "S2": 0.1, "S3": 0.55, "S4": 0.2, "floor": 0.5, "Score_pp": 0.7}
    # Easiest quartile all k=4, hardest all k=2, the middle two half and half: MI = 0.5 bits.
    table = [[0, 0, 4], [2, 0, 2], [2, 0, 2], [4, 0, 0]]
    _entry(results, models, "adaptive", "adaptive", 0.7, row, {"2": 0.5, "3": 0.0, "4": 0.5}, table)
    params = tmp_path / "params.yaml"
    _entry(results, models, "adaptive_paper", "adaptive", 0.68, row, {"2": 0.5, "3": 0.0, "4": 0.5}, table)
    sweep = {
        "adaptive": {"method": "adaptive"},
        "adaptive_paper": {"method": "adaptive", "adaptive": {"policy_objective": "adversarial"}},
    }
    params.write_text(yaml.safe_dump({"train": {}, "sweep": sweep}, sort_keys=False))
    result = runner.invoke(app, ["report", str(results), str(models), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert (
        "Strategy networks: adaptive_paper: the paper's adversarial game (the strategy network maximises the FR loss, docs/design.md §3); "
        "adaptive: ours, the cooperative variant (the strategy network minimises it at the same mean-k budget)."
        in markdown
    )
    assert "Headline: privacy NOT credited" not in markdown  # every check passed
    assert (
        "| entry | mean k, quartile 1 | mean k, quartile 2 | mean k, quartile 3 | mean k, quartile 4 | MI (bits) | samples |"
        in markdown
    )
    assert "| adaptive | 4.00 | 3.00 | 3.00 | 2.00 | 0.500 | 16 |" in markdown


def test_report_errors(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sweep": {"adaptive": {"method": "adaptive"}}}))
    result = runner.invoke(
        app, ["report", str(tmp_path / "r"), str(tmp_path / "m"), str(tmp_path / "o"), "--params", str(params)]
    )
    assert result.exit_code == 1 and "error: no verification metrics for sweep entry adaptive" in result.output
    params.write_text("train: {}\n")
    result = runner.invoke(
        app, ["report", str(tmp_path / "r"), str(tmp_path / "m"), str(tmp_path / "o"), "--params", str(params)]
    )
    assert result.exit_code == 1 and "error: section 'sweep' must be a non-empty mapping" in result.output
    assert not (tmp_path / "o").exists()


def test_report_draws_the_frontier_of_fixed_k_and_both_policies(tmp_path):
    results, models, out = tmp_path / "results", tmp_path / "models", tmp_path / "report"
    row = {"S1": 0.4, "S2": 0.1, "S3": 0.55, "S4": 0.2, "floor": 0.5, "Score_pp": 0.7}
    sweep = {}
    for k in (3, 4):
        fixed = [0.7 - 0.02 * k] * 4
        ours = [0.71 - 0.02 * k + d for d in (0.02, 0.0, 0.01, -0.01)]  # 0.01 above fixed k, plus d per fold
        _entry(results, models, f"mixup{k}", "mixup", 0.7 - 0.02 * k, row, {str(k): 1.0}, mean_k=k, folds=fixed)
        _entry(
            results, models, f"ours{k}", "adaptive", 0.71 - 0.02 * k, row, {str(k): 1.0}, mean_k=k - 0.01, folds=ours
        )
        sweep[f"mixup{k}"] = {"method": "mixup", "mixup": {"k": k}}
        sweep[f"ours{k}"] = {"method": "adaptive", "adaptive": {"target_mean_k": float(k)}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {}, "sweep": sweep}, sort_keys=False))
    result = runner.invoke(app, ["report", str(results), str(models), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert "## The trade-off frontier" in markdown and "![trade-off frontier](frontier.png)" in markdown
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Paired over the folds: ours against fixed k at the same mean k (differences 0.03, 0.01, 0.02, 0.00).
    assert "| 3 | ours3 | mixup3 | 0.015 | 0.013 | 2.32 | 3 of 4 |" in markdown
    assert "| 4 | ours4 | mixup4 | 0.015 | 0.013 | 2.32 | 3 of 4 |" in markdown
    from fmix.pipeline.report import frontier_curves

    rows = json.loads((out / "methods.json").read_text())
    curves = frontier_curves(rows, {"ours3": "cooperative", "ours4": "cooperative"})
    assert {curve: [name for name, _ in points] for curve, points in curves.items()} == {
        "fixed k": ["mixup3", "mixup4"],
        "ours (cooperative)": ["ours3", "ours4"],
    }


def _report(tmp_path, entries, attack=None):
    results, models, out = tmp_path / "results", tmp_path / "models", tmp_path / "report"
    sweep = {}
    for name, method, accuracy, inversion_top1 in entries:
        _entry(results, models, name, method, accuracy, inversion_top1=inversion_top1)
        sweep[name] = {"method": method}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {}, "attack": attack or {}, "sweep": sweep}, sort_keys=False))
    result = runner.invoke(app, ["report", str(results), str(models), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    return (out / "report.md").read_text()


def test_model_inversion_is_a_smoke_test_until_it_names_people_from_the_undefended_model(tmp_path):
    markdown = _report(tmp_path / "weak", [("none", "none", 0.84, 0.031), ("ppfrfd", "ppfrfd", 0.8, 0.0)])
    headline = markdown.index(
        "Headline: model inversion is a smoke test in this run: from the undefended none model it names 0.031 of the "
        "identities (chance 0.004; its check asks 0.25), so its top-1 on the defences credits no privacy"
    )
    assert headline < markdown.index("## Methods")
    passing = _report(tmp_path / "works", [("none", "none", 0.84, 0.4), ("ppfrfd", "ppfrfd", 0.8, 0.0)])
    assert "model inversion is" not in passing
    stricter = _report(tmp_path / "strict", [("none", "none", 0.84, 0.4)], attack={"check_min_s4": 0.5})
    assert "it names 0.400 of the identities (chance 0.004; its check asks 0.5)" in stricter  # attack.check_min_s4
    unchecked = _report(tmp_path / "alone", [("ppfrfd", "ppfrfd", 0.8, 0.0)])
    assert (
        "Headline: model inversion is unchecked in this run: the sweep has no undefended entry (method none)"
        in unchecked
    )


def test_the_report_says_which_profile_made_it(tmp_path):
    from fmix.pipeline.profiles import PROFILES_DIR, merge
    from fmix.pipeline.report import profile_line
    from fmix_testing import REPO

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    line = profile_line(base, REPO)
    assert line.startswith("Profile: quick, the default run (params.yaml's defaults") and "5 sweep entries" in line
    assert line.endswith(
        "Full results come from the cpu profile (2 CPU cores) and the paper profile (GPUs): `fmix pipeline profile NAME`, docs/pipeline.md."
    )
    cpu = merge(base, yaml.safe_load((REPO / PROFILES_DIR / "cpu.yaml").read_text()))
    assert profile_line(cpu, REPO).startswith(
        "Profile: cpu (workflow/params/cpu.yaml merged into params.yaml); 9 sweep entries, 6 epochs"
    )
    assert profile_line({"train": {"epochs": 1}, "sweep": {}}, REPO).startswith(
        "Profile: none of the named ones (params edited by hand)"
    )
    markdown = _report(tmp_path, [("none", "none", 0.84, 0.4)])
    assert markdown.index("Profile: none of the named ones") < markdown.index("## Methods")
