"""``fmix evaluate --bin``: verification on InsightFace .bin sets beside the held-out pairs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fmix.cli import app
from fmix.data.images import read_rgb
from fmix.data.insightface_bin import write_verification_bin
from fmix.evaluate.run import bin_folds
from fmix.models.artifact import ModelRecord
from fmix.models.frnet import build_net
from fmix.params import TrainParams
from fmix_testing import LFW, LFW_IMAGES, require_files

runner = CliRunner()
# The faces of four pairs of LFW's pairs.txt (fold 0): two matched, two mismatched.
FACES = (
    ("Abdel_Madi_Shabneh", 1),
    ("Akhmed_Zakayev", 1),
    ("Akhmed_Zakayev", 2),
    ("Akhmed_Zakayev", 3),
    ("Dean_Barker", 1),
    ("Giancarlo_Fisichella", 1),
)
LABELS = {"Abdel_Madi_Shabneh": 0, "Akhmed_Zakayev": 1, "Dean_Barker": 2, "Giancarlo_Fisichella": 3}


def _face(name: str, i: int) -> str:
    return f"{name}/{name}_{i:04d}.png"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Aligned crops of six real LFW faces, splits holding the same four pairs as LFW's, their lfw.bin, an untrained RGB model.pt."""
    root = tmp_path_factory.mktemp("evaluate_bins")
    aligned, splits = root / "aligned", root / "splits"
    for (name, i), path in zip(FACES, require_files([LFW_IMAGES / name / f"{name}_{i:04d}.jpg" for name, i in FACES])):
        (aligned / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_rgb(path)[69:181, 69:181]).save(aligned / _face(name, i))
    splits.mkdir()
    pairs = [
        (0, ("Akhmed_Zakayev", 1), ("Akhmed_Zakayev", 3), 1),
        (0, ("Abdel_Madi_Shabneh", 1), ("Dean_Barker", 1), 0),
        (1, ("Akhmed_Zakayev", 2), ("Akhmed_Zakayev", 3), 1),
        (1, ("Abdel_Madi_Shabneh", 1), ("Giancarlo_Fisichella", 1), 0),
    ]
    (splits / "pairs.csv").write_text(
        "fold,path_a,path_b,same\n" + "".join(f"{f},{_face(*a)},{_face(*b)},{s}\n" for f, a, b, s in pairs)
    )
    (splits / "private_val.csv").write_text(
        "path,identity,label\n" + "".join(f"{_face(n, i)},{n},{LABELS[n]}\n" for n, i in FACES[:2])
    )
    write_verification_bin(aligned, require_files([LFW / "pairs.txt"])[0], root / "lfw.bin", skip_missing=True)
    torch.manual_seed(0)
    params = TrainParams(method="none", width=0.125, embedding_size=32, threads=1)
    net = build_net(params, 3, 112, len(LABELS))
    ModelRecord(
        params,
        {"method": "none", "kind": "rgb"},
        net.backbone.state_dict(),
        net.head.state_dict(),
        {},
        len(LABELS),
        (3, 112),
    ).save(root / "model.pt")
    return {"root": root, "aligned": aligned, "splits": splits, "bin": root / "lfw.bin", "model": root / "model.pt"}


def test_bin_folds_are_consecutive_blocks():
    np.testing.assert_array_equal(bin_folds(4), [0, 1, 2, 3])
    np.testing.assert_array_equal(bin_folds(12), [0, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9])
    assert np.bincount(bin_folds(6000)).tolist() == [600] * 10  # lfw.bin: LFW's own ten folds
    with pytest.raises(ValueError, match="Expected at least 2 pairs for a k-fold verification, got 1"):
        bin_folds(1)


def test_evaluate_reports_each_bin(inputs, tmp_path):
    out = tmp_path / "metrics.json"
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  flip_average: false\n")  # half the work on this tiny test
    args = [
        "evaluate",
        str(inputs["model"]),
        str(inputs["aligned"]),
        str(inputs["splits"]),
        str(out),
        "-p",
        str(params),
        "--bin",
        str(inputs["bin"]),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    on_bin, held_out = metrics["bins"][str(inputs["bin"])], metrics["verification"]
    assert (
        on_bin["pairs"] == 4
        and on_bin["num_positive"] == 2
        and on_bin["num_negative"] == 2
        and len(on_bin["fold_accuracies"]) == 4
    )
    # The same four pairs of the same faces: the scores, hence AUC and best accuracy, agree (the folds differ).
    assert on_bin["auc"] == pytest.approx(held_out["auc"]) and on_bin["best_accuracy"] == pytest.approx(
        held_out["best_accuracy"]
    )
    line = f"  {inputs['bin']}: verification accuracy {on_bin['accuracy_mean']:.3f} +- {on_bin['accuracy_std']:.3f}, AUC {on_bin['auc']:.3f} on 4 pairs"
    assert result.output.splitlines()[-1] == line


def test_evaluate_refuses_a_missing_or_malicious_bin(inputs, tmp_path):
    args = [
        "evaluate",
        str(inputs["model"]),
        str(inputs["aligned"]),
        str(inputs["splits"]),
        str(tmp_path / "m.json"),
        "--bin",
    ]
    result = runner.invoke(app, args + [str(tmp_path / "none.bin")])
    assert (
        result.exit_code == 1
        and result.output.strip() == f"error: verification .bin not found: {tmp_path / 'none.bin'}"
    )
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"\x80\x02cos\nsystem\n(X\x04\x00\x00\x00truetR.")
    result = runner.invoke(app, args + [str(evil)])
    assert result.exit_code == 1 and result.output.startswith(
        f"error: {evil}: refusing to load the global os.system: an InsightFace .bin may only hold"
    )
    assert not (tmp_path / "m.json").exists()
