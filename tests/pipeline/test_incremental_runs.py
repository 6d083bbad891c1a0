"""A pipeline that reruns only what changed, in both front ends, and DVC in sync after `make run`.

The run is faked, cheaply but through the front ends themselves: every output the stage table
declares is created (small files; a folder gets one file, the `none` entry's attack folder stays
empty as the command leaves it), `snakemake --touch` marks them up to date in the DAG's order, and
`dvc commit` (the command `make run` runs after Snakemake) records them in dvc.lock. The real
runs (tests/test_pipeline.py, slow) check the same after running every stage.
"""

import json

import yaml
from test_pipeline import _copy_pipeline, _declared_outputs, _dry_run_jobs, _run

from fmix_testing import REPO

SYNC = ["dvc", "commit", "--force", "--no-relink", "--quiet"]  # what `make run` runs after snakemake


def _fake_run(root) -> None:
    images = root.parent / "images" / "Someone"
    images.mkdir(parents=True)
    (images / "Someone_0001.jpg").write_bytes(b"not a photo: no stage runs")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["images"] = str(images.parent)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for path, is_dir in _declared_outputs(root):
        if is_dir:
            path.mkdir(parents=True, exist_ok=True)
            if path.name != "attack" or path.parent.name != "none":
                (path / "part.csv").write_text("epoch,val_accuracy\n1,0.5\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else "fake\n")
    _run(["snakemake", "--touch", "--cores", "1"], root)


def _edit(path) -> None:
    with open(path, "a") as out:
        out.write("# an edit: the code changed\n")


def _dvc_changed(root) -> dict:
    return json.loads(_run(["dvc", "status", "--json"], root))


def test_editing_a_module_reruns_only_the_stages_that_import_it(tmp_path):
    root = _copy_pipeline(tmp_path / "project")
    _fake_run(root)
    assert _dry_run_jobs(_run(["snakemake", "-n", "--cores", "1"], root)) == []
    _run(["dvc", "init", "--no-scm", "-q"], root)
    assert "report" in _dvc_changed(root)  # after Snakemake alone, DVC knows nothing
    _run(SYNC, root)
    assert _dvc_changed(root) == {}  # in sync ...
    assert _dry_run_jobs(_run(["snakemake", "-n", "--cores", "1"], root)) == []  # ... and Snakemake's view untouched
    assert " ".join(SYNC) in (REPO / "Makefile").read_text()
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], root))
    assert "errors" not in plots and {"report/curves/part.csv", "report/tradeoff.csv"} <= set(
        plots["data"]
    )  # Snakemake's .snakemake_timestamp ignored

    _edit(root / "fmix" / "pipeline" / "report.py")
    assert sorted(_dry_run_jobs(_run(["snakemake", "-n", "--cores", "1"], root))) == ["all", "report"]
    assert _dvc_changed(root) == {"report": [{"changed deps": {"fmix/pipeline/report.py": "modified"}}]}

    # A module of one stage in the middle: that stage, and what reads its outputs (Snakemake's dry run shows those too).
    _edit(root / "fmix" / "attacks" / "aggregate.py")
    assert sorted(_dry_run_jobs(_run(["snakemake", "-n", "--cores", "1"], root))) == ["aggregate", "all", "report"]
    assert set(_dvc_changed(root)) == {"aggregate", "report"}
