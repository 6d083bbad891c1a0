"""The dlib judge's gallery file (fmix.attacks.judge_gallery): written once, read by the attacks, refused when foreign."""

import csv

import numpy as np
import pytest
import torch

from fmix.attacks.identity import DlibGallery
from fmix.attacks.judge_gallery import load_gallery, write_gallery
from fmix.data.faces import load_face_set
from fmix.models.dlib_judge import DlibJudge


@pytest.fixture(scope="module")
def gallery_file(pipeline_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge") / "gallery.npz"
    summary = write_gallery(pipeline_sample["aligned"], pipeline_sample["splits"], out)
    return out, summary


def test_the_file_round_trips_and_scores_as_embedding_in_place(pipeline_sample, gallery_file):
    out, summary = gallery_file
    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    judge = DlibJudge()
    assert summary["faces"] == len(faces) and summary["judge"]["dlib"]
    descriptors = load_gallery(out, faces, judge)
    assert descriptors.dtype == torch.float32 and descriptors.shape == (len(faces), 128)
    in_place, from_file = DlibGallery(faces, judge=judge), DlibGallery(faces, judge=judge, gallery_file=out)
    assert torch.allclose(in_place.descriptors, from_file.descriptors, atol=1e-6)
    images = faces.float_images(torch.arange(len(faces))).flip(3)  # mirrored faces: not the gallery's own images
    labels, valid = faces.labels[:, None], torch.ones(len(faces), 1, dtype=torch.bool)
    assert in_place.identified(images, labels, valid) == from_file.identified(images, labels, valid)


def test_a_gallery_of_another_split_is_refused(pipeline_sample, gallery_file, tmp_path):
    out, _ = gallery_file
    rows = list(csv.DictReader(open(pipeline_sample["splits"] / "private_train.csv", newline="")))
    with open(tmp_path / "private_train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    other = load_face_set(pipeline_sample["aligned"], tmp_path / "private_train.csv")
    with pytest.raises(ValueError, match="made for another split"):
        load_gallery(out, other, DlibJudge())


def test_a_gallery_of_another_judge_is_refused(pipeline_sample, gallery_file, tmp_path):
    out, _ = gallery_file
    faces = load_face_set(pipeline_sample["aligned"], pipeline_sample["splits"] / "private_train.csv")
    with pytest.raises(ValueError, match="made by another dlib judge"):
        load_gallery(out, faces, DlibJudge(upscale=1))
    with pytest.raises(FileNotFoundError, match="run `fmix attack gallery`"):
        load_gallery(tmp_path / "missing.npz", faces, DlibJudge())
    with np.load(out) as data:
        assert data["descriptors"].dtype == np.float32 and len(data["paths"]) == len(faces)


def test_cli_writes_the_gallery_and_fails_in_one_line(pipeline_sample, gallery_file, tmp_path):
    from typer.testing import CliRunner

    from fmix.cli import app

    out = tmp_path / "judge" / "gallery.npz"
    result = CliRunner().invoke(
        app, ["attack", "gallery", str(pipeline_sample["aligned"]), str(pipeline_sample["splits"]), str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "judge gallery:" in result.output and out.is_file()
    with np.load(out) as new, np.load(gallery_file[0]) as old:
        assert np.array_equal(new["descriptors"], old["descriptors"]) and list(new["paths"]) == list(old["paths"])
    missing = CliRunner().invoke(
        app, ["attack", "gallery", str(pipeline_sample["aligned"]), str(tmp_path / "nosplits"), str(tmp_path / "g.npz")]
    )
    assert missing.exit_code == 1 and "error: split file not found" in missing.output
    assert not (tmp_path / "g.npz").exists()
