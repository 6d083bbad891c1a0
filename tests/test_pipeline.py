"""The two pipeline front ends (DVC and Snakemake) wire the same stages to the same commands."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmix_testing import REPO, copy_sample

PIPELINE_FILES = ("Snakefile", "workflow", "dvc.yaml", "params.yaml", "fmix")


def _env() -> dict:
    """The test interpreter's bin folder first on PATH, so the pipelines find this `fmix`."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _run(args, cwd) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _dvc_commands(root: Path) -> dict[str, str]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def resolve(text):
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(params[m.group(1).split(".")[0]][m.group(1).split(".")[1]]), text)

    return {name: resolve(stage["cmd"]) for name, stage in stages.items()}


def _snakemake_commands(root: Path) -> dict[str, str]:
    out = _run(["snakemake", "-n", "-p", "--cores", "1", "--forceall"], root)
    commands = {}
    for match in re.finditer(r"^rule (\w+):.*?^Shell command: (fmix [^\n]*)$", out, flags=re.M | re.S):
        commands[match.group(1)] = re.sub(r"\s*>\s*\S+\s+2>&1$", "", match.group(2).strip())
    return commands


def test_dvc_and_snakemake_run_the_same_commands():
    dvc = _dvc_commands(REPO)
    assert list(dvc) == ["align", "split", "export", "train", "evaluate", "export_policy", "mask", "evaluator", "attack", "invert"]
    assert _snakemake_commands(REPO) == dvc


def test_each_stage_reads_only_its_own_params_section():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        section = {"export_policy": "export", "invert": "attack"}.get(name, name)  # second uses of a section
        assert stage["params"] == [section]
        rule = (REPO / "workflow" / "rules" / f"{name}.smk").read_text()
        assert f'section=config["{section}"]' in rule and "log:" in rule


def test_dvc_status_parses_the_pipeline():
    out = _run(["dvc", "status"], REPO)
    assert "align" in out and "split" in out


@pytest.fixture()
def tiny_pipeline(tmp_path):
    """A copy of the pipeline files with params pointing at 8 real LFW identities."""
    root = tmp_path / "project"
    root.mkdir()
    for name in PIPELINE_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    images = copy_sample(tmp_path / "images", per_identity=5)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["images"] = str(images)
    params["align"].update(workers=1, max_identities=8)
    params["split"].update(folds=2, pairs_per_fold=4, private_fraction=0.25, public_fraction=0.25)
    params["train"].update(width=0.125, embedding_size=32, batch_size=4, epochs=1, threads=1, policy_warmup_epochs=0.0)
    params["evaluator"].update(width=0.125, epochs=1, threads=1)
    params["attack"].update(seconds=2.0, eval_faces=8, batch_size=4, invert_seconds=2.0, invert_identities=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.slow
def test_snakemake_runs_the_pipeline_on_real_faces(tiny_pipeline):
    _run(["snakemake", "--cores", "1"], tiny_pipeline)
    aligned = list((tiny_pipeline / "data" / "aligned").glob("*/*.png"))
    assert len(aligned) == 40
    assert "aligned 40 of 40 photos" in (tiny_pipeline / "logs" / "align.log").read_text()
    assert (tiny_pipeline / "data" / "splits" / "pairs.csv").read_text().count("\n") == 1 + 8
    protected = tiny_pipeline / "data" / "protected" / "train"
    train_rows = (tiny_pipeline / "data" / "splits" / "private_train.csv").read_text().count("\n") - 1
    index = [line.split(",") for line in (protected / "index.csv").read_text().splitlines()[1:]]
    summary = json.loads((protected / "summary.json").read_text())
    assert sum(len(row[3].split()) for row in index) + summary["skipped"] == train_rows  # each face in one sample
    assert (protected.parent / "fmix-ledger.jsonl").is_file()
    assert "k histogram" in (tiny_pipeline / "logs" / "mask.log").read_text()
    metrics = json.loads((tiny_pipeline / "metrics" / "verification.json").read_text())
    assert metrics["method"] == "adaptive" and 0.0 <= metrics["verification"]["accuracy_mean"] <= 1.0
    privacy = json.loads((tiny_pipeline / "metrics" / "privacy" / "privacy.json").read_text())
    assert 0.0 <= privacy["row"]["Score_pp"] <= 1.0 and privacy["row"]["Score_cls"] == metrics["verification"]["accuracy_mean"]
    assert (tiny_pipeline / "metrics" / "privacy" / "grid.png").is_file()
    unmix = json.loads((tiny_pipeline / "metrics" / "privacy" / "unmix.json").read_text())
    assert {"regenerate", "labels", "structure", "mix_baseline"} <= set(unmix) and unmix["regenerate"]["details"]["shards_matched"] == 0
    assert "decoder" in json.loads((tiny_pipeline / "metrics" / "privacy" / "inversion.json").read_text())


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_on_real_faces(tiny_pipeline):
    _run(["dvc", "init", "--no-scm", "-q"], tiny_pipeline)
    out = _run(["dvc", "repro"], tiny_pipeline)
    assert "aligned 40 of 40 photos" in out
    assert (tiny_pipeline / "data" / "splits" / "split.json").is_file()
    assert (tiny_pipeline / "metrics" / "verification.json").is_file()
    assert "didn't change" in _run(["dvc", "repro"], tiny_pipeline) or "up to date" in _run(["dvc", "status"], tiny_pipeline)
