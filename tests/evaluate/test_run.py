import json

import torch
from typer.testing import CliRunner

from fmix.cli import app
from fmix.data.splits import Pair
from fmix.evaluate.run import verify
from fmix.models.artifact import load_trained_model

runner = CliRunner()
TINY_PARAMS = (
    "train:\n  width: 0.125\n  embedding_size: 32\n  batch_size: 8\n  epochs: 1\n  threads: 1\n  method: ppfrfd\n"
)


def test_verify_on_known_features():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    row = {"a": 0, "a2": 1, "b": 2, "b2": 3}
    pairs = [
        Pair(f, x, y, same)
        for f in (0, 1)
        for x, y, same in (("a", "a2", True), ("b", "b2", True), ("a", "b", False), ("a2", "b2", False))
    ]
    metrics = verify(features, row, pairs)
    assert metrics["accuracy_mean"] == 1.0 and metrics["auc"] == 1.0


def test_train_and_evaluate_commands(pipeline_sample, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(TINY_PARAMS)
    aligned, splits = str(pipeline_sample["aligned"]), str(pipeline_sample["splits"])
    result = runner.invoke(
        app,
        [
            "train",
            aligned,
            splits,
            str(tmp_path / "run"),
            "-m",
            str(pipeline_sample["masker"]),
            "-p",
            str(params),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained ppfrfd on 16 faces of 4 identities" in result.output
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "run" / "model.pt"),
            aligned,
            splits,
            str(tmp_path / "metrics.json"),
            "-p",
            str(params),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "ppfrfd" and metrics["pairs"] == 8
    for key in ("verification", "raw_feature_floor"):
        assert 0.0 <= metrics[key]["accuracy_mean"] <= 1.0 and 0.0 <= metrics[key]["auc"] <= 1.0
    model, record = load_trained_model(tmp_path / "run" / "model.pt")
    embeddings = model.embed(torch.rand(3, 3, 112, 112) * 255)
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert record.num_classes == 4


def test_commands_report_missing_inputs(tmp_path):
    result = runner.invoke(
        app, ["evaluate", str(tmp_path / "none.pt"), str(tmp_path), str(tmp_path), str(tmp_path / "m.json")]
    )
    assert result.exit_code == 1 and "error: checkpoint not found" in result.output
    result = runner.invoke(app, ["train", str(tmp_path), str(tmp_path), str(tmp_path / "run"), "--method", "rgb"])
    assert result.exit_code == 1 and "train.method must be one of" in result.output
    result = runner.invoke(app, ["train", str(tmp_path), str(tmp_path), str(tmp_path / "run")])
    assert result.exit_code == 1 and "split file not found" in result.output
