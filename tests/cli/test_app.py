import json
import subprocess
import sys

from typer.testing import CliRunner

from fmix import __version__
from fmix.cli import app
from fmix_testing import copy_sample

runner = CliRunner()


def test_help_lists_the_steps():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "align",
        "split",
        "export",
        "mask",
        "train",
        "evaluate",
        "evaluator",
        "attack",
        "report",
        "launch",
        "pipeline",
    ):
        assert command in result.output
    attack = runner.invoke(app, ["attack", "--help"])
    assert (
        attack.exit_code == 0
        and "reconstruct" in attack.output
        and "invert" in attack.output
        and "protection" in attack.output
    )
    pipeline = runner.invoke(app, ["pipeline", "--help"])
    assert pipeline.exit_code == 0 and "generate" in pipeline.output and "profile" in pipeline.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fmix {__version__}"


def test_cli_import_is_light():
    """`fmix --help` must stay fast: the CLI module imports no heavy library."""
    code = "import sys, fmix.cli; print(sorted(m for m in ('torch', 'cv2', 'onnxruntime', 'skimage', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_align_then_split_on_real_faces(tmp_path):
    src = copy_sample(tmp_path / "src", per_identity=5)
    (tmp_path / "src" / "Bill_Clinton" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    params = tmp_path / "params.yaml"
    params.write_text("align:\n  workers: 1\nsplit:\n  folds: 2\n  pairs_per_fold: 4\n  private_fraction: 0.4\n")
    result = runner.invoke(app, ["align", str(src), str(tmp_path / "aligned"), "--params", str(params), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "aligned 50 of 51 photos of 10 identities" in result.output
    assert '{"not_an_image": 1}' in result.output
    result = runner.invoke(app, ["split", str(tmp_path / "aligned"), str(tmp_path / "splits"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "private_identities=4" in result.output
    counts = json.loads((tmp_path / "splits" / "split.json").read_text())["counts"]
    assert counts["pairs_matched"] == 4 and counts["pairs_mismatched"] == 4


def test_align_reports_errors_without_traceback(tmp_path):
    result = runner.invoke(app, ["align", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error: input folder not found" in result.output
    params = tmp_path / "p.yaml"
    params.write_text("align:\n  workers: 0\n")
    result = runner.invoke(app, ["align", str(tmp_path), str(tmp_path / "out"), "--params", str(params)])
    assert result.exit_code == 1 and "error: align.workers must be >= 1" in result.output


def test_split_reports_missing_alignment(tmp_path):
    result = runner.invoke(app, ["split", str(tmp_path), str(tmp_path / "s")])
    assert result.exit_code == 1 and "run `fmix align` first" in result.output
    result = runner.invoke(app, ["split", str(tmp_path), str(tmp_path / "s"), "--pairs", "both"])
    assert result.exit_code == 1 and "split.pairs must be 'heldout' or 'lfw'" in result.output


def test_export_and_mask_commands(aligned_sample, tmp_path):
    public = tmp_path / "public.csv"
    public.write_text(
        "path,identity\n"
        + "".join(f"{p.relative_to(aligned_sample).as_posix()},x\n" for p in sorted(aligned_sample.glob("B*/*.png")))
    )
    result = runner.invoke(app, ["export", str(aligned_sample), str(public), str(tmp_path / "m.onnx"), "--k", "3"])
    assert result.exit_code == 0, result.output
    assert "masker: 174 of 192 channels kept, 28x28 maps, statistics from 6 public faces" in result.output
    result = runner.invoke(
        app, ["mask", str(aligned_sample), str(tmp_path / "out"), "--masker", str(tmp_path / "m.onnx"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (
        'protected 60 of 60 faces in 20 samples (mixed, one use per face, k 3-3 (histogram {"3": 20}), sign mask, noise 2.5 (x sqrt(n / 5) for a person with n > 5 faces), weight cap 0.65); skipped: none'
        in result.output
    )
    plain = ["mask", str(aligned_sample), str(tmp_path / "plain"), "-m", str(tmp_path / "m.onnx"), "--no-mix", "-q"]
    result = runner.invoke(app, plain)
    assert result.exit_code == 1 and "error: 60 of the 60 faces were released before" in result.output
    result = runner.invoke(app, [*plain, "--allow-rerelease"])
    assert result.exit_code == 0 and 'masked only, not mixed, k histogram {"1": 60}' in result.output
    key = tmp_path / "out" / "key"
    key.write_bytes(b"k" * 32)
    result = runner.invoke(
        app,
        [
            "mask",
            str(aligned_sample),
            str(tmp_path / "out"),
            "-m",
            str(tmp_path / "m.onnx"),
            "--secret-key-file",
            str(key),
        ],
    )
    assert result.exit_code == 1 and "must not be inside the output folder" in result.output


def test_mask_command_errors(aligned_sample, tmp_path):
    result = runner.invoke(
        app, ["mask", str(aligned_sample), str(tmp_path / "out"), "--masker", str(tmp_path / "none.onnx")]
    )
    assert result.exit_code == 1 and "error: masker not found" in result.output


def test_hostile_inputs_get_one_line_errors(pipeline_sample, tmp_path):
    """Issue 9 item 3: each of these printed a traceback; now one `error: ...` line and exit code 1."""
    aligned, splits, masker = (str(pipeline_sample[key]) for key in ("aligned", "splits", "masker"))
    (tmp_path / "file").write_text("mine")
    (tmp_path / "latin1.yaml").write_bytes(b"split:\n  seed: \xff\n")
    (tmp_path / "evil.csv").write_text("path,identity\n../../etc/passwd,x\n")
    small = tmp_path / "small.yaml"
    small.write_text(
        "split: {folds: 2, pairs_per_fold: 4, private_fraction: 0.4, public_fraction: 0.2, val_fraction: 0.34}\n"
    )
    cases = [
        (["split", aligned, str(tmp_path / "file"), "-p", str(small)], f"File exists: {tmp_path / 'file'}"),
        (
            ["split", aligned, str(tmp_path / "s"), "-p", str(tmp_path / "latin1.yaml")],
            f"params file {tmp_path / 'latin1.yaml'} is not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 15: invalid start byte",
        ),
        (
            ["export", aligned, f"{splits}/public.csv", str(tmp_path)],
            f"{tmp_path} is an existing folder: give a file name",
        ),
        (
            ["mask", aligned, str(tmp_path / "o"), "-m", masker, "--faces", str(tmp_path / "evil.csv")],
            f"{tmp_path / 'evil.csv'} line 2: path '../../etc/passwd' must be relative to the faces folder, without '..'",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert (result.exit_code, result.output) == (1, f"error: {message}\n"), args
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "s").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.csv", "file", "latin1.yaml", "small.yaml"]


def test_train_checks_the_method_settings_against_the_mixing_section_first(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("mixing: {k_values: [2, 3, 4]}\n")  # train.adaptive.target_mean_k stays 4: no k above it
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "aligned"), str(tmp_path / "splits"), str(tmp_path / "out"), "--params", str(params)],
    )
    assert result.exit_code == 1
    assert (
        "error: train.adaptive.target_mean_k=4.0 must be null or lie strictly between the smallest and the largest of mixing.k_values=[2, 3, 4]"
        in result.output
    )
    params.write_text("train: {k: 4}\n")
    result = runner.invoke(
        app,
        ["train", str(tmp_path / "aligned"), str(tmp_path / "splits"), str(tmp_path / "out"), "--params", str(params)],
    )
    assert result.exit_code == 1 and "error: key 'k' of section 'train' moved: it is now train.mixup.k" in result.output
