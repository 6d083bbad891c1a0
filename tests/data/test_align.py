import json
import shutil

import numpy as np
import pytest

from fmix.data.align import (
    ARCFACE_TEMPLATE,
    align_folder,
    aligned_rows,
    read_manifest,
    select_sources,
    similarity_matrix,
    template_for_size,
    warp_face,
)
from fmix.data.detect import Detection, RetinaFaceDetector, pick_central_face
from fmix.data.images import read_rgb
from fmix.params import AlignParams
from fmix_testing import LFW_IMAGES, copy_sample, make_bad_input_zoo


def _redetect_on_padded(face: np.ndarray, detector: RetinaFaceDetector, pad: int = 56) -> np.ndarray:
    """Landmarks of an aligned face, found again by the detector (padding gives it context)."""
    padded = np.pad(face, ((pad, pad), (pad, pad), (0, 0)))
    side = padded.shape[0]
    found = pick_central_face(detector.detect(padded), side, side)
    assert found is not None
    return found.landmarks - pad


def test_template_reference_values():
    np.testing.assert_allclose(template_for_size(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(template_for_size(224)[0], [76.5892, 103.3926])


def test_similarity_matrix_inverts_a_known_similarity():
    angle, scale, shift = np.deg2rad(30.0), 2.0, np.array([10.0, 20.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE @ rotation.T + shift
    matrix = similarity_matrix(landmarks)
    np.testing.assert_allclose(np.c_[landmarks, np.ones(5)] @ matrix.T, ARCFACE_TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(matrix[:, :2], np.linalg.inv(rotation), atol=1e-12)


def test_similarity_matrix_checks_shape_and_degenerate_points():
    with pytest.raises(ValueError, match=r"Expected landmarks of shape \(5, 2\), got \(4, 2\)"):
        similarity_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="landmarks are degenerate"):
        similarity_matrix(np.zeros((5, 2)))


def test_warp_face_shape_and_black_border():
    rgb = np.full((50, 60, 3), 200, dtype=np.uint8)
    out = warp_face(rgb, ARCFACE_TEMPLATE / 4.0 + 40.0, size=112)  # output (0, 0) <- source (40, 40)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 200, 200] and out[-1, -1].tolist() == [0, 0, 0]


def test_pick_central_face_prefers_centre_and_ignores_small_faces():
    def face(x0, y0, side, score):
        return Detection(np.array([x0, y0, x0 + side, y0 + side], float), score, np.zeros((5, 2)))

    centre, corner, tiny_centre = face(75, 75, 100, 0.95), face(0, 0, 100, 0.999), face(120, 120, 10, 0.99)
    assert pick_central_face([corner, centre, tiny_centre], 250, 250) is centre
    assert pick_central_face([], 250, 250) is None


def test_real_faces_land_on_the_template():
    """A few dozen real LFW photos: after warping, the detector finds the eyes within a few pixels of the template."""
    detector = RetinaFaceDetector()
    photos = [
        sorted((LFW_IMAGES / name).iterdir())[i]
        for name in ("George_W_Bush", "Colin_Powell", "Tony_Blair")
        for i in range(12)
    ]
    errors = []
    for photo in photos:
        rgb = read_rgb(photo)
        face = pick_central_face(detector.detect(rgb), 250, 250)
        assert face is not None, photo
        aligned = warp_face(rgb, face.landmarks)
        errors.append(np.linalg.norm(_redetect_on_padded(aligned, detector) - ARCFACE_TEMPLATE, axis=1))
    errors = np.array(errors)
    assert errors[:, :2].mean() < 3.5, errors[:, :2].mean()
    assert errors[:, :2].max() < 8.0, errors[:, :2].max()


def test_select_sources_filters_identities(lfw_sample):
    tasks = select_sources(lfw_sample, AlignParams(min_images=6, max_identities=3))
    assert len(tasks) == 18 and sorted({name for _, name in tasks}) == [
        "Alejandro_Toledo",
        "Alvaro_Uribe",
        "Amelie_Mauresmo",
    ]
    with pytest.raises(ValueError, match="no identity in .* has at least align.min_images=7 files"):
        select_sources(lfw_sample, AlignParams(min_images=7))


def test_align_folder_statuses_for_the_bad_input_zoo(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=3)
    expected = make_bad_input_zoo(src / "Zoo_Person", LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg")
    summary = align_folder(src, tmp_path / "out", AlignParams(min_images=1, workers=1), progress=False)
    rows = {row.source: row for row in read_manifest(tmp_path / "out")}
    assert {name: rows[f"Zoo_Person/{name}"].status for name in expected} == expected
    assert summary["status_counts"] == {
        "corrupt": 1,
        "empty_file": 1,
        "no_face": 1,
        "not_an_image": 2,
        "ok": 9,
        "too_large": 1,
    }
    assert all(row.message for row in rows.values() if row.status != "ok")
    # The EXIF-rotated copy is aligned upright: its landmarks match the upright photo's.
    upright, rotated = rows["Ariel_Sharon/Ariel_Sharon_0001.jpg"], rows["Zoo_Person/exif_rotated.jpg"]
    assert np.abs(np.array(upright.landmarks) - np.array(rotated.landmarks)).max() < 4.0
    for row in rows.values():
        if row.status == "ok":
            assert read_rgb(tmp_path / "out" / row.output).shape == (112, 112, 3)


def test_align_folder_resumes_a_killed_run(tmp_path, lfw_sample):
    params = AlignParams(workers=2, max_identities=3)
    first = align_folder(lfw_sample, tmp_path / "out", params, progress=False)
    assert first["status_counts"] == {"ok": 18} and first["processed_now"] == 18
    manifest = tmp_path / "out" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    # Simulate a kill: the last row half-written, one finished output lost.
    manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    lost = json.loads(lines[0])["output"]
    (tmp_path / "out" / lost).unlink()
    second = align_folder(lfw_sample, tmp_path / "out", params, progress=False)
    assert second["processed_now"] == 2 and second["resumed_skipped"] == 16
    assert second["status_counts"] == {"ok": 18}
    assert len(aligned_rows(tmp_path / "out")) == 18
    assert align_folder(lfw_sample, tmp_path / "out", params, progress=False)["processed_now"] == 0


def test_align_folder_refuses_to_resume_with_other_parameters(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    align_folder(src, tmp_path / "out", AlignParams(min_images=1, workers=1), progress=False)
    with pytest.raises(ValueError, match=r"aligned with other parameters \(size: 112 -> 128\)"):
        align_folder(src, tmp_path / "out", AlignParams(min_images=1, workers=1, size=128), progress=False)


def test_align_folder_refuses_output_inside_input(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    with pytest.raises(ValueError, match="must not be inside the input folder"):
        align_folder(src, src / "aligned", AlignParams(min_images=1, workers=1), progress=False)


def test_align_folder_leaves_input_unchanged(tmp_path, lfw_sample):
    src = tmp_path / "src"
    shutil.copytree(lfw_sample, src)
    before = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    align_folder(src, tmp_path / "out", AlignParams(workers=1, max_identities=2), progress=False)
    assert {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()} == before


def test_aligned_rows_needs_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `fmix align` first"):
        aligned_rows(tmp_path)
