"""Identity scores S2/S4 (fmix.attacks.identity) on real aligned faces: the dlib judge with its gallery."""

import math

import pytest
import torch

from fmix.attacks.identity import DlibGallery, IdentityScorer, chance_hit_rate
from fmix.data.faces import FaceSet

IDENTITIES = 5  # the first 5 identities of the aligned sample: 30 faces


@pytest.fixture(scope="module")
def gallery(aligned_faces):
    faces, labels = aligned_faces
    keep = labels < IDENTITIES
    face_set = FaceSet(
        faces[keep].permute(0, 2, 3, 1).contiguous(), labels[keep], [f"{i}.png" for i in range(int(keep.sum()))]
    )
    return face_set, DlibGallery(face_set)


def one_column(labels):
    return labels[:, None], torch.ones(len(labels), 1, dtype=torch.bool)


def test_clean_faces_are_identified_and_verified(gallery):
    faces, judged = gallery
    images = faces.float_images(torch.arange(len(faces)))
    labels, valid = one_column(faces.labels)
    sources = torch.arange(len(faces))[:, None]
    scores = judged.identified(images, labels, valid, sources)
    assert scores["top1"] == 1.0 and scores["top5"] == 1.0
    assert scores["tar"] >= 0.95 and scores["chance_tar"] <= 0.02  # measured TAR 0.987, impostors 0.007
    assert scores["chance_top1"] == pytest.approx(1 / IDENTITIES) and scores["chance_top5"] == 1.0
    assert scores["verified"] == len(faces) and scores["threshold"] == 0.6
    assert scores["template_distance"] == pytest.approx(0.318, abs=0.01)
    # Against the wrong person: never identified, never verified.
    wrong = judged.identified(images, (labels + 1) % IDENTITIES, valid, sources)
    assert wrong["top1"] == 0.0 and wrong["tar"] <= 0.02 and wrong["template_distance"] > 0.6


def test_a_mix_counts_through_any_constituent(gallery):
    faces, judged = gallery
    images = faces.float_images(torch.arange(len(faces)))
    right, _ = one_column(faces.labels)
    wrong = (right + 2) % IDENTITIES
    labels = torch.cat([wrong, right], dim=1)
    sources = torch.arange(len(faces))[:, None].expand(-1, 2)
    both = torch.ones(len(faces), 2, dtype=torch.bool)
    first_only = torch.tensor([[True, False]]).expand(len(faces), -1)
    assert judged.identified(images, labels, both, sources)["top1"] == 1.0
    assert judged.identified(images, labels, first_only, sources)["top1"] == 0.0
    scores = judged.identified(images, labels, both, sources)
    assert scores["chance_top1"] == pytest.approx(2 / IDENTITIES)
    assert scores["chance_top5"] == 1.0 and scores["tar"] >= 0.95


def test_without_sources_a_face_is_verified_against_itself_too(gallery):
    faces, judged = gallery
    images = faces.float_images(torch.arange(6))
    labels, valid = one_column(faces.labels[:6])
    with_self = judged.identified(images, labels, valid)["tar"]
    without_self = judged.identified(images, labels, valid, torch.arange(6)[:, None])["tar"]
    assert with_self == pytest.approx((without_self * 5 + 1) / 6)  # 6 photos of one person


def test_chance_hit_rate_reference_values():
    labels = torch.tensor([[0, 0], [1, 2]])
    valid = torch.tensor([[True, True], [True, True]])
    assert chance_hit_rate(labels, valid, 10, 1) == pytest.approx((0.1 + 0.2) / 2)
    assert chance_hit_rate(labels, valid, 10, 5) == pytest.approx((0.5 + 1 - math.comb(8, 5) / math.comb(10, 5)) / 2)
    assert chance_hit_rate(labels, torch.tensor([[True, False], [False, True]]), 4, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="num_identities >= 1"):
        chance_hit_rate(labels, valid, 0)


def test_bad_inputs_say_what_is_wrong(gallery):
    faces, judged = gallery
    images = faces.float_images(torch.arange(2))
    labels, valid = one_column(faces.labels[:2])
    with pytest.raises(ValueError, match=r"labels of shape \(2, K\), got \(3, 1\)"):
        judged.identified(images, torch.zeros(3, 1, dtype=torch.long), valid)
    with pytest.raises(ValueError, match=r"sources of the shape of labels \(2, 1\), got \(2, 2\)"):
        judged.identified(images, labels, valid, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="valid with dtype bool"):
        judged.identified(images, labels, valid.long())
    with pytest.raises(ValueError, match="at least one valid constituent"):
        judged.identified(images, labels, torch.zeros(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"images of shape \(B, 3, H, W\)"):
        judged.identified(images[:, 0], labels, valid)
    empty = FaceSet(faces.images[:0], faces.labels[:0], [])
    with pytest.raises(ValueError, match="non-empty gallery"):
        DlibGallery(empty)
    with pytest.raises(ValueError, match="labelled gallery faces"):
        DlibGallery(FaceSet(faces.images[:1], torch.tensor([-1]), ["a.png"]))
    with pytest.raises(ValueError, match="num_identities > the largest gallery label 4, got 3"):
        DlibGallery(faces, num_identities=3, judge=judged.judge)
    with pytest.raises(
        ValueError,
        match=r"judge in \('dlib', 'evaluator'\) or the path of an ONNX face embedder ending in \.onnx, got 'arcface'",
    ):
        IdentityScorer("arcface", None, faces)
