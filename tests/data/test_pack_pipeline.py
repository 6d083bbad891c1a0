"""A face pack as the pipeline's data: `fmix rec pack` -> `fmix rec export` -> split -> train 1 tiny epoch -> evaluate."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from fmix.cli import app

runner = CliRunner()
PARAMS = """\
split:
  folds: 2
  pairs_per_fold: 4
  private_fraction: 0.4
  public_fraction: 0.2
  val_fraction: 0.34
train:
  method: none
  width: 0.125
  embedding_size: 32
  batch_size: 8
  epochs: 1
  threads: 1
"""


def _invoke(*args) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_pack_runs_the_pipeline_from_its_export(aligned_sample, pipeline_sample, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    pack, faces, splits, run = tmp_path / "pack", tmp_path / "faces", tmp_path / "splits", tmp_path / "run"
    assert "packed 60 faces of 10 identities, 112x112" in _invoke("rec", "pack", aligned_sample, pack)
    assert "exported 60 faces of 10 classes" in _invoke("rec", "export", pack, faces)
    _invoke("split", faces, splits, "-p", params)  # the export's manifest.jsonl is what `fmix split` reads
    # The identities are the pack's labels; with 10 of them their order is the names' order, so the
    # split is the one of the aligned folder, face for face (pipeline_sample: the same split parameters).
    names = {row["label"]: row["identity"] for row in _rows(pack / "identities.csv")}
    for name in ("private_train.csv", "private_val.csv", "public.csv", "verification.csv"):
        exported, original = _rows(splits / name), _rows(pipeline_sample["splits"] / name)
        assert len(exported) == len(original) > 0
        assert sorted(names[row["identity"]] for row in exported) == sorted(row["identity"] for row in original)
    assert "trained none on 16 faces of 4 identities" in _invoke("train", faces, splits, run, "-p", params, "-q")
    output = _invoke("evaluate", run / "model.pt", faces, splits, tmp_path / "metrics.json", "-p", params)
    assert output.startswith("none: verification accuracy ")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        metrics["pairs"] == 8
        and 0.0 <= metrics["verification"]["accuracy_mean"] <= 1.0
        and 0.0 <= metrics["val_accuracy"] <= 1.0
    )
