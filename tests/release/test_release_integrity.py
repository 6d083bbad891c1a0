"""Releases that cannot come out weaker than asked (issue 13): each case failed, or passed silently, before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from fmix.cli import app
from fmix.masker.metadata import bind_metadata, binding_digest
from fmix.masker.onnx_masker import OnnxMasker
from fmix.params import ExportParams, MaskParams, MixingParams, ParamsError, load_section
from fmix.release.folder import ReleaseWriter, read_release_folder
from fmix.release.ledger import Ledger
from fmix.release.protect import ReleaseOptions, protect_folder, released_mixing

runner = CliRunner()
PEOPLE = ("Andre_Agassi", "Angelina_Jolie", "Alvaro_Uribe")


@pytest.fixture()
def faces(pipeline_sample, tmp_path) -> Path:
    """Aligned faces of three people (5-6 each)."""
    src = tmp_path / "faces"
    for name in PEOPLE:
        shutil.copytree(pipeline_sample["aligned"] / name, src / name)
    return src


def _masker(faces: Path) -> Path:
    return faces.parent / "masker.onnx"


@pytest.fixture(autouse=True)
def _masker_beside_faces(pipeline_sample, faces):
    shutil.copy(pipeline_sample["masker"], _masker(faces))


def _edited(masker: Path, out: Path, rebind: bool = False, **changes) -> Path:
    """A copy of ``masker`` whose metadata fields are replaced (JSON-encoded), re-bound as a forger would if asked."""
    model = onnx.load(str(masker))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    metadata |= {key: json.dumps(value) if not isinstance(value, str) else value for key, value in changes.items()}
    metadata = {key: value for key, value in metadata.items() if value != "<drop>"}
    if rebind:
        metadata = bind_metadata(metadata)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(out))
    return out


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output


def _mixing(masker: Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(masker)).metadata_props}["mixing"])


# ------------------------------------------------------------------ 1. one face, one sample


def test_one_face_under_two_names_is_released_once(faces, tmp_path, owner_ledger):
    first = faces / "Andre_Agassi" / sorted(p.name for p in (faces / "Andre_Agassi").iterdir())[0]
    shutil.copy(first, faces / "Andre_Agassi" / "copy_of_first.png")  # two names in one folder
    shutil.copy(first, faces / "Angelina_Jolie" / "not_her.png")  # and under another identity
    with pytest.warns(
        UserWarning,
        match=r"2 input faces are the same image as another input and are released once: .*copy_of_first.png = .*",
    ):
        summary = protect_folder(faces, tmp_path / "out", _masker(faces), MaskParams(previews=0), progress=False)
    assert summary["skipped_by_status"].get("duplicate") == 2
    released = [h for entry in Ledger(owner_ledger).entries if entry["kind"] == "released" for h in entry["hashes"]]
    assert len(released) == len(set(released)) == summary["faces_used"]  # no content hash twice


# ------------------------------------------------------------------ 2. a mixed release has k >= 2


def _masker_of(pipeline_sample, out: Path, k: int, mixing: MixingParams) -> Path:
    """A masker of the pipeline sample's public faces with a fixed ``k`` and this mixing."""
    from fmix.masker.export import export_masker

    export_masker(
        pipeline_sample["aligned"], pipeline_sample["splits"] / "public.csv", out, ExportParams(k=k), mixing=mixing
    )
    return out


def test_a_k1_masker_is_refused_for_a_mixed_release_and_allowed_unmixed(faces, pipeline_sample, tmp_path):
    k1 = _masker_of(pipeline_sample, tmp_path / "k1.onnx", 1, MixingParams(k_values=(1,), cap=None))
    output = _error(runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(k1), "-q"]))
    assert (
        "a mixed release needs k >= 2 in every sample, but this masker's policy draws k [1] (mixing.k_max 1)" in output
    )
    assert not (tmp_path / "out").exists()
    plain = runner.invoke(app, ["mask", str(faces), str(tmp_path / "plain"), "-m", str(k1), "--no-mix", "-q"])
    assert plain.exit_code == 0 and "masked only, not mixed" in plain.output


def test_no_sample_mixes_fewer_faces_than_the_policys_smallest_k(faces, pipeline_sample, tmp_path):
    """A batch's last faces, too few for the smallest k, are left over: released as a mix of 2 they broke a
    cap of 0.4 (an error) or, under a looser cap, made a weaker mix than the masker allows."""
    k4 = _masker_of(pipeline_sample, tmp_path / "k4.onnx", 4, MixingParams(k_values=(3, 4, 5, 6), cap=0.4))
    result = runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(k4), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["released_mixing"]["k_min"] >= 3 and "k 4-4" in result.output  # 18 faces: 4 mixes of 4, 2 left
    left_over = [s for s in summary["skipped_files"] if s["status"] == "left_over"]
    assert summary["faces_used"] + len(left_over) == sum(1 for _ in faces.glob("*/*.png")) and len(left_over) == 2


def test_a_release_adds_its_own_noise_and_never_takes_the_maskers_away(faces, tmp_path):
    """``mask.noise``: the release's noise, at least the masker's, stated and recorded in run.json."""

    def release(name: str, noise: float | None) -> dict:
        options = ReleaseOptions(ledger=tmp_path / f"{name}-ledger.jsonl")
        return protect_folder(
            faces, tmp_path / name, _masker(faces), MaskParams(previews=0, noise=noise), progress=False, release=options
        )

    plain, noisy, under = release("plain", None), release("noisy", 3.0), release("under", 0.5)
    noise = {
        name: summary["released_mixing"]["noise"]
        for name, summary in zip(("plain", "noisy", "under"), (plain, noisy, under))
    }
    assert noise == {"plain": 0.75, "noisy": 3.0, "under": 0.75}  # under the masker's: the masker's
    assert (
        MaskParams().noise == 2.5 and json.loads((tmp_path / "noisy" / "run.json").read_text())["release_noise"] == 3.0
    )
    spread = {
        name: np.std(np.load(tmp_path / name / "shard-00000.npy").astype(np.float64)) for name in ("plain", "noisy")
    }
    # Unit-variance mixes plus the noise: sqrt(1 + 0.75^2) = 1.25 against sqrt(1 + 3^2) = 3.16.
    assert spread["plain"] == pytest.approx(1.25, rel=0.1) and spread["noisy"] == pytest.approx(3.16, rel=0.1)
    with pytest.raises(ParamsError, match="mask.noise must be null or a number >= 0, got -1"):
        MaskParams(noise=-1.0)
    # What the un-mixing attacks replay: the release's noise, as run.json records it.
    masker = OnnxMasker(_masker(faces))
    assert released_mixing(masker, json.loads((tmp_path / "noisy" / "run.json").read_text())).noise == 3.0
    assert released_mixing(masker, json.loads((tmp_path / "plain" / "run.json").read_text())) == masker.mixing


def test_a_release_adds_noise_per_photos_of_its_people(faces, tmp_path):
    """``mask.noise_photos``: a mix's noise grows with its most photographed person's faces; recorded and stated."""
    params = tmp_path / "params.yaml"
    params.write_text("mask:\n  previews: 0\n  noise: 1.0\n  noise_photos: 1\n")
    out = tmp_path / "out"
    args = ["mask", str(faces), str(out), "-m", str(_masker(faces)), "-p", str(params), "-q"]
    result = runner.invoke(app, [*args, "--ledger", str(tmp_path / "ledger.jsonl")])
    assert result.exit_code == 0, result.output
    assert "noise 1 (x sqrt(n / 1) for a person with n > 1 faces)" in result.output
    assert json.loads((out / "run.json").read_text())["noise_photos"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["released_mixing"]["noise"] == 1.0 and summary["released_mixing"]["noise_photos"] == 1
    # Every person has 5-6 faces: noise std sqrt(5) to sqrt(6) on unit-variance mixes, against 1 without.
    spread = np.std(np.load(out / "shard-00000.npy").astype(np.float64))
    assert spread == pytest.approx(np.sqrt(1 + 5.5), rel=0.1)
    with pytest.raises(ParamsError, match="mask.noise_photos must be null or >= 1, got 0"):
        MaskParams(noise_photos=0)
    # An --insecure-reuse release mixes every face again, with one noise: it says so, and records what it did.
    with pytest.warns(UserWarning, match="--insecure-reuse: every mix has the same noise"):
        reused = protect_folder(
            faces,
            tmp_path / "reused",
            _masker(faces),
            MaskParams(previews=0, noise_photos=2),
            progress=False,
            release=ReleaseOptions(ledger=tmp_path / "l2.jsonl", insecure_seed=1, insecure_reuse=True),
        )
    assert "noise_photos" not in reused["released_mixing"]
    assert json.loads((tmp_path / "reused" / "run.json").read_text())["noise_photos"] is None


def test_the_summary_states_what_was_released(faces, tmp_path):
    result = runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(_masker(faces)), "-q"])
    assert result.exit_code == 0, result.output
    mixing = _mixing(_masker(faces))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # mask.noise (2.5 by default) over the masker's mixing.noise (0.75): what was released, not what the masker says.
    assert summary["released_mixing"]["k_min"] >= 2 and summary["released_mixing"]["noise"] == 2.5
    assert mixing["noise"] == 0.75
    assert (
        f"k {summary['released_mixing']['k_min']}-{summary['released_mixing']['k_max']}" in result.output
        and "noise 2.5 (x sqrt(n / 5) for a person with n > 5 faces)" in result.output
    )


# ------------------------------------------------------------------ 3. the mixing settings are bound


@pytest.mark.parametrize("field, value", [("noise", 0.0), ("sign_flip", False), ("cap", None), ("k_max", 1)])
def test_an_edited_mixing_setting_is_refused_naming_the_field(faces, tmp_path, field, value):
    edited = _edited(_masker(faces), tmp_path / "edited.onnx", mixing={**_mixing(_masker(faces)), field: value})
    output = _error(runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(edited), "-q"]))
    assert "its metadata field(s) mixing differ from what the masker was exported with" in output
    assert not (tmp_path / "out").exists()


def test_run_json_records_the_recomputed_binding_and_the_params_hash_once(faces, tmp_path):
    from fmix.masker.build import read_masker_metadata

    protect_folder(faces, tmp_path / "out", _masker(faces), MaskParams(previews=0), progress=False)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    metadata = read_masker_metadata(_masker(faces))
    assert run["masker_binding"] == binding_digest(metadata) and len(run["masker_binding"]) == 16
    assert run["masker_params_hash"] == json.loads(metadata["params_hash"]) and not run[
        "masker_params_hash"
    ].startswith('"')


# ------------------------------------------------------------------ 4. nothing non-finite


def test_non_finite_numbers_are_refused_in_params_metadata_and_shards(faces, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("mixing:\n  noise: .inf\n")
    with pytest.raises(ParamsError, match=r"mixing.noise must be a finite number, got inf"):
        load_section(MixingParams, params, "mixing")
    nan = _edited(
        _masker(faces), tmp_path / "nan.onnx", rebind=True, mixing={**_mixing(_masker(faces)), "noise": float("nan")}
    )
    assert "its metadata field 'mixing' is invalid: Expected noise a finite number >= 0, got nan" in _error(
        runner.invoke(app, ["mask", str(faces), str(tmp_path / "o"), "-m", str(nan), "-q"])
    )
    writer = ReleaseWriter(tmp_path / "w", "float16")
    with pytest.raises(ValueError, match=r"shard 3: 1 protected values are not finite in float16"):
        writer.write_samples(3, np.array([[[[1e6]]]], dtype=np.float32))  # past float16's range
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ 5-7. keys and what run.json says


def test_a_short_name_key_is_refused(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("FMIX_NAME_KEY", "x")
    output = _error(runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(_masker(faces)), "-q"]))
    assert output.startswith("error: name key $FMIX_NAME_KEY has 1 bytes, need at least 16")


def test_run_json_holds_no_inputs_hash_and_a_resume_with_another_key_is_refused(faces, tmp_path, owner_ledger):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "a").write_bytes(b"a" * 32)
    (keys / "b").write_bytes(b"b" * 32)
    out = tmp_path / "out"
    command = ["mask", str(faces), str(out), "-m", str(_masker(faces)), "-q", "--secret-key-file"]
    assert runner.invoke(app, [*command, str(keys / "a")]).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert "inputs_hash" not in run and run["randomness"] == {"source": "key"}
    header = next(e for e in Ledger(owner_ledger).entries if e["kind"] == "release")
    assert len(header["inputs_hash"]) == 16 and len(header["key_check"]) == 16
    assert b"a" * 16 not in owner_ledger.read_bytes()
    (out / "shard-00000.json").unlink()
    output = _error(runner.invoke(app, [*command, str(keys / "b")]))
    assert "was made with another --secret-key-file (or none)" in output
    assert runner.invoke(app, [*command, str(keys / "a")]).exit_code == 0  # the same key resumes it


# ------------------------------------------------------------------ 8. the ledger


def test_the_default_ledger_is_one_per_owner_and_never_inside_the_input(faces, tmp_path):
    masker = str(_masker(faces))
    assert runner.invoke(app, ["mask", str(faces), str(tmp_path / "a" / "out"), "-m", masker, "-q"]).exit_code == 0
    output = _error(runner.invoke(app, ["mask", str(faces), str(tmp_path / "b" / "out"), "-m", masker, "-q"]))
    assert "faces were released before" in output  # another output parent, the same owner's ledger
    output = _error(
        runner.invoke(
            app, ["mask", str(faces), str(tmp_path / "c"), "-m", masker, "--ledger", str(faces / "ledger.jsonl"), "-q"]
        )
    )
    assert f"the ledger {faces / 'ledger.jsonl'} must not be inside the input folder" in output
    output = _error(
        runner.invoke(
            app, ["mask", str(faces), str(tmp_path / "d"), "-m", masker, "--ledger", f"{masker}/ledger.jsonl", "-q"]
        )
    )
    assert f"cannot be written: {masker} is a file, not a folder" in output


@pytest.mark.parametrize(
    "line, message",
    [
        ("42", "line 2: expected a JSON object with a 'kind', got int"),
        ('{"a":1}', "line 2: 'kind' must be one of ['release', 'released', 'shard'], got None"),
        ('{"kind":"shard","release":"zz","hashes":5}', "line 2: a 'shard' entry needs 'shard' of type int, got None"),
        ('{"kind":"release","release":"zz","out_dir":"/x","lab', "line 2: not JSON"),
    ],
)
def test_a_damaged_ledger_line_is_named_with_its_file_and_line(tmp_path, line, message):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text('{"kind": "release", "release": "r", "out_dir": "/o", "labels": {}}\n' + line + "\n")
    with pytest.raises(
        ValueError, match=f"ledger {ledger}, " + message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ):
        Ledger(ledger)


# ------------------------------------------------------------------ files read with a schema


@pytest.mark.parametrize(
    "changes, rebind, message",
    [
        ({"upsample": "<drop>"}, False, "its metadata lacks upsample"),
        ({"policy": "<drop>"}, False, "its metadata lacks policy"),
        ({"mixing": "[]"}, True, "its metadata field 'mixing' must be a JSON object"),
        ({"mixing": "{not json"}, False, "its field 'mixing' is not valid JSON"),
    ],
)
def test_a_damaged_masker_metadata_is_a_one_line_error(faces, tmp_path, changes, rebind, message):
    damaged = _edited(_masker(faces), tmp_path / "damaged.onnx", rebind=rebind, **changes)
    assert message in _error(runner.invoke(app, ["mask", str(faces), str(tmp_path / "out"), "-m", str(damaged), "-q"]))


def test_mixing_with_an_extra_key_is_refused(faces, tmp_path):
    extra = _edited(
        _masker(faces), tmp_path / "extra.onnx", rebind=True, mixing={**_mixing(_masker(faces)), "strength": 2}
    )
    assert "its metadata field 'mixing' has unknown keys ['strength']" in _error(
        runner.invoke(app, ["mask", str(faces), str(tmp_path / "o"), "-m", str(extra), "-q"])
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "must hold a JSON object, got a JSON array"),
        ('{"mix": true}', "lacks its release id"),
        ("{bad", "is not valid JSON"),
    ],
)
def test_a_damaged_run_json_is_refused_on_resume(faces, tmp_path, content, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(content)
    output = _error(runner.invoke(app, ["mask", str(faces), str(out), "-m", str(_masker(faces)), "-q"]))
    assert str(out / "run.json") in output and message in output


def _release(faces: Path, tmp_path: Path) -> Path:
    out = tmp_path / "release"
    protect_folder(faces, out, _masker(faces), MaskParams(previews=0), progress=False)
    return out


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "index.csv").write_text("name,shard,row,weights\nx,0,0,1.0\n"), "lacks the column(s) labels"),
        (
            lambda r: (r / "index.csv").write_text("name,shard,row,labels,weights\n"),
            "lists no sample: nothing was released",
        ),
        (
            lambda r: (r / "index.csv").write_text("name,shard,row,labels,weights\nx,0,0,1 2,nan 0.5\n"),
            "line 2: weights 'nan 0.5' must be finite numbers in [0, 1]",
        ),
        (lambda r: (r / "run.json").write_text("[1]"), "must hold a JSON object, got a JSON array"),
    ],
)
def test_a_damaged_release_is_refused_by_its_reader(faces, tmp_path, damage, message):
    release = _release(faces, tmp_path)
    damage(release)
    with pytest.raises(ValueError) as caught:
        read_release_folder(release)
    assert message in str(caught.value)


def test_attack_unmix_validates_the_release_before_training(faces, pipeline_sample, tmp_path):
    release = _release(faces, tmp_path)
    (release / "index.csv").write_text("name,shard,row,labels,weights\nx,0,0,1 2,nan 0.5\n")
    args = [
        str(release),
        str(_masker(faces)),
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"]),
        str(tmp_path / "evaluator.pt"),
        str(tmp_path / "o"),
    ]
    output = _error(runner.invoke(app, ["attack", "unmix", *args]))
    assert "weights 'nan 0.5' must be finite numbers" in output and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "must hold a JSON object, got a JSON array"),
        ("{}", "is not a verification.json of `fmix evaluate`"),
        ("{", "is not valid JSON"),
    ],
)
def test_report_refuses_a_damaged_verification_json(tmp_path, content, message):
    import yaml

    (tmp_path / "r" / "none").mkdir(parents=True)
    (tmp_path / "r" / "none" / "verification.json").write_text(content)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sweep": {"none": {"method": "none"}}}))
    output = _error(
        runner.invoke(
            app, ["report", str(tmp_path / "r"), str(tmp_path / "m"), str(tmp_path / "o"), "--params", str(params)]
        )
    )
    assert str(tmp_path / "r" / "none" / "verification.json") in output and message in output


# ------------------------------------------------------------------ small defects


def test_a_secret_key_that_is_a_folder_is_named_as_such(faces, tmp_path):
    (tmp_path / "keydir").mkdir()
    output = _error(
        runner.invoke(
            app,
            [
                "mask",
                str(faces),
                str(tmp_path / "o"),
                "-m",
                str(_masker(faces)),
                "--secret-key-file",
                str(tmp_path / "keydir"),
                "-q",
            ],
        )
    )
    assert "is a folder, not a key file" in output


def test_a_broken_link_in_the_input_is_skipped_with_a_status(faces, tmp_path):
    (faces / "Andre_Agassi" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    summary = protect_folder(faces, tmp_path / "out", _masker(faces), MaskParams(previews=0), progress=False)
    assert summary["skipped_by_status"].get("broken_link") == 1 and summary["faces_used"] > 0


def test_a_budget_of_faces_per_identity_releases_the_first_and_records_the_rest(faces, tmp_path, owner_ledger):
    photos = {name: sorted(p.name for p in (faces / name).iterdir()) for name in PEOPLE}
    summary = protect_folder(
        faces, tmp_path / "out", _masker(faces), MaskParams(previews=0, max_per_identity=2), progress=False
    )
    over = sum(len(names) - 2 for names in photos.values())
    assert summary["skipped_by_status"].get("over_budget") == over and summary["inputs"] == over + 6
    planned = {
        source for entry in Ledger(owner_ledger).entries if entry["kind"] == "shard" for source in entry["sources"]
    }
    assert planned == {f"{name}/{photo}" for name, names in photos.items() for photo in names[:2]}  # the first two each
    assert json.loads((tmp_path / "out" / "run.json").read_text())["max_per_identity"] == 2
    messages = {row["message"] for row in summary["skipped_files"] if row["status"] == "over_budget"}
    assert messages == {"over_budget"}  # anonymised names: the message names no file and no identity
    with pytest.raises(ParamsError, match="mask.max_per_identity must be null or >= 1, got 0"):
        MaskParams(max_per_identity=0)
