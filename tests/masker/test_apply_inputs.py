"""Hostile inputs of `fmix mask` (issue 9 items 3, 4, 7): each is a one-line error or is repaired, nothing is lost."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmix.cli import app
from fmix.params import MaskParams
from fmix.release.protect import protect_folder
from fmix_testing import copy_sample

runner = CliRunner()


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.output == f"error: {message}\n"


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def faces(pipeline_sample, tmp_path):
    """Two identities of aligned faces."""
    src = tmp_path / "faces"
    for name in ("Andre_Agassi", "Angelina_Jolie"):
        shutil.copytree(pipeline_sample["aligned"] / name, src / name)
    return src


def test_a_folder_of_unrelated_files_is_refused_and_left_alone(faces, pipeline_sample, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "shard-00000.npy").write_bytes(b"my own data")
    (mine / "summary.json").write_text('{"mine": true}')
    result = runner.invoke(app, ["mask", str(faces), str(mine), "-m", str(pipeline_sample["masker"]), "-q"])
    _one_line_error(
        result, f"output folder {mine} holds files but no run.json of `fmix mask`: use an empty or new folder"
    )
    assert _snapshot(mine) == {Path("shard-00000.npy"): b"my own data", Path("summary.json"): b'{"mine": true}'}
    (tmp_path / "a_file").write_text("x")
    result = runner.invoke(
        app, ["mask", str(faces), str(tmp_path / "a_file"), "-m", str(pipeline_sample["masker"]), "-q"]
    )
    _one_line_error(result, f"output folder {tmp_path / 'a_file'} is an existing file, not a folder")


def test_an_incomplete_shard_json_is_redone_on_resume(faces, pipeline_sample, tmp_path):
    out = tmp_path / "out"
    first = protect_folder(
        faces, out, pipeline_sample["masker"], MaskParams(previews=0, anonymize=False), progress=False
    )
    index = (out / "index.csv").read_text()
    (out / "shard-00000.json").write_text('{"skipped": []}')  # a stray or damaged shard record without rows
    again = protect_folder(
        faces, out, pipeline_sample["masker"], MaskParams(previews=0, anonymize=False), progress=False
    )
    # Redone with the same faces (the ledger's shard) but fresh secret draws: other groups, same faces.
    assert again["protected"] == first["protected"] and again["skipped"] == first["skipped"] == 0
    assert _released_faces((out / "index.csv").read_text()) == _released_faces(index)
    assert len(json.loads((out / "shard-00000.json").read_text())["rows"]) == first["protected"]


def _released_faces(index: str) -> list[str]:
    return sorted(face for line in index.splitlines()[1:] for face in line.split(",")[0].split("+"))


def test_a_masker_whose_graph_disagrees_with_its_metadata_is_refused(faces, pipeline_sample, tmp_path):
    import onnx

    from fmix.masker.metadata import bind_metadata

    model = onnx.load(pipeline_sample["masker"])
    next(p for p in model.metadata_props if p.key == "input_size").value = "96"
    onnx.save(model, tmp_path / "edited.onnx")
    result = runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(tmp_path / "edited.onnx"), "-q"])
    assert result.exit_code == 1 and result.output.startswith(
        f"error: {tmp_path / 'edited.onnx'}: its metadata field(s) input_size differ from what the masker was exported with"
    )
    # Re-bound by a forger who knows the scheme: the graph check still refuses it.
    rebound = bind_metadata({p.key: p.value for p in model.metadata_props})
    for prop in model.metadata_props:
        prop.value = rebound[prop.key]
    onnx.save(model, tmp_path / "lying.onnx")
    result = runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(tmp_path / "lying.onnx"), "-q"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(
        f"error: {tmp_path / 'lying.onnx'} does not take faces of its metadata's input_size=96: its inputs are"
    )
    assert not (tmp_path / "out").exists()


def test_a_seed_out_of_range_is_refused_before_anything_is_written(faces, pipeline_sample, tmp_path):
    result = runner.invoke(
        app,
        [
            "mask",
            str(faces),
            str(tmp_path / "out"),
            "-m",
            str(pipeline_sample["masker"]),
            "--insecure-seed",
            str(10**20),
            "-q",
        ],
    )
    _one_line_error(result, "--insecure-seed must be in [0, 4294967295], got 100000000000000000000")
    assert not (tmp_path / "out").exists()


def test_skipped_files_are_reported_relative_to_the_input_folder(pipeline_sample, tmp_path):
    photos = copy_sample(tmp_path / "photos", identities=("Ariel_Sharon",), per_identity=2)  # 250x250, not aligned
    summary = protect_folder(
        photos, tmp_path / "out", pipeline_sample["masker"], MaskParams(previews=0, anonymize=False), progress=False
    )
    assert summary["skipped_by_status"] == {"wrong_size": 2}
    text = (tmp_path / "out" / "summary.json").read_text()
    assert str(tmp_path) not in text
    messages = sorted(row["message"] for row in summary["skipped_files"])
    assert (
        messages[0]
        == "Ariel_Sharon/Ariel_Sharon_0001.jpg is 250x250, expected an aligned 112x112 face (use --align for photos)"
    )
