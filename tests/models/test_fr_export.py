"""``fmix export-fr`` (fmix.models.fr_export): a model.pt as an ONNX face embedder, parity with torch,
and ONNX face embedders as the attacks' judge (``attack.judge: PATH.onnx``)."""

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fmix.attacks.identity import IdentityScorer, OnnxGallery, check_judge
from fmix.cli import app
from fmix.data.faces import load_face_set
from fmix.device import onnx_providers
from fmix.models.artifact import load_trained_model
from fmix.models.fr_export import FaceEmbedder, OnnxFaceEmbedder
from fmix.params import AdaptiveParams, AttackParams, MixupParams, ParamsError, TrainParams, section_from_mapping
from fmix.train.loop import train

runner = CliRunner()
TINY = dict(
    width=0.125, embedding_size=32, batch_size=4, epochs=1, threads=1, adaptive=AdaptiveParams(policy_warmup_epochs=0.0)
)


@pytest.fixture(scope="module")
def exported(pipeline_sample, tmp_path_factory):
    """A tiny RGB model (the evaluator's kind) and a tiny mixup model (masked channels, |x|), each exported by the command."""
    root = tmp_path_factory.mktemp("export_fr")
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    train(TrainParams(method="none", seed=1, **{**TINY, "epochs": 8}), *paths, root / "none", progress=False)
    train(
        TrainParams(method="mixup", mixup=MixupParams(k=2), **TINY),
        *paths,
        root / "mixup",
        pipeline_sample["masker"],
        progress=False,
    )
    for name in ("none", "mixup"):
        result = runner.invoke(app, ["export-fr", str(root / name / "model.pt"), str(root / f"{name}.onnx")])
        assert result.exit_code == 0, result.output
        assert f"face embedder: {name}, 32-d embeddings, opset 18 -> {root / f'{name}.onnx'}" in result.output
    return root


@pytest.fixture(scope="module")
def faces(pipeline_sample):
    private = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    return private, private.float_images(torch.arange(len(private)))


@pytest.mark.parametrize("name", ["none", "mixup"])
def test_the_onnx_embedder_matches_torch(exported, faces, name):
    _, images = faces
    model, record = load_trained_model(exported / name / "model.pt")
    embedder = OnnxFaceEmbedder(exported / f"{name}.onnx", device="cpu")
    assert embedder.providers == ["CPUExecutionProvider"] and (embedder.mean, embedder.std) == (0.0, 1.0)
    ours = embedder.embed(images)
    reference = model.embed(images, flip_average=False)  # as `fmix evaluate` embeds them, without the mirror
    assert ours.shape == (len(images), 32) and torch.allclose(ours.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    one = OnnxFaceEmbedder(exported / f"{name}.onnx", device="cpu", batch_size=1).embed(images[:3])  # dynamic batch
    torch.testing.assert_close(one, reference[:3], atol=1e-4, rtol=0)
    sign_invariant = model.backbone.sign_invariant
    assert sign_invariant is (name == "mixup")  # mixup reads |x|: the export does too (parity above)
    meta = embedder.metadata
    assert meta["fmix_format"] == "fmix-face-embedder" and meta["method"] == name and meta["embedding_size"] == "32"
    assert meta["encoder"] == ("rgb" if name == "none" else "frequency") and meta["flip_average"] == "false"
    assert meta["input"] == "images: (B, 3, 112, 112) float32 aligned RGB in [0, 255]" and meta["input_size"] == "112"
    assert meta["backbone"] == record.params.backbone == "iresnet18"
    graph = onnx.load(str(exported / f"{name}.onnx")).graph
    assert not any(node.metadata_props for node in graph.node)  # no stack traces naming the exporter's paths
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 112, 112]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch is symbolic


def test_flip_average_export_matches_evaluate(exported, faces, tmp_path):
    _, images = faces
    result = runner.invoke(
        app, ["export-fr", str(exported / "mixup" / "model.pt"), str(tmp_path / "flip.onnx"), "--flip-average"]
    )
    assert result.exit_code == 0 and "32-d embeddings, flip-averaged" in result.output
    model, _ = load_trained_model(exported / "mixup" / "model.pt")
    embedder = OnnxFaceEmbedder(tmp_path / "flip.onnx", device="cpu")
    assert embedder.metadata["flip_average"] == "true"
    torch.testing.assert_close(
        embedder.embed(images[:6]), model.embed(images[:6], flip_average=True), atol=1e-4, rtol=0
    )


def test_a_foreign_embedder_without_metadata_reads_insightface_inputs(exported, faces, tmp_path):
    _, images = faces
    proto = onnx.load(str(exported / "none.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    embedder = OnnxFaceEmbedder(tmp_path / "foreign.onnx", device="cpu")
    assert (embedder.mean, embedder.std) == (127.5, 127.5) and embedder.metadata == {}
    model, _ = load_trained_model(exported / "none" / "model.pt")
    with torch.no_grad():  # the graph sees (x - 127.5) / 127.5 instead of x
        reference = FaceEmbedder(model).eval()((images[:4] - 127.5) / 127.5)
    torch.testing.assert_close(embedder.embed(images[:4]), reference, atol=1e-4, rtol=0)


def _tiny_graph(path, input_shape, output_rank=2):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3] if output_rank == 2 else ["N", 3, 1, 1])
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"])]
    nodes.append(
        helper.make_node("Flatten", ["p"], ["y"]) if output_rank == 2 else helper.make_node("Identity", ["p"], ["y"])
    )
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_embedder_inputs_and_files_are_checked(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX face embedder not found"):
        OnnxFaceEmbedder(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match=r"junk\.onnx is not an ONNX model ONNX Runtime can run"):
        OnnxFaceEmbedder(tmp_path / "junk.onnx", device="cpu")
    with pytest.raises(
        ValueError,
        match=r"is not a face embedder of 112x112 RGB faces: its input has shape \['N', 3, 64, 64\], expected \(B, 3, 112, 112\)",
    ):
        OnnxFaceEmbedder(_tiny_graph(tmp_path / "small.onnx", ["N", 3, 64, 64]), device="cpu")
    with pytest.raises(ValueError, match=r"its first output has shape \['N', 3, 1, 1\], expected \(B, E\)"):
        OnnxFaceEmbedder(_tiny_graph(tmp_path / "rank4.onnx", ["N", 3, 112, 112], output_rank=4), device="cpu")
    embedder = OnnxFaceEmbedder(exported / "none.onnx", device="cpu")
    with pytest.raises(ValueError, match=r"Expected images of shape \(B, 3, H, W\), got \(3, 112, 112\)"):
        embedder.embed(torch.zeros(3, 112, 112))
    with pytest.raises(ValueError, match=r"Expected images of shape \(B, 3, 112, 112\), got \(1, 3, 96, 96\)"):
        embedder.embed(torch.zeros(1, 3, 96, 96))
    with pytest.raises(TypeError, match="Expected images to be a torch.Tensor, got ndarray"):
        embedder.embed(np.zeros((1, 3, 112, 112), np.float32))
    assert embedder.embed(torch.zeros(1, 3, 112, 112, dtype=torch.uint8)).shape == (
        1,
        32,
    )  # uint8 faces are read as [0, 255]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    if not torch.cuda.is_available():
        assert onnx_providers("auto")[-1] == "CPUExecutionProvider"


def test_export_fr_errors_are_one_line(exported, tmp_path):
    result = runner.invoke(app, ["export-fr", str(tmp_path / "nope.pt"), str(tmp_path / "out.onnx")])
    assert (
        result.exit_code == 1
        and result.output.strip().startswith("error: checkpoint not found")
        and "Traceback" not in result.output
    )
    result = runner.invoke(
        app, ["export-fr", str(exported / "none" / "model.pt"), str(tmp_path / "out.onnx"), "--opset", "16"]
    )
    assert (
        result.exit_code == 1
        and "error: Expected opset >= 17, got 16" in result.output
        and not (tmp_path / "out.onnx").exists()
    )


def test_an_exported_model_as_judge_names_its_own_gallery(exported, faces):
    private, images = faces
    judge = OnnxGallery(exported / "none.onnx", private, device="cpu")
    labels, valid = private.labels[:, None], torch.ones(len(private), 1, dtype=torch.bool)
    scores = judge.identified(images, labels, valid)
    identities = int(private.labels.max()) + 1
    assert (
        scores["top1"] >= 0.9 and scores["top5"] == 1.0
    )  # measured: 15 of the 16 gallery faces nearest their own identity's template
    assert scores["chance_top1"] == pytest.approx(1 / identities) and scores["top1"] > 3 * scores["chance_top1"]
    assert scores["template_cosine"] > 0.5
    wrong = judge.identified(images, (labels + 1) % identities, valid)
    assert wrong["top1"] == 0.0 and wrong["template_cosine"] < scores["template_cosine"]
    with pytest.raises(ValueError, match="Expected every sample to have at least one valid constituent"):
        judge.identified(images[:1], labels[:1], torch.zeros(1, 1, dtype=torch.bool))


def test_attack_judge_accepts_an_onnx_path():
    assert check_judge("dlib") == "dlib" and check_judge("models/r50.ONNX") == "models/r50.ONNX"
    assert (
        section_from_mapping(AttackParams, {"judge": "judges/w600k_r50.onnx"}, "attack").judge
        == "judges/w600k_r50.onnx"
    )
    with pytest.raises(
        ParamsError,
        match=r"attack\.judge must be 'dlib', 'evaluator' or the path of an ONNX face embedder ending in \.onnx, got 'r50\.pt'",
    ):
        section_from_mapping(AttackParams, {"judge": "r50.pt"}, "attack")
    with pytest.raises(
        ValueError,
        match=r"Expected judge in \('dlib', 'evaluator'\) or the path of an ONNX face embedder ending in \.onnx, got 'arcface'",
    ):
        IdentityScorer("arcface", None, None)


def test_attack_commands_with_an_onnx_judge(pipeline_sample, exported, tmp_path):
    judge = exported / "none.onnx"
    params = tmp_path / "params.yaml"
    params.write_text(
        f"attack:\n  seconds: 1.0\n  steps: 2\n  eval_faces: 4\n  batch_size: 4\n  invert_seconds: 1.0\n  invert_identities: 2\n  judge: {judge}\n  device: cpu\n"
    )
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(exported / "none" / "model.pt"),
        str(tmp_path / "out"),
    ]
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "-p", str(params), "--no-mix"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert record["judge"] == str(judge) and set(record["white"]["S4_by_judge"]) == {"evaluator", "onnx"}
    assert (
        record["white"]["S4"] == record["white"]["S4_by_judge"]["onnx"]["top1"]
        and record["S2"] == record["S2_by_judge"]["onnx"]["top1"]
    )
    assert (
        record["row_evaluator"]["S4"] == record["white"]["S4_by_judge"]["evaluator"]["top1"]
        and f"judge {judge}" in result.output
    )
    result = runner.invoke(app, ["attack", "invert", str(exported / "mixup" / "model.pt"), *common, "-p", str(params)])
    assert result.exit_code == 0, result.output
    inversion = json.loads((tmp_path / "out" / "inversion.json").read_text())
    assert (
        inversion["judge"] == str(judge)
        and inversion["decoder"]["top1"] == inversion["decoder"]["by_judge"]["onnx"]["top1"]
    )
    assert {"top1", "top5", "template_cosine", "chance_top1"} <= set(inversion["optimisation"]["by_judge"]["onnx"])
    params.write_text(f"attack:\n  judge: {tmp_path / 'missing.onnx'}\n  eval_faces: 4\n  batch_size: 4\n")
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "-p", str(params), "--no-mix"]
    )
    assert (
        result.exit_code == 1 and f"error: ONNX face embedder not found: {tmp_path / 'missing.onnx'}" in result.output
    )


def test_onnx_providers_follow_the_device_rule(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers("auto") == onnx_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(
        ValueError,
        match=r"device 'cuda' asks for CUDA, but this ONNX Runtime has no CUDAExecutionProvider \(install onnxruntime-gpu\)",
    ):
        onnx_providers("cuda")
    with pytest.raises(ValueError, match=r"Expected device to be one of auto"):
        onnx_providers("gpu")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["none", "mixup"])
def test_on_cuda_models_embed_as_on_the_cpu_and_the_export_matches(exported, faces, name):
    import onnxruntime as ort

    _, images = faces
    on_cpu, _ = load_trained_model(exported / name / "model.pt", "cpu")
    on_gpu, _ = load_trained_model(exported / name / "model.pt", "cuda")
    assert on_gpu.device.type == "cuda"
    reference = on_cpu.embed(images[:16], flip_average=True)
    torch.testing.assert_close(on_gpu.embed(images[:16], flip_average=True), reference, atol=2e-3, rtol=0)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        embedder = OnnxFaceEmbedder(exported / f"{name}.onnx", device="cuda")
        assert embedder.providers[0] == "CUDAExecutionProvider"
        torch.testing.assert_close(
            embedder.embed(images[:16]), on_cpu.embed(images[:16], flip_average=False), atol=2e-3, rtol=0
        )
