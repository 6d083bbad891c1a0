"""`fmix attack protection --artifacts`: what a method has (masker, grid) goes into one folder, always
created, so the pipeline declares it as one output; privacy.json stays in OUT_DIR (a DVC metric)."""

import json

from typer.testing import CliRunner

from fmix.cli import app
from fmix.params import TrainParams
from fmix.train.loop import train

runner = CliRunner()
TINY = dict(width=0.125, embedding_size=32, batch_size=4, epochs=1, threads=1)


def test_the_attacks_files_go_into_the_artifacts_folder(pipeline_sample, tmp_path):
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    train(TrainParams(method="none", seed=1, **TINY), *paths, tmp_path / "none", progress=False)  # also the evaluator
    train(TrainParams(method="ppfrfd", **TINY), *paths, tmp_path / "ppfrfd", pipeline_sample["masker"], progress=False)
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  seconds: 1.0\n  eval_faces: 8\n  batch_size: 4\n  judge: evaluator\n")
    for name in ("none", "ppfrfd"):
        out = tmp_path / "results" / name
        args = [str(tmp_path / name / "model.pt"), *map(str, paths), str(tmp_path / "none" / "model.pt"), str(out)]
        result = runner.invoke(
            app, ["attack", "protection", *args, "-p", str(params), "--name", name, "--artifacts", str(out / "attack")]
        )
        assert result.exit_code == 0, result.output
        assert json.loads((out / "privacy.json").read_text())["method"] == name
    assert sorted(path.name for path in (tmp_path / "results" / "none").iterdir()) == ["attack", "privacy.json"]
    assert list((tmp_path / "results" / "none" / "attack").iterdir()) == []  # nothing to attack: the folder, empty
    assert sorted(path.name for path in (tmp_path / "results" / "ppfrfd" / "attack").iterdir()) == [
        "grid.png",
        "masker.onnx",
    ]
    assert sorted(path.name for path in (tmp_path / "results" / "ppfrfd").iterdir()) == ["attack", "privacy.json"]
