import json

import pytest
import torch
from typer.testing import CliRunner

from fmix.attacks.run import Evaluator, load_protector
from fmix.cli import app
from fmix.params import AdaptiveParams, TrainParams
from fmix.train.loop import train

runner = CliRunner()
TINY = dict(
    width=0.125, embedding_size=32, batch_size=4, epochs=1, threads=1, adaptive=AdaptiveParams(policy_warmup_epochs=0.0)
)


@pytest.fixture(scope="module")
def trained(pipeline_sample, tmp_path_factory):
    """A tiny evaluator (RGB) and a tiny adaptive target on the sample pipeline."""
    root = tmp_path_factory.mktemp("trained")
    paths = pipeline_sample["aligned"], pipeline_sample["splits"]
    train(TrainParams(method="none", seed=1, **{**TINY, "epochs": 8}), *paths, root / "evaluator", progress=False)
    train(TrainParams(method="adaptive", **TINY), *paths, root / "adaptive", pipeline_sample["masker"], progress=False)
    return root


def test_attack_reconstruct_and_invert_commands(pipeline_sample, trained, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "attack:\n  seconds: 1.0\n  eval_faces: 8\n  batch_size: 4\n  invert_seconds: 1.0\n  invert_identities: 2\n"
    )
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(trained / "evaluator" / "model.pt"),
        str(tmp_path / "out"),
    ]
    result = runner.invoke(
        app,
        [
            "attack",
            "reconstruct",
            str(pipeline_sample["masker"]),
            *common,
            "-p",
            str(params),
            "--method",
            "ppfrfd",
            "--no-mix",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert record["faces"] == 8 and record["mixed"] is False and record["judge"] == "dlib"
    assert "verification TAR@0.6" in result.output and "RGB evaluator S2" in result.output
    for mode in ("white", "black"):
        assert 0.0 <= record[mode]["S4"] <= 1.0 and record[mode]["steps"] >= 1 and -1.0 <= record[mode]["S3"] <= 1.0
        dlib, rgb = record[mode]["S4_by_judge"]["dlib"], record[mode]["S4_by_judge"]["evaluator"]
        assert record[mode]["S4"] == dlib["top1"] and record[mode]["top5"] == dlib["top5"] and 0.0 <= rgb["top1"] <= 1.0
        assert dlib["verified"] == 8 and 0.0 <= dlib["tar"] <= 1.0 and dlib["chance_top1"] == pytest.approx(0.25)
        # Per stratum of photos per identity (the heaviest constituent's), the headline judge's hits split exactly.
        strata = record[mode]["S4_by_stratum"]
        assert sum(rate["n"] for rate in strata.values()) == 8 and set(strata) <= {"1", "2-4", "5-19", "20+"}
        assert sum(rate["n"] * rate["top1"] for rate in strata.values()) == pytest.approx(8 * record[mode]["S4"])
        assert len(dlib["top1_hits"]) == 8 and sum(dlib["top1_hits"]) / 8 == dlib["top1"]
    worst = record["worst_stratum"]
    assert worst["S4"] == max(
        rate["top1"] for mode in ("white", "black") for rate in record[mode]["S4_by_stratum"].values()
    )
    assert worst["S4"] == record[worst["attacker"]]["S4_by_stratum"][worst["stratum"]]["top1"]
    assert record["S2"] == record["S2_by_judge"]["dlib"]["top1"] and record["chance_top1"] == pytest.approx(0.25)
    row, rgb_row = record["row"], record["row_evaluator"]
    for r in (row, rgb_row):
        expected = 0.4 * (1 - (r["S1"] + r["S2"]) / 2) + 0.6 * (1 - (max(r["S3"], 0.0) + r["S4"]) / 2)
        assert r["Score_pp"] == pytest.approx(expected, abs=1e-6)
    assert rgb_row["S4"] == record["white"]["S4_by_judge"]["evaluator"]["top1"] and rgb_row["S1"] == row["S1"]
    check = record["check"]  # masked only: the white-box attack is its own check
    assert (
        check["protection"] == "the white-box attack's own (not mixed)"
        and check["S4"] == record["white"]["S4"]
        and check["S3"] == record["white"]["S3"]
    )
    assert record["check_min_s4"] == 0.25 and record["attack_works"] is (check["S4"] >= 0.25)
    assert f"attack check (the white-box attack's own (not mixed)): S3 {check['S3']:.3f}" in result.output
    result = runner.invoke(
        app, ["attack", "invert", str(trained / "adaptive" / "model.pt"), *common, "-p", str(params)]
    )
    assert result.exit_code == 0, result.output
    inversion = json.loads((tmp_path / "out" / "inversion.json").read_text())
    assert (
        inversion["method"] == "adaptive"
        and inversion["judge"] == "dlib"
        and inversion["decoder"]["chance"] == pytest.approx(0.25)
    )
    for part in ("decoder", "optimisation"):
        scores = inversion[part]
        assert scores["top1"] == scores["by_judge"]["dlib"]["top1"] and 0.0 <= scores["tar"] <= 1.0
        assert {"top1", "top5", "template_cosine", "chance"} <= set(scores["by_judge"]["evaluator"])
    assert (tmp_path / "out" / "inversion_grid.png").is_file() and (tmp_path / "out" / "grid.png").is_file()


def test_attack_with_the_rgb_evaluator_as_judge(pipeline_sample, trained, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "attack:\n  seconds: 1.0\n  eval_faces: 4\n  batch_size: 4\n  invert_seconds: 1.0\n  invert_identities: 2\n  judge: evaluator\n"
    )
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(trained / "evaluator" / "model.pt"),
        str(tmp_path / "out"),
    ]
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "-p", str(params), "--no-mix"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert (
        record["judge"] == "evaluator"
        and "row_evaluator" not in record
        and set(record["white"]["S4_by_judge"]) == {"evaluator"}
    )
    assert record["white"]["S4"] == record["white"]["S4_by_judge"]["evaluator"]["top1"] and "TAR" not in result.output
    params.write_text("attack:\n  judge: arcface\n")
    result = runner.invoke(
        app, ["attack", "invert", str(trained / "adaptive" / "model.pt"), *common, "-p", str(params)]
    )
    assert (
        result.exit_code == 1
        and "attack.judge must be 'dlib', 'evaluator' or the path of an ONNX face embedder ending in .onnx, got 'arcface'"
        in result.output
    )


def test_black_box_attacker_reads_the_map_size_from_the_data(pipeline_sample, trained, tmp_path):
    """A u=2 masker gives 28x28 maps; the surrogate keeps the defaults but takes u from the data's shape."""
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams

    masker = tmp_path / "masker_u2.onnx"
    export_masker(
        pipeline_sample["aligned"], pipeline_sample["splits"] / "public.csv", masker, ExportParams(upsample=2)
    )
    params = tmp_path / "params.yaml"
    params.write_text(
        "attack:\n  seconds: 600.0\n  steps: 3\n  eval_faces: 4\n  batch_size: 4\n"
    )  # a step budget, met first
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(trained / "evaluator" / "model.pt"),
        str(tmp_path / "out"),
    ]
    result = runner.invoke(app, ["attack", "reconstruct", str(masker), *common, "-p", str(params)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert record["mixed"] is True and -1.0 <= record["black"]["S3"] <= 1.0
    assert [record[mode]["steps"] for mode in ("white", "black", "check")] == [3, 3, 3]


def test_the_attackers_invert_magnitudes_of_sign_masked_mixes(pipeline_sample, trained, tmp_path):
    from fmix.attacks.run import masker_target
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams, MixingParams

    export_masker(
        pipeline_sample["aligned"],
        pipeline_sample["splits"] / "public.csv",
        tmp_path / "no_signs.onnx",
        ExportParams(),
        mixing=MixingParams(sign_flip=False),
    )
    assert masker_target(pipeline_sample["masker"], None, mix=True, black_box_k=2).sign_masked  # the default mixing
    assert not masker_target(
        pipeline_sample["masker"], None, mix=False, black_box_k=2
    ).sign_masked  # masked only: no sign mask
    assert not masker_target(tmp_path / "no_signs.onnx", None, mix=True, black_box_k=2).sign_masked
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  seconds: 1.0\n  eval_faces: 4\n  batch_size: 4\n  judge: evaluator\n")
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(trained / "evaluator" / "model.pt"),
        str(tmp_path / "out"),
    ]
    for masker, read in ((pipeline_sample["masker"], "|x|"), (tmp_path / "no_signs.onnx", "x")):
        result = runner.invoke(app, ["attack", "reconstruct", str(masker), *common, "-p", str(params)])
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / "out" / "privacy.json").read_text())
        assert record["attackers_read"] == read
        check = record["check"]  # a third attacker, on the same masking un-mixed, scored against each face itself
        assert (
            check["protection"] == "un-mixed (k = 1)"
            and check["steps"] >= 1
            and check["n"] == 4
            and 0.0 <= check["S4"] <= 1.0
        )
        assert check["floor"] != record["white"]["floor"]  # one face's floor, not the best constituent's
        assert (
            record["attack_works"] is (check["S4"] >= record["check_min_s4"])
            and "attack check (un-mixed (k = 1))" in result.output
        )


def test_the_attack_check_attacks_the_same_masking_un_mixed(pipeline_sample, maskerless):
    import torch

    from fmix.attacks.protectors import sign_blind
    from fmix.attacks.run import masker_target, model_target
    from fmix.data.faces import load_face_set

    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "public.csv")
    images, labels = faces.float_images(torch.arange(len(faces))), faces.labels
    target = masker_target(pipeline_sample["masker"], None, mix=True, black_box_k=2)
    pairs = target.unmixed(images, labels, torch.Generator().manual_seed(0))
    assert torch.equal(pairs.partners, torch.arange(len(images))[:, None]) and torch.equal(
        pairs.weights, torch.ones(len(images), 1)
    )
    torch.testing.assert_close(pairs.x, target.white.masker.masked(images))  # the owner's masking, no mixing
    mixed = sign_blind(target.white)(images, labels, torch.Generator().manual_seed(0))
    assert mixed.weights.shape[1] > 1 and not torch.allclose(mixed.x, pairs.x.abs())
    _, seen = target.as_attackers_see(target.unmixed, pairs)  # the attackers read |x| under the sign mask
    assert torch.equal(seen.x, pairs.x.abs()) and torch.equal(seen.partners, pairs.partners)
    assert (
        masker_target(pipeline_sample["masker"], None, mix=False, black_box_k=2).unmixed is None
    )  # not mixed: no separate check
    pixels = model_target(maskerless / "instahide" / "model.pt", black_box_k=2).unmixed
    single = pixels(images, labels, torch.Generator().manual_seed(0))
    assert (
        pixels.k == 1 and bool((single.weights[:, 0] == 1).all()) and not single.weights[:, 1:].any()
    )  # one face per sample
    torch.testing.assert_close(
        single.x.abs(), ((images - 127.5) / 128).abs()
    )  # InstaHide's encoding, one face, its sign mask
    assert model_target(maskerless / "dctdp" / "model.pt", black_box_k=2).unmixed is None


def test_attack_errors(pipeline_sample, trained, tmp_path):
    with pytest.raises(ValueError, match="the evaluator must be trained on clean RGB faces"):
        Evaluator(trained / "adaptive" / "model.pt")
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams

    export_masker(
        None, None, tmp_path / "adaptive.onnx", ExportParams(), policy_model=trained / "adaptive" / "model.pt"
    )
    with pytest.raises(ValueError, match="holds a trained policy: pass the model it came from"):
        load_protector(tmp_path / "adaptive.onnx", None, mix=True)
    protector, _ = load_protector(tmp_path / "adaptive.onnx", trained / "adaptive" / "model.pt", mix=True)
    assert protector.mixing is not None and protector.mixing.k_max == 6
    result = runner.invoke(
        app,
        [
            "attack",
            "reconstruct",
            str(tmp_path / "none.onnx"),
            str(tmp_path),
            str(tmp_path),
            str(tmp_path / "e.pt"),
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1 and "error: masker not found" in result.output


def test_evaluator_identifies_clean_faces_and_counts_any_constituent(pipeline_sample, trained):
    import torch

    from fmix.data.faces import load_face_set

    evaluator = Evaluator(trained / "evaluator" / "model.pt")
    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    images = faces.float_images(torch.arange(len(faces)))
    valid = torch.tensor([[True, False]]).expand(len(faces), -1)
    clean = evaluator.identified(images, torch.stack([faces.labels, faces.labels], dim=1), valid)
    assert clean["top1"] >= 0.75 and clean["top5"] == 1.0  # 4 identities seen in training
    wrong = (faces.labels + 1) % 4
    assert (
        evaluator.identified(images, torch.stack([wrong, faces.labels], dim=1), valid)["top1"]
        <= 1 - clean["top1"] + 1e-6
    )
    both = torch.ones(len(faces), 2, dtype=torch.bool)
    assert evaluator.identified(images, torch.stack([wrong, faces.labels], dim=1), both)["top1"] == clean["top1"]


def test_attack_unmix_command_scores_a_weak_and_a_default_release(pipeline_sample, trained, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  seconds: 1.0\n  eval_faces: 8\n  batch_size: 4\n")
    faces = str(pipeline_sample["splits"] / "private_train.csv")
    common = [
        str(pipeline_sample["masker"]),
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(trained / "evaluator" / "model.pt"),
    ]
    records = {}
    for name, extra in (("weak", ["--insecure-seed", "0", "--insecure-reuse"]), ("default", [])):
        release = tmp_path / name / "release"
        ledger = ["--ledger", str(tmp_path / name / "ledger.jsonl")]  # two releases of the same faces: two owners
        result = runner.invoke(
            app,
            [
                "mask",
                str(pipeline_sample["aligned"]),
                str(release),
                "-m",
                str(pipeline_sample["masker"]),
                "--faces",
                faces,
                "-q",
                *extra,
                *ledger,
            ],
        )
        assert result.exit_code == 0, result.output
        result = runner.invoke(
            app, ["attack", "unmix", str(release), *common, str(tmp_path / name / "out"), "-p", str(params), *ledger]
        )
        assert result.exit_code == 0, result.output
        assert "(a) regenerate: error" in result.output and "(c) structure: error" in result.output
        records[name] = json.loads((tmp_path / name / "out" / "unmix.json").read_text())
        assert (tmp_path / name / "out" / "unmix_grid.png").is_file()
    weak, default = records["weak"], records["default"]
    assert weak["regenerate"]["median_relative_error"] < 0.05 and weak["regenerate"]["recovered_fraction"] == 1.0
    assert weak["mix_baseline"]["median_relative_error"] > 0.5
    for attack in ("regenerate", "labels", "structure"):
        assert default[attack]["median_relative_error"] >= 0.5 and default[attack]["recovered_fraction"] == 0.0
        assert (
            0.0 <= default[attack]["S4"] <= 1.0 and -1.0 <= default[attack]["S3"] <= 1.0 and "floor" in default[attack]
        )
    assert "seed" not in json.dumps(default["run"]) and weak["run"]["randomness"] == {
        "source": "insecure_seed",
        "seed": 0,
    }
    result = runner.invoke(
        app,
        [
            "attack",
            "unmix",
            str(tmp_path / "default" / "release"),
            *common,
            str(tmp_path / "o"),
            "-p",
            str(params),
            "--ledger",
            str(tmp_path / "none.jsonl"),
        ],
    )
    assert (
        result.exit_code == 1
        and "error: the ledger" in result.output
        and "holds no shard of the release" in result.output
    )


@pytest.fixture(scope="module")
def maskerless(pipeline_sample, trained):
    """Tiny instahide and dctdp models (beside the evaluator): protections without an exported masker."""
    for method in ("instahide", "dctdp"):
        train(
            TrainParams(method=method, **TINY),
            pipeline_sample["aligned"],
            pipeline_sample["splits"],
            trained / method,
            pipeline_sample["masker"],
            progress=False,
        )
    return trained


def test_the_white_box_knows_the_models_own_protection(pipeline_sample, maskerless):
    import torch

    from fmix.attacks.run import model_target
    from fmix.masker.protection import MixingConfig
    from fmix.models.artifact import load_trained_model

    pixels = model_target(maskerless / "instahide" / "model.pt", black_box_k=2)
    assert (
        pixels.info["protection"] == "pixels" and pixels.white.k == 4 and pixels.sign_masked
    )  # the attackers invert |x|
    assert pixels.white.mixing == MixingConfig(
        4, "instahide", 0.65, sign_flip=True, permute_channels=False, rescale=True
    )
    assert pixels.black(torch.zeros(1, 3, 112, 112), []).mixing == MixingConfig(2, "dirichlet", 0.65, sign_flip=True)
    noisy = model_target(maskerless / "dctdp" / "model.pt", black_box_k=2)
    model, _ = load_trained_model(maskerless / "dctdp" / "model.pt")
    assert (
        noisy.info["protection"] == "noisy" and noisy.white.clip == model.encoder.noise.clip and not noisy.sign_masked
    )
    torch.testing.assert_close(
        noisy.white.scales, model.encoder.noise.scales().detach()
    )  # the learned scales, from model.pt
    assert noisy.white.scales.std() > 0 and torch.equal(
        noisy.white.transform.mask.kept, model.encoder.transform.mask.kept
    )
    with pytest.raises(
        ValueError,
        match=r"method 'none' has attack surface None: only pixels, noisy are attacked through the trained model",
    ):
        model_target(maskerless / "evaluator" / "model.pt", black_box_k=2)


@pytest.mark.parametrize(("method", "kind", "mixed"), [("instahide", "pixels", True), ("dctdp", "noisy", False)])
def test_attack_protection_of_methods_without_a_masker(pipeline_sample, maskerless, tmp_path, method, kind, mixed):
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  seconds: 1.0\n  eval_faces: 8\n  batch_size: 4\n  judge: evaluator\n")
    model, out = maskerless / method / "model.pt", tmp_path / "out"
    common = [
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(maskerless / "evaluator" / "model.pt"),
        str(out),
    ]
    result = runner.invoke(
        app, ["attack", "protection", str(model), *common, "-p", str(params), "--name", f"{method}_tiny"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "privacy.json").read_text())
    assert (
        record["protection"] == kind
        and record["mixed"] is mixed
        and record["model"] == str(model)
        and record["faces"] == 8
    )
    assert not (out / "masker.onnx").exists() and (out / "grid.png").is_file() and "black_box" in record
    assert record["attackers_read"] == ("|x|" if kind == "pixels" else "x")  # InstaHide's sign mask is dropped
    row = record["row"]
    assert row["method"] == f"{method}_tiny" and f"{method}_tiny: S1 {row['S1']:.3f}" in result.output
    assert row["Score_pp"] == pytest.approx(
        0.4 * (1 - (max(row["S1"], 0.0) + row["S2"]) / 2) + 0.6 * (1 - (max(row["S3"], 0.0) + row["S4"]) / 2), abs=1e-6
    )
    for mode in ("white", "black"):
        assert (
            record[mode]["steps"] >= 1
            and -1.0 <= record[mode]["S3"] <= 1.0
            and 0.0 <= record[mode]["S4"] <= 1.0
            and record[mode]["n"] == 8
        )
    assert record["free_floor"] == record["white"]["floor"] and -1.0 <= row["S1"] <= 1.0


def test_the_evaluators_clean_templates_are_embedded_once_and_only_reused_for_the_same_faces(
    pipeline_sample, trained, tmp_path
):
    import shutil

    import torch

    from fmix.attacks.identity import TEMPLATES_FILE, clean_templates, load_templates, write_templates
    from fmix.data.faces import FaceSet, load_face_set

    model = tmp_path / "model.pt"
    shutil.copy(trained / "evaluator" / "model.pt", model)
    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    evaluator = Evaluator(model)
    embedded = clean_templates(evaluator, faces, evaluator.num_classes)
    assert embedded.shape == (evaluator.num_classes, 32)
    assert torch.allclose(embedded.norm(dim=1), torch.ones(evaluator.num_classes))
    assert write_templates(model, faces) == tmp_path / TEMPLATES_FILE
    assert torch.equal(load_templates(model, evaluator, faces, evaluator.num_classes), embedded)
    # The file is what is read: doctored templates come back while the evaluator and the faces are the same ...
    record = torch.load(tmp_path / TEMPLATES_FILE, weights_only=True)
    torch.save({**record, "templates": torch.zeros_like(embedded)}, tmp_path / TEMPLATES_FILE)
    assert not load_templates(model, evaluator, faces, evaluator.num_classes).any()
    # ... and never for other faces (a pixel changed), another class count or another evaluator.
    other = faces.images.clone()
    other[0, 0, 0, 0] ^= 1
    changed = FaceSet(other, faces.labels, faces.paths)
    assert torch.allclose(load_templates(model, evaluator, changed, evaluator.num_classes), embedded, atol=1e-4)
    assert load_templates(model, evaluator, faces, evaluator.num_classes + 1).shape[0] == evaluator.num_classes + 1
    model.write_bytes(model.read_bytes() + b"\0")
    assert load_templates(model, evaluator, faces, evaluator.num_classes).any()


def test_top1_per_stratum_and_the_worst_stratum_over_attackers():
    from fmix.attacks.identity import top1_by_stratum
    from fmix.attacks.run import worst_stratum

    rates = top1_by_stratum([True, False, True, True], ["20+", "2-4", "20+", "5-19"])
    assert rates == {"20+": {"n": 2, "top1": 1.0}, "2-4": {"n": 1, "top1": 0.0}, "5-19": {"n": 1, "top1": 1.0}}
    attackers = {
        "white": {"S4_by_stratum": {"2-4": {"n": 4, "top1": 0.25}, "20+": {"n": 0, "top1": None}}},
        "black": {"S4_by_stratum": {"5-19": {"n": 2, "top1": 0.5}, "2-4": {"n": 4, "top1": 0.5}}},
    }
    assert worst_stratum(attackers) == {"attacker": "black", "stratum": "5-19", "n": 2, "S4": 0.5}  # first of a tie
    assert worst_stratum({"white": {}}) is None


def test_the_scorer_wants_one_stratum_per_image(pipeline_sample, trained):
    from fmix.attacks.identity import IdentityScorer
    from fmix.data.faces import load_face_set

    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    scorer = IdentityScorer("evaluator", Evaluator(trained / "evaluator" / "model.pt"), faces)
    images, labels = faces.float_images(torch.arange(2)), faces.labels[:2, None]
    with pytest.raises(ValueError, match=r"Expected one stratum per image \(2\), got 1"):
        scorer.identified(images, labels, torch.ones(2, 1, dtype=torch.bool), strata=["2-4"])
    scored = scorer.identified(images, labels, torch.ones(2, 1, dtype=torch.bool), strata=["2-4", "20+"])
    assert set(scored["by_stratum"]) == {"2-4", "20+"} and all(rate["n"] == 1 for rate in scored["by_stratum"].values())


def test_attacks_start_from_the_shared_prior_of_their_masking(pipeline_sample, trained, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  steps: 2\n  prior_steps: 3\n  eval_faces: 4\n  batch_size: 4\n  judge: evaluator\n")
    data = [str(pipeline_sample["aligned"]), str(pipeline_sample["splits"])]
    prior = tmp_path / "prior.pt"
    result = runner.invoke(
        app, ["attack", "prior", str(pipeline_sample["masker"]), *data, str(prior), "-p", str(params)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("attack prior: 3 steps in ") and str(prior) in result.output
    common = [*data, str(trained / "evaluator" / "model.pt"), str(tmp_path / "out"), "-p", str(params)]
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "--prior", str(prior)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert record["prior"]["used"] is True and record["prior"]["steps"] == 3
    # The check is the prior itself; the white-box attacker trains it on; transfer applies it to the mixes.
    check, white, transfer = record["check"], record["white"], record["transfer"]
    assert check["protection"] == "un-mixed (k = 1), the prior" and check["steps"] == 0 and check["n"] == 4
    assert white["steps"] == 2 and transfer["steps"] == 0 and transfer["n"] == 4
    strongest = record[record["row_attacker"]]
    assert record["row_attacker"] in ("white", "transfer") and strongest["S4"] == max(white["S4"], transfer["S4"])
    assert record["row"]["S4"] == strongest["S4"] and record["row"]["S3"] == strongest["S3"]
    assert record["worst_stratum"]["S4"] >= max(white["S4"], transfer["S4"], record["black"]["S4"])
    assert "transfer (the prior on the mixes as they are)" in result.output
    # Masked only, the attackers read x, not |x|: another masking, so they train from scratch and say why.
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "--no-mix", "--prior", str(prior)]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "privacy.json").read_text())
    assert record["prior"]["used"] is False and "another masking" in record["prior"]["reason"]
    assert record["white"]["steps"] == 2 and "transfer" not in record and record["row_attacker"] == "white"
    result = runner.invoke(
        app, ["attack", "reconstruct", str(pipeline_sample["masker"]), *common, "--prior", str(params)]
    )
    assert result.exit_code == 1 and "is not a readable fmix checkpoint" in result.output
