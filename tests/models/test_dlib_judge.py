"""The dlib judge on real aligned LFW faces (the session's aligned sample: 10 identities x 6 photos)."""

import numpy as np
import pytest
import torch

from fmix.data.faces import load_faces
from fmix.models.dlib_judge import CHIP_SIZE, FACE_BOX_112, THRESHOLD, DlibJudge, as_hwc_uint8, model_folder


@pytest.fixture(scope="module")
def judge():
    return DlibJudge()


@pytest.fixture(scope="module")
def sample(aligned_sample):
    """(faces (60, 112, 112, 3) uint8, labels (60,), names like 'Bill_Clinton_0001')."""
    paths = sorted(aligned_sample.glob("*/*.png"))
    faces, loaded, skipped = load_faces(paths, size=112)
    assert not skipped and len(loaded) == 60
    identities = sorted({p.parent.name for p in paths})
    labels = np.array([identities.index(p.parent.name) for p in paths])
    return faces, labels, [p.stem for p in paths]


@pytest.fixture(scope="module")
def descriptors(judge, sample):
    return judge.embed(sample[0])


def test_model_files_come_from_the_installed_package():
    folder = model_folder()
    assert folder.parent.name == "face_recognition_models"
    assert (folder / "shape_predictor_5_face_landmarks.dat").stat().st_size > 5_000_000
    assert (folder / "dlib_face_recognition_resnet_model_v1.dat").stat().st_size > 20_000_000


def test_reference_distances_of_named_photos(sample, descriptors, judge):
    names = sample[2]
    d = lambda a, b: judge.distance(descriptors[[names.index(a)]], descriptors[[names.index(b)]]).item()  # noqa: E731
    # Measured on these aligned photos; same person under dlib's 0.6, different people above it.
    assert d("Alejandro_Toledo_0001", "Alejandro_Toledo_0002") == pytest.approx(0.519, abs=0.01)
    assert d("Alvaro_Uribe_0001", "Alvaro_Uribe_0002") == pytest.approx(0.531, abs=0.01)
    assert d("Bill_Clinton_0001", "Bill_Clinton_0002") == pytest.approx(0.476, abs=0.01)
    assert d("Alejandro_Toledo_0001", "Alvaro_Uribe_0001") == pytest.approx(0.800, abs=0.01)
    assert d("Alejandro_Toledo_0001", "Amelie_Mauresmo_0001") == pytest.approx(0.857, abs=0.01)
    assert d("Bill_Clinton_0001", "Carlos_Menem_0001") == pytest.approx(0.805, abs=0.01)


def test_leave_one_out_and_pair_rates(sample, descriptors, judge):
    labels = sample[1]
    distance = judge.distance(descriptors, descriptors).numpy()
    np.fill_diagonal(distance, np.inf)
    assert (labels[distance.argmin(axis=1)] == labels).mean() == 1.0  # measured 1.000
    upper = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[upper]
    close = distance[upper] < THRESHOLD
    assert close[same].mean() >= 0.95  # measured 0.987 (148 of 150 pairs)
    assert close[~same].mean() <= 0.01  # measured 0.0019 (3 of 1620 pairs)


def test_face_box_is_where_dlibs_detector_finds_aligned_faces(sample):
    import cv2
    import dlib

    detector = dlib.get_frontal_face_detector()
    boxes = []
    for face in sample[0]:
        padded = cv2.resize(
            np.pad(face, ((56, 56), (56, 56), (0, 0)), mode="edge"), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC
        )
        found = detector(padded, 0)
        if len(found) == 1:
            r = found[0]
            boxes.append([r.left() / 2 - 56, r.top() / 2 - 56, r.right() / 2 - 56, r.bottom() / 2 - 56])
    assert len(boxes) >= 50
    assert np.abs(np.median(boxes, axis=0) - np.array(FACE_BOX_112)).max() <= 4.0


def test_layouts_dtypes_and_containers_agree(judge, sample, descriptors):
    faces = sample[0][:3]
    chw = torch.from_numpy(faces).permute(0, 3, 1, 2)
    for variant in (chw, chw.float(), faces.astype(np.float32), chw.float().contiguous().numpy()):
        assert torch.allclose(judge.embed(variant), descriptors[:3], atol=1e-5)
    chips = judge.chips(chw)
    assert chips.shape == (3, CHIP_SIZE, CHIP_SIZE, 3) and chips.dtype == np.uint8
    assert judge.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)
    # Other crop sizes: the box scales with the side.
    assert judge.face_box(112) == (134, 174, 313, 333) and judge.face_box(224) == (268, 348, 626, 666)


def test_bad_inputs_say_what_is_wrong(judge):
    with pytest.raises(TypeError, match="numpy array or torch.Tensor, got list"):
        judge.embed([[0]])
    with pytest.raises(ValueError, match=r"shape \(N, 3, S, S\) or \(N, S, S, 3\), got \(3, 112, 112\)"):
        judge.embed(np.zeros((3, 112, 112), np.uint8))
    with pytest.raises(ValueError, match="square images of side >= 32"):
        judge.embed(np.zeros((1, 112, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="square images of side >= 32"):
        judge.embed(np.zeros((1, 3, 16, 16), np.uint8))
    with pytest.raises(TypeError, match="dtype uint8 or floating, got int64"):
        judge.embed(np.zeros((1, 112, 112, 3), np.int64))
    too_bright = torch.zeros(1, 3, 112, 112)
    too_bright[0, 0, 0, 0] = 300.0
    with pytest.raises(ValueError, match=r"in \[0, 255\], got values in \[0, 300\]"):
        judge.embed(too_bright)
    with pytest.raises(ValueError, match="finite faces"):
        as_hwc_uint8(np.full((1, 112, 112, 3), np.nan, np.float32), "faces")
    with pytest.raises(ValueError, match=r"a of shape \(N, 128\), got \(2, 64\)"):
        judge.distance(torch.zeros(2, 64), torch.zeros(2, 128))
    with pytest.raises(TypeError, match="b to be a torch.Tensor"):
        judge.distance(torch.zeros(2, 128), np.zeros((2, 128)))
    with pytest.raises(ValueError, match="pad in"):
        DlibJudge(pad=-1)
    with pytest.raises(ValueError, match="upscale to be an int >= 1"):
        DlibJudge(upscale=0)
