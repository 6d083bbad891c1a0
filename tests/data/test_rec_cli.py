"""``fmix rec`` on a few real LFW faces (centre crops standing in for aligned faces)."""

import csv
import pickle

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fmix.cli import app
from fmix.data.align import aligned_rows
from fmix.data.images import read_rgb
from fmix.data.insightface_bin import read_insightface_bin
from fmix.data.recordio import FacePack, RecordIOReader, pack_image_record
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


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """ALIGNED/<name>/<name>_<NNNN>.png: 112x112 centre crops of six real LFW photos."""
    root = tmp_path_factory.mktemp("aligned")
    paths = require_files([LFW_IMAGES / name / f"{name}_{i:04d}.jpg" for name, i in FACES])
    for (name, i), path in zip(FACES, paths):
        (root / name).mkdir(exist_ok=True)
        Image.fromarray(read_rgb(path)[69:181, 69:181]).save(root / name / f"{name}_{i:04d}.png")
    return root


def _invoke(*args: str):
    return runner.invoke(app, ["rec", *map(str, args)])


def test_pack_info_export_round_trip(aligned, tmp_path):
    pack_dir, out = tmp_path / "pack", tmp_path / "faces"
    result = _invoke("pack", aligned, pack_dir)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"packed 6 faces of 4 identities, 112x112 -> {pack_dir}"
    assert (pack_dir / "property").read_text() == "4,112,112\n"
    with open(pack_dir / "identities.csv", newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["label", "identity", "images"],
            ["0", "Abdel_Madi_Shabneh", "1"],
            ["1", "Akhmed_Zakayev", "3"],
            ["2", "Dean_Barker", "1"],
            ["3", "Giancarlo_Fisichella", "1"],
        ]
    # InsightFace's layout: header record 0, images 1..6 (the files' bytes as they are), identity records 7..10.
    reader = RecordIOReader(pack_dir / "train.rec", pack_dir / "train.idx")
    assert reader.keys == list(range(11))
    assert reader.read(0) == pack_image_record([7, 11], b"")
    assert reader.read(3) == pack_image_record(
        1, (aligned / "Akhmed_Zakayev" / "Akhmed_Zakayev_0002.png").read_bytes(), id=3
    )
    assert reader.read(8) == pack_image_record([2, 5], b"", id=8)
    pack = FacePack(pack_dir)
    assert list(pack.image_keys) == [1, 2, 3, 4, 5, 6] and pack.labels() == [0, 1, 1, 1, 2, 3]

    result = _invoke("info", pack_dir)
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip() == f"{pack_dir}: 6 images of 4 classes, 112x112; 11 records (with header record, indexed)"
    )

    result = _invoke("export", pack_dir, out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"exported 6 faces of 4 classes to {out} (0 done before, 6 now)"
    for key, (name, i) in enumerate(FACES, 1):
        label = pack.label(key)
        np.testing.assert_array_equal(
            read_rgb(out / str(label) / f"{key}.png"), read_rgb(aligned / name / f"{name}_{i:04d}.png")
        )
    rows = aligned_rows(out)  # what `fmix split` reads
    assert [(row.output, row.identity) for row in rows] == [
        (f"{label}/{key}.png", str(label)) for key, label in zip(range(1, 7), [0, 1, 1, 1, 2, 3])
    ]


def test_export_refuses_a_non_empty_folder_and_resumes(aligned, tmp_path):
    pack_dir, out = tmp_path / "pack", tmp_path / "faces"
    assert _invoke("pack", aligned, pack_dir).exit_code == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = _invoke("export", pack_dir, tmp_path / "other")
    assert (
        result.exit_code == 1
        and result.output.strip() == f"error: output folder {tmp_path / 'other'} is not empty: choose an empty folder"
    )
    result = _invoke("export", pack_dir, tmp_path / "other", "--resume")
    assert result.exit_code == 1 and "is not an unfinished export of" in result.output
    assert _invoke("export", pack_dir, out).exit_code == 0
    (out / "1" / "3.png").unlink()  # a killed run: one face missing, a half-written manifest line
    with open(out / "manifest.jsonl", "a") as manifest:
        manifest.write('{"source": "train.rec#')
    result = _invoke("export", pack_dir, out)
    assert result.exit_code == 1 and "pass --resume" in result.output
    result = _invoke("export", pack_dir, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "(5 done before, 1 now)" in result.output and (out / "1" / "3.png").is_file()
    assert len(aligned_rows(out)) == 6


def test_pack_options_and_errors(aligned, tmp_path):
    faces = tmp_path / "faces.csv"
    faces.write_text(
        "path,identity\nAkhmed_Zakayev/Akhmed_Zakayev_0001.png,Akhmed_Zakayev\nDean_Barker/Dean_Barker_0001.png,Dean_Barker\n"
    )
    result = _invoke("pack", aligned, tmp_path / "pack", "--faces", faces)
    assert result.exit_code == 0, result.output
    assert "packed 2 faces of 2 identities" in result.output
    assert FacePack(tmp_path / "pack").labels() == [0, 1]
    result = _invoke("pack", aligned, tmp_path / "pack")
    assert (
        result.exit_code == 1
        and result.output.strip()
        == f"error: {tmp_path / 'pack' / 'train.rec'} already exists: remove it or choose another folder"
    )
    wrong = tmp_path / "wrong"
    (wrong / "someone").mkdir(parents=True)
    Image.new("RGB", (112, 112)).save(wrong / "someone" / "a.png")
    Image.new("RGB", (100, 100)).save(wrong / "someone" / "b.png")
    result = _invoke("pack", wrong, tmp_path / "pack2")
    assert (
        result.exit_code == 1
        and result.output.strip()
        == f"error: cannot pack {wrong / 'someone' / 'b.png'}: it is 100x100, expected an aligned 112x112 face"
    )
    assert not (tmp_path / "pack2" / "train.rec").exists() and not list((tmp_path / "pack2").iterdir())  # no half pack
    result = _invoke("info", tmp_path / "none")
    assert result.exit_code == 1 and result.output.strip() == f"error: face pack folder not found: {tmp_path / 'none'}"


def test_lfw_bin_from_real_pairs(aligned, tmp_path):
    pairs = require_files([LFW / "pairs.txt"])[0]
    out = tmp_path / "lfw.bin"
    result = _invoke("lfw-bin", aligned, pairs, out)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: 7695 faces of 5996 pairs of {pairs} are not in {aligned}, first Abel_Pacheco/Abel_Pacheco_0001.png "
        "(faces without a detected face are not aligned; --skip-missing drops their pairs)"
    )
    assert not out.exists()
    result = _invoke("lfw-bin", aligned, pairs, out, "--skip-missing")
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip()
        == f"{out}: 4 pairs (2 matched) of 6 faces, 112x112; dropped 5996 pairs with unaligned faces"
    )
    bins, issame = pickle.loads(out.read_bytes())
    assert issame == [True, True, False, False] and len(bins) == 8
    assert bins[0] == (aligned / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.png").read_bytes()
    data = read_insightface_bin(out)
    order = [
        ("Akhmed_Zakayev", 1),
        ("Akhmed_Zakayev", 3),
        ("Akhmed_Zakayev", 2),
        ("Akhmed_Zakayev", 3),
        ("Abdel_Madi_Shabneh", 1),
        ("Dean_Barker", 1),
        ("Abdel_Madi_Shabneh", 1),
        ("Giancarlo_Fisichella", 1),
    ]
    for image, (name, i) in zip(data.images, order):
        np.testing.assert_array_equal(image, read_rgb(aligned / name / f"{name}_{i:04d}.png"))
