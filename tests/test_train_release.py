"""`fmix train --release`: the FR network trained on a release of `fmix mask` with its published soft labels."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fmix.cli import app
from fmix.masker.build import read_masker_metadata
from fmix.models.artifact import load_trained_model
from fmix.params import MaskParams, TrainParams
from fmix.release.protect import ReleaseOptions, protect_folder
from fmix.train.release import ReleaseTrainer, open_release, train_on_release

runner = CliRunner()
TINY = dict(width=0.125, embedding_size=32, batch_size=2, epochs=1, threads=1)
TINY_YAML = "train:\n  width: 0.125\n  embedding_size: 32\n  batch_size: 2\n  epochs: 1\n  threads: 1\n"


@pytest.fixture(scope="module")
def release(pipeline_sample, tmp_path_factory):
    """A mixed release (k = 2, sign mask, noise: the default mixing) of the 16 private training faces.

    Its random parts come from a fixed secret key: drawn from the OS, about 1 row in 8 is a same-identity
    pair or weighs 0.5 / 0.5 (56 of 320 rows in 40 releases), which the weight swap below leaves unchanged,
    so both rows of the first batch of two were such rows in about 1 run in 60 (once in CI)."""
    root = tmp_path_factory.mktemp("release")
    options = ReleaseOptions(secret_key=bytes(range(32)), ledger=root / "ledger.jsonl")
    protect_folder(
        pipeline_sample["aligned"],
        root / "release",
        pipeline_sample["masker"],
        MaskParams(batch_size=8, previews=0),
        face_list=pipeline_sample["splits"] / "private_train.csv",
        progress=False,
        release=options,
    )
    return root / "release"


def _published(release) -> dict[str, tuple[list[int], list[float]]]:
    with open(release / "index.csv", newline="") as handle:
        return {
            row["name"]: ([int(v) for v in row["labels"].split()], [float(v) for v in row["weights"].split()])
            for row in csv.DictReader(handle)
        }


def test_the_published_soft_labels_reach_the_loss(release, pipeline_sample):
    inputs = open_release(release, pipeline_sample["masker"])
    assert inputs.sign_invariant and inputs.source.sample_shape == (inputs.encoder.channels, 28, 28)
    trainer = ReleaseTrainer(TrainParams(**TINY), inputs, torch.device("cpu"))
    trainer.net.eval()
    batch = next(trainer.batches(0))
    published = _published(release)
    order = trainer.loader.batch_sampler
    order.set_epoch(0)
    names = [inputs.source.names[i] for i in next(iter(order))]
    with torch.no_grad():
        got = trainer.loss(batch)
        # By hand: CosFace logits s * cos, s * (cos - m) at the target; sum_i w_i CE(y_i) on the weights of index.csv, as rounded.
        head = trainer.net.head
        cos = F.normalize(trainer.net.backbone(batch.samples), dim=1) @ F.normalize(head.weight, dim=1).t()
        expected = []
        for row, name in enumerate(names):
            labels, weights = published[name]
            assert len(labels) == 2 and all(len(str(w).split(".")[-1]) <= 2 for w in weights)
            total = 0.0
            for label, weight in zip(labels, weights):
                logits = head.s * cos[row].clone()
                logits[label] = head.s * (cos[row, label] - head.m)
                total += weight * -torch.log_softmax(logits, 0)[label]
            expected.append(total)
        torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-5)
        # The weights matter: the other constituent's weight on the first label gives another loss.
        swapped = trainer.loss(batch._replace(weights=batch.weights.flip(1)))
        assert not torch.allclose(swapped, got)
        # The network reads |x|: the sign of a coefficient does not reach it.
        torch.testing.assert_close(trainer.net.backbone(-batch.samples), trainer.net.backbone(batch.samples))


def test_train_on_release_then_evaluate(release, pipeline_sample, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(TINY_YAML)
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "--release", str(release), str(out), "-m", str(pipeline_sample["masker"]), "-p", str(params), "-q"],
    )
    assert result.exit_code == 0, result.output
    run = json.loads((release / "run.json").read_text())
    assert (
        result.output.startswith(f"trained on release {run['release']}: ")
        and "the network reads |x| of 174 masker channels" in result.output
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert (
        summary["trained_on"] == "release"
        and summary["faces"] == 2 * summary["samples"]
        and summary["final_k_histogram"]
    )
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["fr_steps"] == summary["samples"] // 2 and log[0]["val_accuracy"] is None
    model, record = load_trained_model(out / "model.pt")
    metadata = read_masker_metadata(pipeline_sample["masker"])
    assert record.sign_invariant and model.backbone.sign_invariant
    assert record.encoder["kind"] == "frequency" and record.encoder["kept_channels"] == json.loads(
        metadata["kept_channels"]
    )
    assert (
        record.encoder["upsample"] == json.loads(metadata["upsample"]) and record.release["release"] == run["release"]
    )
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(out / "model.pt"),
            str(pipeline_sample["aligned"]),
            str(pipeline_sample["splits"]),
            str(tmp_path / "metrics.json"),
            "-p",
            str(params),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "closed-set validation accuracy n/a (trained on a release" in result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (
        metrics["method"] == "mixup"
        and metrics["pairs"] == 8
        and 0.0 <= metrics["verification"]["accuracy_mean"] <= 1.0
    )
    assert metrics["val_accuracy"] is None


def test_a_resumed_release_run_ends_as_an_uninterrupted_one(release, pipeline_sample, tmp_path):
    params = TrainParams(**{**TINY, "epochs": 2})
    whole = train_on_release(params, release, pipeline_sample["masker"], tmp_path / "whole", progress=False)
    assert train_on_release(
        params, release, pipeline_sample["masker"], tmp_path / "cut", max_steps=3, progress=False
    ) == {"stopped_at_step": 3}
    resumed = train_on_release(
        params, release, pipeline_sample["masker"], tmp_path / "cut", resume=True, progress=False
    )
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-6)
    a, b = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("whole", "cut"))
    for key, value in a["backbone"].items():
        torch.testing.assert_close(b["backbone"][key], value)


def test_release_training_refuses_what_does_not_fit(release, pipeline_sample, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(pipeline_sample["masker"].read_bytes() + b"\0")
    with pytest.raises(
        ValueError,
        match=r"is not the masker that made .* \(run.json records masker_sha256 [0-9a-f]{64}, the file has [0-9a-f]{64}\)",
    ):
        open_release(release, other)
    masker = str(pipeline_sample["masker"])
    cases = [
        (
            ["train", "--release", str(release), "a", "b", "c", "-m", masker],
            "error: with --release give only OUT_DIR: fmix train --release DIR OUT_DIR --masker MASKER",
        ),
        (
            ["train", "--release", str(release), str(tmp_path / "o")],
            "error: --release needs --masker: the masker.onnx that made the release (its transform is the model's encoder)",
        ),
        (
            ["train", "--release", str(release), str(tmp_path / "o"), "-m", masker, "--k", "3"],
            "error: --method and --k do not apply to --release: the release is masked and mixed already",
        ),
        (
            ["train", str(tmp_path / "o")],
            "error: give ALIGNED SPLITS OUT_DIR (or --release DIR OUT_DIR to train on a release of `fmix mask`)",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.output.strip() == message, result.output
    # A row whose weights do not sum to 1 within their rounding is no soft label.
    damaged = tmp_path / "damaged"
    shutil.copytree(release, damaged)
    lines = (damaged / "index.csv").read_text().splitlines()
    name, shard, row, labels, _ = lines[1].split(",")
    lines[1] = ",".join([name, shard, row, labels, "0.5 0.3"])
    (damaged / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"sample {name} has weights summing to 0.8000, not 1 within their rounding"):
        open_release(damaged, pipeline_sample["masker"])


@pytest.fixture(scope="module")
def public_models(pipeline_sample, tmp_path_factory):
    """Tiny models of the release's masking trained with `fmix train` (the third party's warm starts): mixup k = 2 (reads |x|), ppfrfd (reads x)."""
    from fmix.train.loop import train

    root = tmp_path_factory.mktemp("public_models")
    for method in ("mixup", "ppfrfd"):
        params = TrainParams(**TINY, method=method)
        train(
            params,
            pipeline_sample["aligned"],
            pipeline_sample["splits"],
            root / method,
            pipeline_sample["masker"],
            progress=False,
        )
    return {method: root / method / "model.pt" for method in ("mixup", "ppfrfd")}


def test_a_release_run_starts_from_a_model_of_the_same_masking(release, pipeline_sample, public_models, tmp_path):
    inputs = open_release(release, pipeline_sample["masker"])
    start = torch.load(public_models["mixup"], weights_only=True)
    trainer = ReleaseTrainer(TrainParams(**TINY), inputs, torch.device("cpu"), init=public_models["mixup"])
    for key, value in start["backbone"].items():
        torch.testing.assert_close(trainer.net.backbone.state_dict()[key], value)
    assert trainer.net.head.weight.shape[0] == inputs.source.num_classes  # the head is the release's, fresh
    cold = ReleaseTrainer(TrainParams(**TINY), inputs, torch.device("cpu"))
    assert not torch.equal(cold.net.backbone.conv1.weight, trainer.net.backbone.conv1.weight)
    params = tmp_path / "params.yaml"
    params.write_text(TINY_YAML)
    out = tmp_path / "warm"
    args = ["train", "--release", str(release), str(out), "-m", str(pipeline_sample["masker"]), "-p", str(params), "-q"]
    calibration = pipeline_sample["aligned"]
    result = runner.invoke(app, [*args, "--init", str(public_models["mixup"]), "--calibrate", str(calibration)])
    assert result.exit_code == 0, result.output
    faces = len(list(calibration.glob("*/*.png")))
    assert f", started from {public_models['mixup']}; the network reads |x|" in result.output
    assert f"masker channels; batch norm recalibrated on {faces} un-mixed faces (no un-mixed" in result.output
    summary = json.loads((out / "train_summary.json").read_text())
    digest = hashlib.sha256(public_models["mixup"].read_bytes()).hexdigest()
    assert summary["init"] == {"model": str(public_models["mixup"]), "sha256": digest, "method": "mixup"}
    assert summary["bn_recalibrated"] and summary["calibration"] == {"folder": str(calibration), "faces": faces}
    warm = torch.load(out / "model.pt", weights_only=True)
    assert warm["release"]["init"]["sha256"] == digest
    # The same run without --calibrate: the same weights, the batch-norm statistics the mixes left.
    uncalibrated = tmp_path / "uncalibrated"
    result = runner.invoke(app, [*args[:3], str(uncalibrated), *args[4:], "--init", str(public_models["mixup"])])
    assert result.exit_code == 0 and "; batch norm as the mixes left it (--calibrate DIR re-estimates" in result.output
    assert not json.loads((uncalibrated / "train_summary.json").read_text())["bn_recalibrated"]
    mixes = torch.load(uncalibrated / "model.pt", weights_only=True)["backbone"]
    torch.testing.assert_close(warm["backbone"]["conv1.weight"], mixes["conv1.weight"])
    assert not torch.allclose(warm["backbone"]["bn1.running_mean"], mixes["bn1.running_mean"])
    # A resumed run must start from the same model.
    with pytest.raises(ValueError, match="was written with other train parameters or another release"):
        train_on_release(TrainParams(**TINY), release, pipeline_sample["masker"], out, resume=True, progress=False)


def test_a_warm_start_that_does_not_fit_is_refused(release, pipeline_sample, public_models, tmp_path):
    inputs = open_release(release, pipeline_sample["masker"])
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match=r"ppfrfd/model.pt's network reads x, a network of this release reads \|x\|"):
        ReleaseTrainer(TrainParams(**TINY), inputs, cpu, init=public_models["ppfrfd"])
    with pytest.raises(ValueError, match=r"model.pt's backbone does not fit this network \(train.backbone, width"):
        ReleaseTrainer(TrainParams(**{**TINY, "width": 0.25}), inputs, cpu, init=public_models["mixup"])
    state = torch.load(public_models["mixup"], weights_only=True)
    state["encoder"]["kept_channels"] = state["encoder"]["kept_channels"][1:]
    other = tmp_path / "other_masking.pt"
    torch.save(state, other)
    with pytest.raises(
        ValueError, match=r"other_masking.pt was trained on another masking than the release's masker \(kept_channels"
    ):
        ReleaseTrainer(TrainParams(**TINY), inputs, cpu, init=other)
    for option in ("--init", "--calibrate"):
        result = runner.invoke(app, ["train", "a", "b", "c", option, str(tmp_path)])
        assert result.exit_code == 1 and result.output.strip() == (
            "error: --init and --calibrate go with --release; train.init_backbone starts an RGB method's backbone, "
            "train.recalibrate_bn recalibrates on the training faces"
        )
