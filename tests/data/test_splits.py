import csv
import filecmp

import pytest

from fmix.data.align import MANIFEST, AlignResult
from fmix.data.splits import (
    heldout_pairs,
    lfw_pairs,
    make_split,
    read_lfw_pairs,
    read_pairs,
    split_identities,
    write_split,
)
from fmix.params import SplitParams
from fmix_testing import LFW

SMALL = SplitParams(folds=2, pairs_per_fold=4, min_images=5, private_extra_min_images=None)


def _fake_aligned(folder, counts: dict[str, int]):
    """A manifest of aligned faces (no pixels needed for splitting)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        AlignResult(f"{n}/{n}_{i:04d}.jpg", n, "ok", f"{n}/{n}_{i:04d}.png")
        for n, c in counts.items()
        for i in range(1, c + 1)
    ]
    rows.append(AlignResult("Bad/x.jpg", "Bad", "corrupt", message="corrupt"))
    (folder / MANIFEST).write_text("".join(json.dumps(r.__dict__) + "\n" for r in rows))
    return folder


def _roles(out):
    def identities(name):
        with open(out / name, newline="") as handle:
            return {row["identity"] for row in csv.DictReader(handle)}

    return (
        identities("private_train.csv"),
        identities("public.csv"),
        identities("verification.csv"),
        identities("private_val.csv"),
    )


def test_split_on_real_aligned_faces_is_disjoint_and_complete(aligned_sample, tmp_path):
    params = SplitParams(folds=2, pairs_per_fold=4, private_fraction=0.4)
    summary = write_split(make_split(aligned_sample, params), tmp_path / "s", params)
    private, public, verification, val = _roles(tmp_path / "s")
    assert not (private & public) and not (private & verification) and not (public & verification)
    assert val == private and len(private | public | verification) == 10
    assert summary["counts"]["private_identities"] == 4 and summary["counts"]["public_identities"] == 2
    for pair in read_pairs(tmp_path / "s" / "pairs.csv"):
        assert (aligned_sample / pair.path_a).is_file() and (aligned_sample / pair.path_b).is_file()
        assert (pair.path_a.split("/")[0] == pair.path_b.split("/")[0]) == pair.same
        assert pair.path_a.split("/")[0] in verification


def test_split_is_deterministic_and_seeded(tmp_path):
    aligned = _fake_aligned(tmp_path / "a", {f"P{i:02d}": 5 + i % 4 for i in range(40)})
    write_split(make_split(aligned, SMALL), tmp_path / "one", SMALL)
    write_split(make_split(aligned, SMALL), tmp_path / "two", SMALL)
    other = SplitParams(seed=1, folds=2, pairs_per_fold=4)
    write_split(make_split(aligned, other), tmp_path / "three", other)
    names = ["private_train.csv", "private_val.csv", "public.csv", "verification.csv", "pairs.csv"]
    assert filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", names, shallow=False)[0] == names
    assert _roles(tmp_path / "one")[0] != _roles(tmp_path / "three")[0]


def test_private_val_takes_a_fraction_of_each_identity(tmp_path):
    aligned = _fake_aligned(tmp_path / "a", {f"P{i:02d}": 10 for i in range(30)})
    split = make_split(aligned, SMALL)
    val = {}
    for _, name in split.private_val:
        val[name] = val.get(name, 0) + 1
    assert set(val.values()) == {2}  # 20% of 10
    assert not {p for p, _ in split.private_val} & {p for p, _ in split.private_train}


def test_min_images_excludes_small_identities(tmp_path):
    aligned = _fake_aligned(tmp_path / "a", {**{f"P{i:02d}": 6 for i in range(20)}, "Few": 4})
    roles = split_identities(
        {n: ["x"] * c for n, c in {**{f"P{i:02d}": 6 for i in range(20)}, "Few": 4}.items()}, SMALL
    )
    assert "Few" not in sum(roles.values(), [])
    assert sum(len(v) for v in roles.values()) == 20
    assert "Bad" not in {n for _, n in make_split(aligned, SMALL).verification}


def test_heldout_pairs_are_identity_disjoint_across_folds():
    faces = {f"P{i:02d}": [f"P{i:02d}/{j}.png" for j in range(4)] for i in range(12)}
    pairs = heldout_pairs(faces, sorted(faces), SplitParams(folds=3, pairs_per_fold=10))
    fold_ids = [
        {p.path_a.split("/")[0] for p in pairs if p.fold == f} | {p.path_b.split("/")[0] for p in pairs if p.fold == f}
        for f in range(3)
    ]
    assert not (fold_ids[0] & fold_ids[1]) and not (fold_ids[1] & fold_ids[2])
    assert [sum(p.same for p in pairs if p.fold == f) for f in range(3)] == [5, 5, 5]
    assert [sum(not p.same for p in pairs if p.fold == f) for f in range(3)] == [5, 5, 5]
    assert len({(p.path_a, p.path_b) for p in pairs}) == len(pairs)


def test_split_errors_say_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="only 2 identities have >= split.min_images=5 aligned faces; need at least 3"):
        split_identities({"a": ["x"] * 5, "b": ["x"] * 5, "c": ["x"] * 4}, SMALL)
    with pytest.raises(ValueError, match="3 verification identities cannot fill 10 identity-disjoint folds"):
        heldout_pairs({}, ["a", "b", "c"], SplitParams())


def test_read_lfw_pairs_view2():
    pairs = read_lfw_pairs(LFW / "pairs.txt")
    assert len(pairs) == 6000 and sum(p[5] for p in pairs) == 3000
    assert pairs[0][0] == 0 and pairs[-1][0] == 9
    assert pairs[0] == (0, "Abel_Pacheco", 1, "Abel_Pacheco", 4, True)


def test_read_lfw_pairs_rejects_malformed_files(tmp_path):
    (tmp_path / "p.txt").write_text("2\t1\nA\t1\t2\n")
    with pytest.raises(ValueError, match="expected 4 pair lines after the header, found 1"):
        read_lfw_pairs(tmp_path / "p.txt")
    (tmp_path / "q.txt").write_text("x y\n")
    with pytest.raises(ValueError, match="first line must be"):
        read_lfw_pairs(tmp_path / "q.txt")
    with pytest.raises(FileNotFoundError, match="LFW pairs file not found"):
        read_lfw_pairs(tmp_path / "none.txt")


def test_lfw_mode_keeps_pair_identities_out_of_private_and_public(tmp_path):
    counts = {"Abel_Pacheco": 4, **{f"P{i:02d}": 6 for i in range(10)}}
    aligned = _fake_aligned(tmp_path / "a", counts)
    params = SplitParams(pairs="lfw", lfw_pairs_file=str(LFW / "pairs.txt"))
    split = make_split(aligned, params)
    assert [(p.path_a, p.path_b, p.same) for p in split.pairs] == [
        ("Abel_Pacheco/Abel_Pacheco_0001.png", "Abel_Pacheco/Abel_Pacheco_0004.png", True)
    ]
    assert split.notes["lfw_pairs_dropped_unaligned"] == 5999
    assert "Abel_Pacheco" not in {n for _, n in split.private_train + split.public}
    assert {n for _, n in split.verification} == {"Abel_Pacheco"}
    assert lfw_pairs(LFW / "pairs.txt", {})[1] == 6000


def test_extra_private_identities_train_only_and_leave_the_other_roles_unchanged(tmp_path):
    counts = {f"P{i:02d}": 5 + i % 4 for i in range(40)} | {f"S{i:02d}": 2 + i % 3 for i in range(12)} | {"One": 1}
    aligned = _fake_aligned(tmp_path / "a", counts)
    extra = SplitParams(folds=2, pairs_per_fold=4, min_images=5, private_extra_min_images=2)
    base, more = make_split(aligned, SMALL), make_split(aligned, extra)
    assert more.pairs == base.pairs and more.public == base.public and more.private_val == base.private_val
    added = set(more.private_train) - set(base.private_train)
    assert {name for _, name in added} == {f"S{i:02d}" for i in range(12)}  # the 1-photo person stays out
    assert len(added) == sum(2 + i % 3 for i in range(12)) and set(base.private_train) <= set(more.private_train)
    assert more.notes["private_extra_identities"] == 12


def test_extra_private_identities_bound_is_checked():
    with pytest.raises(ValueError, match=r"split.private_extra_min_images must be null or in \[1, split.min_images\)"):
        SplitParams(min_images=5, private_extra_min_images=5)
