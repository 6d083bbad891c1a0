"""The pipeline: one stage table, two front ends (DVC and Snakemake) generated from it, the method
sweep, profiles, the SLURM profile, and tiny end-to-end runs of the real pipeline on real faces."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fmix.cli import app
from fmix.pipeline.generate import stale_files, write_generated
from fmix.pipeline.table import TableError, load_table
from fmix_testing import LFW_IMAGES, REPO, copy_sample

PIPELINE_FILES = ("Snakefile", "workflow", "dvc.yaml", "params.yaml", "fmix", "environment.yml", ".dvcignore")
runner = CliRunner()


def _env(root: Path | None = None) -> dict:
    """The test interpreter's bin folder first on PATH, so the pipelines find this `fmix` (and its code first)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    if root is not None:
        env["PYTHONPATH"] = str(root)
    return env


def _run(args, cwd) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def _copy_pipeline(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    return root


def _declared_outputs(root: Path) -> list[tuple[Path, bool]]:
    """Every output the stage table declares, with params.yaml's values and sweep entries put in: (path, is a folder)."""
    from fmix.pipeline.table import DATA_KEY

    params = yaml.safe_load((root / "params.yaml").read_text())
    found = []
    for stage in load_table(root / "workflow" / "stages.yaml").stages:
        for entry in params["sweep"] if stage.sweep else [None]:
            for out in stage.outputs.values():
                path = DATA_KEY.sub(lambda m: str(params["data"][m.group(1)]), out.path)
                found.append((root / (path.replace("{method}", entry) if entry else path), out.is_dir))
    return found


# ------------------------------------------------------------------------------- the stage table


def test_generated_front_ends_are_current():
    assert stale_files(REPO) == []
    result = runner.invoke(app, ["pipeline", "generate", "--check", "--root", str(REPO)])
    assert result.exit_code == 0 and "current" in result.output


def test_a_stage_in_only_one_front_end_fails(tmp_path):
    root = _copy_pipeline(tmp_path / "p")
    (root / "workflow" / "rules" / "extra.smk").write_text("rule extra:\n    output: 'x'\n    shell: 'touch x'\n")
    result = runner.invoke(app, ["pipeline", "generate", "--check", "--root", str(root)])
    assert result.exit_code == 1
    assert "error: not generated from workflow/stages.yaml: workflow/rules/extra.smk" in result.output
    (root / "workflow" / "rules" / "extra.smk").unlink()
    with (root / "dvc.yaml").open("a") as out:
        out.write("  extra:\n    cmd: fmix --version\n")
    assert stale_files(root) == ["dvc.yaml"]
    table = (root / "workflow" / "stages.yaml").read_text()
    extra = '  extra:\n    cmd: fmix split {aligned} data/x --params {params_file}\n    inputs: {aligned: "${data.aligned}/"}\n    outputs: {x: "data/x/"}\n    params: [split]\n'
    (root / "workflow" / "stages.yaml").write_text(table + "\n" + extra)
    assert stale_files(root) == ["Snakefile", "dvc.yaml", "workflow/rules/extra.smk"]
    assert write_generated(root) == ["Snakefile", "dvc.yaml", "workflow/rules/extra.smk"]
    assert stale_files(root) == []
    assert (
        "  extra:\n    cmd: fmix split ${data.aligned} data/x --params params.yaml\n" in (root / "dvc.yaml").read_text()
    )
    assert 'include: "workflow/rules/extra.smk"' in (root / "Snakefile").read_text()
    assert (
        "    priority: 2\n" in (root / "workflow" / "rules" / "unmix.smk").read_text()
    )  # the release's chain goes first


BAD_STAGES = [
    ({"cmd": "python x.py --params {params_file}", "outputs": {"o": "o"}}, r"'cmd' must be an fmix command"),
    (
        {"cmd": "fmix split {nothing} --params {params_file}", "outputs": {"o": "o"}},
        r"command uses \{nothing\}, which is no input, output or path",
    ),
    ({"cmd": "fmix split {o}", "outputs": {"o": "o"}}, r"the command must read --params \{params_file\}"),
    (
        {"cmd": "fmix split {o} --params {params_file}", "outputs": {"o": "${data.x}/{method}"}},
        r"uses \{method\} but the stage is not a sweep stage",
    ),
    ({"cmd": "fmix split {o} --params {params_file}", "outputs": {"o": "o"}, "thread": 2}, r"unknown key\(s\) thread"),
    (
        {"cmd": "fmix split {o} --params {params_file}", "outputs": {"o": "o"}, "threads": "two"},
        r"threads must be SECTION.KEY, got 'two'",
    ),
    (
        {
            "cmd": "fmix split {o} --params {params_file}",
            "outputs": {"o": "o"},
            "paths": {"split": "x"},
            "params": ["split"],
        },
        r"names \['split'\] are reserved",
    ),
    (
        {"cmd": "fmix split {o} --params {params_file}", "outputs": {"o": "o"}, "priority": "high"},
        r"priority must be an int >= 0, got 'high'",
    ),
]


@pytest.mark.parametrize("stage, message", BAD_STAGES)
def test_bad_stage_tables_are_rejected_with_the_reason(tmp_path, stage, message):
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump({"targets": ["s"], "stages": {"s": stage}}))
    with pytest.raises(TableError, match=message):
        load_table(path)


def test_targets_must_be_stages(tmp_path):
    path = tmp_path / "stages.yaml"
    path.write_text(
        yaml.safe_dump(
            {"targets": ["t"], "stages": {"s": {"cmd": "fmix split {o} --params {params_file}", "outputs": {"o": "o"}}}}
        )
    )
    with pytest.raises(TableError, match=r"'targets' must list stages of the table, got \['t'\]"):
        load_table(path)


def _dvc_commands(root: Path) -> dict[str, str]:
    """Every DVC stage's command with params.yaml's values put in (foreach expanded: train@none, ...)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]

    def resolve(text, key=None):
        text = text.replace("${key}", str(key))
        return re.sub(r"\$\{(\w+)\.(\w+)\}", lambda m: str(params[m.group(1)][m.group(2)]), text)

    commands = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            assert stage["foreach"] == "${sweep}"
            commands.update({f"{name}@{key}": resolve(stage["do"]["cmd"], key) for key in params["sweep"]})
        else:
            commands[name] = resolve(stage["cmd"])
    return commands


def _dry_run_jobs(out: str) -> list[str]:
    """The jobs of a Snakemake dry run, as rule or rule@entry."""
    jobs = []
    for block in re.split(r"^(?=rule \w+:$)", out, flags=re.M)[1:]:
        wildcard = re.search(r"^\s+wildcards: method=(\w+)$", block, flags=re.M)
        jobs.append(block.split(":")[0][5:] + (f"@{wildcard.group(1)}" if wildcard else ""))
    return jobs


def _snakemake_commands(root: Path) -> dict[str, str]:
    out = _run(["snakemake", "-n", "-p", "--cores", "1", "--forceall"], root)
    commands = {}
    for match in re.finditer(r"^rule (\w+):\n(.*?)^Shell command: (.*?)(fmix [^\n]*)$", out, flags=re.M | re.S):
        wildcard = re.search(r"wildcards: method=(\w+)", match.group(2))
        name = match.group(1) + (f"@{wildcard.group(1)}" if wildcard else "")
        assert re.fullmatch(r"OMP_NUM_THREADS=\d+ ", match.group(3)), (
            f"{name}: each job's torch must run on its own threads, got {match.group(3)!r}"
        )
        commands[name] = re.sub(r"\s*>\s*\S+\s+2>&1$", "", match.group(4).strip())
    return commands


def test_dvc_and_snakemake_run_the_same_commands():
    dvc = _dvc_commands(REPO)
    entries = list(yaml.safe_load((REPO / "params.yaml").read_text())["sweep"])
    assert entries == ["none", "ppfrfd", "mixup4", "adaptive", "adaptive_paper"]
    assert {name.split("@")[0] for name in dvc} == set(load_table(REPO / "workflow" / "stages.yaml").names())
    assert "train@mixup4" in dvc and "--sweep mixup4" in dvc["train@mixup4"]
    assert _snakemake_commands(REPO) == dvc


def test_each_stage_declares_the_params_sections_it_reads():
    table = {stage.name: stage for stage in load_table(REPO / "workflow" / "stages.yaml").stages}
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        assert body["params"] == [section.replace("{method}", "${key}") for section in table[name].params]
        rule = (REPO / "workflow" / "rules" / f"{name}.smk").read_text()
        assert "log:" in rule and "code=[" in rule and "fmix/cli/app.py" in body["deps"]
        for section in table[name].params:
            assert (f'{section}=config["{section}"]' in rule) or (
                section == "sweep.{method}" and 'config["sweep"][wildcards.method]' in rule
            )
    assert table["train"].params == ("train", "mixing", "sweep.{method}", "launch") and table["evaluator"].params == (
        "evaluator",
        "train",
    )
    assert table["export"].params == ("export", "mixing")


def test_dvc_status_parses_the_pipeline():
    out = _run(["dvc", "status"], REPO)
    assert "align" in out and "train@adaptive" in out


def test_snakemake_lint_is_clean():
    out = _run(["snakemake", "--lint"], REPO)
    assert "Congratulations" in out


def test_the_slurm_profile_asks_gpus_for_exactly_the_stages_that_use_one():
    from fmix.pipeline.table import load_table

    table = load_table(REPO / "workflow" / "stages.yaml")
    wants_gpu = {stage.name for stage in table.stages if stage.gpu}
    profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    on_gpu_partition = {
        name for name, resources in profile["set-resources"].items() if resources.get("slurm_partition") == "gpu"
    }
    assert wants_gpu == on_gpu_partition and {"train", "evaluate", "attack", "invert"} <= wants_gpu


def test_slurm_profile_dry_run_runs_the_paper_profile_on_gpus(tmp_path):
    root = _copy_pipeline(tmp_path / "p")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["images"] = str(LFW_IMAGES)  # the copy is not beside ../shared
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["snakemake", "-n", "--profile", "workflow/profiles/slurm"], root)
    paper = yaml.safe_load((REPO / "workflow" / "params" / "paper.yaml").read_text())
    entries = len(paper["sweep"])  # every method of the registry, mixup at several k
    assert re.search(rf"^train\s+{entries}$", out, flags=re.M) and entries >= 8
    train = re.search(r"^rule train:\n.*?^Shell command: ([^\n]*)$", out, flags=re.M | re.S).group(0)
    assert "slurm_partition=gpu" in train and "gpu=1" in train and "runtime=2880" in train
    assert "--params logs/params/config.yaml" in train
    copy = yaml.safe_load((root / "logs" / "params" / "config.yaml").read_text())
    assert copy["train"]["backbone"] == "iresnet50" and copy["export"]["upsample"] == 8
    report = re.search(r"^rule report:\n.*?^Shell command", out, flags=re.M | re.S).group(0)
    assert "slurm_partition=cpu" in report and "gpu=" not in report


# ---------------------------------------------------------------------------- profiles, launch


def test_profile_merges_an_overlay_and_rejects_unknown_names(tmp_path):
    root = _copy_pipeline(tmp_path / "p")
    text = (root / "params.yaml").read_text()
    comments = [
        line[line.index("#") :] for line in text[: text.index("\nsweep:")].splitlines() if "#" in line
    ]  # the sweep is replaced whole
    result = runner.invoke(
        app, ["pipeline", "profile", "ci", "--params", str(root / "params.yaml"), "--root", str(root)]
    )
    assert result.exit_code == 0, result.output
    kept = (root / "params.yaml").read_text()
    assert (
        len(comments) > 40 and [comment for comment in comments if comment not in kept] == []
    )  # the comments survive the merge
    assert "runs sweep entries none, ppfrfd, mixup4, adaptive" in result.output
    merged = yaml.safe_load((root / "params.yaml").read_text())
    assert merged["train"]["epochs"] == 1 and merged["train"]["backbone"] == "iresnet18"  # overlay key, kept key
    assert merged["data"] == yaml.safe_load((REPO / "params.yaml").read_text())["data"]
    bad = runner.invoke(
        app, ["pipeline", "profile", "huge", "--params", str(root / "params.yaml"), "--root", str(root)]
    )
    assert (
        bad.exit_code == 1
        and "error: unknown profile 'huge'; profiles: quick, ci, cpu, frontier, methods, paper, privacy" in bad.output
    )


def test_every_profile_merges_into_valid_params():
    from fmix.params import validate_params
    from fmix.pipeline.profiles import PROFILES_DIR, merge, profile_names

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    names = profile_names(REPO)
    assert names == ["quick", "ci", "cpu", "frontier", "methods", "paper", "privacy"]
    for name in names[1:]:
        overlay = yaml.safe_load((REPO / PROFILES_DIR / f"{name}.yaml").read_text())
        validate_params(merge(base, overlay), f"profile {name}")
    privacy = merge(base, yaml.safe_load((REPO / PROFILES_DIR / "privacy.yaml").read_text()))
    assert (
        privacy["sweep"] == base["sweep"]
        and privacy["train"] == base["train"]
        and privacy["attack"]["seconds"] == 300.0
    )  # quick models, strong attackers
    for name in ("privacy", "cpu", "paper"):  # time budgets: the quick profile's 20 steps must not cut them short
        assert (
            merge(base, yaml.safe_load((REPO / PROFILES_DIR / f"{name}.yaml").read_text()))["attack"]["steps"] is None
        )


def test_a_params_mapping_names_the_profile_it_was_made_with():
    from fmix.pipeline.profiles import PROFILES_DIR, merge, profile_names, profile_of

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert profile_of(base, REPO) == "quick"
    for name in profile_names(REPO)[1:]:
        merged = merge(base, yaml.safe_load((REPO / PROFILES_DIR / f"{name}.yaml").read_text()))
        assert profile_of(merged, REPO) == name
        assert profile_of(merge(merged, {"train": {"epochs": 99}}), REPO) in (
            None,
            name,
        )  # kept only if it sets no epochs
    assert profile_of(merge(base, {"train": {"epochs": 99}}), REPO) is None  # edited by hand
    assert profile_of(merge(base, {"sweep": {"none": {"method": "none"}}}), REPO) is None


def _adaptive_budgets(params: dict) -> dict[str, tuple[str, float]]:
    """Sweep entry -> (policy objective, mean-k budget) of every adaptive entry."""
    from fmix.params import TrainParams, merge_sections, section_from_mapping

    out = {}
    for name, overrides in params["sweep"].items():
        train = section_from_mapping(TrainParams, merge_sections(params["train"], overrides), name)
        if train.method == "adaptive":
            out[name] = (train.adaptive.policy_objective, train.adaptive.target_mean_k)
    return out


def test_the_papers_game_runs_beside_ours_in_every_results_profile():
    from fmix.pipeline.profiles import PROFILES_DIR, merge

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in ("quick", "ci", "cpu", "methods", "paper"):
        params = (
            base if name == "quick" else merge(base, yaml.safe_load((REPO / PROFILES_DIR / f"{name}.yaml").read_text()))
        )
        budgets = _adaptive_budgets(params)
        assert budgets["adaptive"][0] == "cooperative" and budgets["adaptive_paper"][0] == "adversarial", name
        assert budgets["adaptive"][1] == budgets["adaptive_paper"][1] == 4.0, name  # the same mean-k budget
        assert params["sweep"]["mixup4"] == {"method": "mixup", "mixup": {"k": 4}}, name  # fixed k at that budget
    frontier = merge(base, yaml.safe_load((REPO / PROFILES_DIR / "frontier.yaml").read_text()))
    points = sorted(_adaptive_budgets(frontier).values())
    assert points == [(objective, k) for objective in ("adversarial", "cooperative") for k in (3.0, 4.0, 5.0)]
    assert {f"mixup{k}" for k in range(2, 7)} | {"none", "ppfrfd"} <= set(frontier["sweep"])
    cpu = merge(base, yaml.safe_load((REPO / PROFILES_DIR / "cpu.yaml").read_text()))
    stacked = merge(cpu, yaml.safe_load((REPO / PROFILES_DIR / "frontier.yaml").read_text()))
    assert {key: stacked[key] for key in ("split", "train", "attack")} == {
        key: cpu[key] for key in ("split", "train", "attack")
    }  # an axis: the recipe is the profile it is applied to
    for params in (frontier, stacked):
        assert params["data"]["release"] in params["sweep"]  # the release's entry is trained


def test_params_file_for_snakemake_overrides(tmp_path):
    from fmix.pipeline.profiles import params_file_for

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    config = yaml.safe_load(params.read_text())
    assert params_file_for(config, params, tmp_path / "copy.yaml") == str(params)
    config["sweep"]["mixup4"]["mixup"]["k"] = 6
    path = params_file_for(config, params, tmp_path / "copy.yaml")
    assert path == str(tmp_path / "copy.yaml") and yaml.safe_load(Path(path).read_text())["sweep"]["mixup4"] == {
        "method": "mixup",
        "mixup": {"k": 6},
    }


@pytest.mark.parametrize(
    "launch, env, expected",
    [
        ({"gpus_per_node": 0}, {}, [sys.executable, "-m", "fmix", "train", "A"]),
        ({"gpus_per_node": 1}, {}, [sys.executable, "-m", "fmix", "train", "A"]),
        (
            {"gpus_per_node": 4},
            {},
            ["torchrun", "--nnodes", "1", "--nproc_per_node", "4", "--standalone", "-m", "fmix", "train", "A"],
        ),
        (
            {"gpus_per_node": 4, "nodes": 2},
            {"MASTER_ADDR": "node07", "SLURM_JOB_ID": "42"},
            [
                "srun",
                "--nodes",
                "2",
                "--ntasks-per-node",
                "1",
                "torchrun",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "4",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                "node07:29500",
                "--rdzv_id",
                "42",
                "-m",
                "fmix",
                "train",
                "A",
            ],
        ),
    ],
)
def test_launch_starts_torchrun_only_for_more_than_one_process(launch, env, expected):
    from fmix.params import LaunchParams
    from fmix.pipeline.launch import launch_command

    assert launch_command(LaunchParams(**launch), ["train", "A"], env) == expected


def test_launch_errors(tmp_path):
    from fmix.params import LaunchParams
    from fmix.pipeline.launch import launch_command

    with pytest.raises(ValueError, match="launch.nodes > 1 needs a SLURM allocation"):
        launch_command(LaunchParams(gpus_per_node=2, nodes=2), ["train"], {})
    params = tmp_path / "p.yaml"
    params.write_text("launch: {gpus_per_node: 2}\n")
    result = runner.invoke(app, ["launch", "--params", str(params), "--dry-run", "--", "train", "A", "--params", "x"])
    assert (
        result.exit_code == 0
        and result.output.strip() == "torchrun --nnodes 1 --nproc_per_node 2 --standalone -m fmix train A --params x"
    )
    params.write_text("launch: {nodes: 0}\n")
    result = runner.invoke(app, ["launch", "--params", str(params), "--", "train"])
    assert result.exit_code == 1 and "error: launch.gpus_per_node must be >= 0 and launch.nodes >= 1" in result.output


def test_train_sweep_option_errors(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("sweep:\n  mix4: {method: mixup, mixup: {k: 4}}\n")
    result = runner.invoke(app, ["train", "a", "s", "o", "--params", str(params), "--sweep", "mix6"])
    assert (
        result.exit_code == 1
        and "error: no sweep entry 'mix6' in" in result.output
        and "entries: mix4" in result.output
    )
    result = runner.invoke(app, ["train", "a", "s", "o", "--sweep", "mix4"])
    assert result.exit_code == 1 and "error: --sweep needs --params" in result.output


# ------------------------------------------------------------------------- end to end, real faces


@pytest.fixture()
def tiny_pipeline(tmp_path):
    """A copy of the pipeline with the ci profile applied, reading 8 real LFW identities."""
    root = _copy_pipeline(tmp_path / "project")
    images = copy_sample(tmp_path / "images", per_identity=5)
    _run(["fmix", "pipeline", "profile", "ci"], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["images"] = str(images)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _change_one_entry(root: Path) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sweep"]["mixup4"]["mixup"]["k"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_snakemake_runs_the_pipeline_on_real_faces(tiny_pipeline):
    _run(["snakemake", "--cores", "1"], tiny_pipeline)
    assert "aligned 40 of 40 photos" in (tiny_pipeline / "logs" / "align.log").read_text()
    assert (tiny_pipeline / "data" / "splits" / "pairs.csv").read_text().count("\n") == 1 + 8
    protected = tiny_pipeline / "data" / "protected" / "train"
    train_rows = (tiny_pipeline / "data" / "splits" / "private_train.csv").read_text().count("\n") - 1
    index = [line.split(",") for line in (protected / "index.csv").read_text().splitlines()[1:]]
    summary = json.loads((protected / "summary.json").read_text())
    assert sum(len(row[3].split()) for row in index) + summary["skipped"] == train_rows  # each face in one sample
    assert (protected.parent / "fmix-ledger.jsonl").is_file()
    unmix = json.loads((tiny_pipeline / "metrics" / "release" / "unmix.json").read_text())
    assert {"regenerate", "labels", "structure", "mix_baseline"} <= set(unmix) and unmix["regenerate"]["details"][
        "shards_matched"
    ] == 0
    results = tiny_pipeline / "metrics" / "sweep"
    methods = {
        name: json.loads((results / name / "verification.json").read_text())["method"]
        for name in ("none", "ppfrfd", "mixup4", "adaptive", "adaptive_paper")
    }
    assert methods == {
        "none": "none",
        "ppfrfd": "ppfrfd",
        "mixup4": "mixup",
        "adaptive": "adaptive",
        "adaptive_paper": "adaptive",
    }
    privacy = {name: json.loads((results / name / "privacy.json").read_text()) for name in methods}
    assert privacy["none"]["row"] is None and "nothing to reconstruct" in privacy["none"]["reason"]
    assert privacy["ppfrfd"]["mixed"] is False and privacy["mixup4"]["mixed"] is True
    assert 0.0 <= privacy["adaptive"]["row"]["Score_pp"] <= 1.0
    table = json.loads((tiny_pipeline / "report" / "methods.json").read_text())
    assert list(table) == list(methods) and table["mixup4"]["mean_k"] == 4.0 and table["none"]["S3"] is None
    assert (
        table["adaptive"]["Score_cls"]
        == json.loads((results / "adaptive" / "verification.json").read_text())["verification"]["accuracy_mean"]
    )
    markdown = (tiny_pipeline / "report" / "report.md").read_text()
    assert (
        "| mixup4 |" in markdown and "![privacy/utility scatter](tradeoff.png)" in markdown and "snakemake" in markdown
    )
    assert markdown.startswith(
        "# fmix report\n\nProfile: ci (workflow/params/ci.yaml merged into params.yaml); 5 sweep entries"
    )
    assert (tiny_pipeline / "models" / "evaluator" / "templates.pt").is_file()  # embedded once, read by every inversion
    page = (tiny_pipeline / "report" / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 3 + 2 * 4 - 1 and all(
        src.startswith("data:image/png;base64,") for src in sources
    )  # self-contained
    assert (tiny_pipeline / "logs" / "benchmarks" / "train" / "adaptive.tsv").is_file()
    curves = (tiny_pipeline / "report" / "curves" / "mixup4.csv").read_text().splitlines()
    assert curves[0] == "epoch,loss,val_accuracy,mean_k" and curves[1].startswith("1,")  # per entry, x = epoch from 1
    # Every file a stage wrote is a declared output or inside one (Snakemake's own folder marker aside).
    declared = _declared_outputs(tiny_pipeline)
    written = [
        path
        for top in ("data", "models", "metrics", "report")
        for path in (tiny_pipeline / top).rglob("*")
        if path.is_file()
    ]
    undeclared = [
        str(path.relative_to(tiny_pipeline))
        for path in written
        if path.name != ".snakemake_timestamp"
        and not any(path == out or (is_dir and out in path.parents) for out, is_dir in declared)
    ]
    assert (
        undeclared == []
        and (results / "adaptive" / "attack" / "grid.png").is_file()
        and (results / "mixup4" / "attack" / "masker.onnx").is_file()
    )
    assert [path.name for path in (results / "none" / "attack").iterdir()] == [
        ".snakemake_timestamp"
    ]  # nothing to attack
    # `make run` then records the run in dvc.lock: DVC in sync, Snakemake's view untouched.
    _run(["dvc", "init", "--no-scm", "-q"], tiny_pipeline)
    _run(["dvc", "commit", "--force", "--no-relink", "--quiet"], tiny_pipeline)
    assert json.loads(_run(["dvc", "status", "--json"], tiny_pipeline)) == {}
    assert _dry_run_jobs(_run(["snakemake", "-n", "--cores", "1"], tiny_pipeline)) == []
    # Changing one sweep entry reruns only that entry's stages (and the report).
    _change_one_entry(tiny_pipeline)
    out = _run(["snakemake", "-n", "--cores", "1"], tiny_pipeline)
    assert set(_dry_run_jobs(out)) == {
        "train@mixup4",
        "evaluate@mixup4",
        "attack@mixup4",
        "invert@mixup4",
        "report",
        "all",
    }
    assert set(json.loads(_run(["dvc", "status", "--json"], tiny_pipeline))) == {"train@mixup4", "report"}


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_on_real_faces(tiny_pipeline):
    params = yaml.safe_load((tiny_pipeline / "params.yaml").read_text())
    params["sweep"] = {
        name: params["sweep"][name] for name in ("mixup4", "adaptive")
    }  # the Snakemake run covers all four
    (tiny_pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "init", "--no-scm", "-q"], tiny_pipeline)
    out = _run(["dvc", "repro"], tiny_pipeline)
    assert "aligned 40 of 40 photos" in out
    assert (tiny_pipeline / "report" / "report.html").is_file()
    assert "up to date" in _run(["dvc", "status"], tiny_pipeline)
    metrics = _run(["dvc", "metrics", "show"], tiny_pipeline)
    assert "report/methods.json" in metrics and "metrics/sweep/mixup4/verification.json" in metrics
    _run(["dvc", "plots", "show", "-o", "plots"], tiny_pipeline)
    page = (tiny_pipeline / "plots" / "index.html").read_text()
    assert "privacy (Score_pp) against utility" in page and "report/k_distribution.png" in page
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], tiny_pipeline))
    assert "errors" not in plots and {"report/curves/mixup4.csv", "report/curves/adaptive.csv"} <= set(
        plots["data"]
    )  # one curve per entry
    # Changing one sweep entry: only that entry's training (and the report, which lists the entries) is stale.
    _change_one_entry(tiny_pipeline)
    status = json.loads(_run(["dvc", "status", "--json"], tiny_pipeline))
    assert set(status) == {"train@mixup4", "report"}


def test_attack_protection_needs_a_trained_model(tmp_path):
    result = runner.invoke(
        app, ["attack", "protection", str(tmp_path / "model.pt"), "a", "s", "e.pt", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and f"error: trained model not found: {tmp_path / 'model.pt'}" in result.output
    assert not (tmp_path / "out").exists()


def test_a_misspelled_params_section_stops_both_pipelines_at_once(tmp_path):
    """Issue 9 item 2: Snakemake validates params.yaml when it loads; every DVC stage command refuses it."""
    root = tmp_path / "project"
    root.mkdir()
    for name in PIPELINE_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    with open(root / "params.yaml", "a") as handle:
        handle.write("\nmasks:\n  anonymize: true\n")
    result = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=root, env=_env(), capture_output=True, text=True)
    assert result.returncode != 0
    assert "params.yaml: unknown section(s) in params.yaml: masks" in result.stdout + result.stderr
    result = subprocess.run(
        ["fmix", "split", "data/aligned", "data/splits", "--params", "params.yaml"],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert (
        result.stderr.startswith("error: unknown section(s) in params.yaml: masks;") and result.stderr.count("\n") == 1
    )
