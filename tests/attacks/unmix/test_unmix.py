"""Un-mixing attacks on released folders: teeth on a weak release, nothing on the default one."""

import dataclasses
import itertools
import json
import random

import numpy as np
import pytest
import torch

from fmix.attacks.release import _shard_truth, nearest_faces
from fmix.attacks.unmix import match_structure, read_release, regenerate_secrets, resolve_labels
from fmix.masker.onnx_masker import OnnxMasker
from fmix.params import MaskParams
from fmix.release.protect import ReleaseOptions, protect_folder, sample_name

WEAK = ReleaseOptions(insecure_seed=0, insecure_reuse=True)
# The default release's secrets come from the OS CSPRNG; a fixed key the attacker lacks gives the
# same algorithm with reproducible draws, so the attacks' errors below do not change between runs.
SECRET = ReleaseOptions(secret_key=bytes(range(32)))
ATTACKS = {"regenerate": regenerate_secrets, "labels": resolve_labels, "structure": match_structure}


def _release(aligned, masker, folder, options, anonymize=False, faces=None):
    params = MaskParams(
        batch_size=64, previews=0, anonymize=anonymize, noise=None, noise_photos=None
    )  # the masker's noise
    options = ReleaseOptions(**{**options.__dict__, "ledger": folder.parent / f"{folder.name}.ledger"})
    protect_folder(
        aligned,
        folder,
        masker,
        params,
        faces,
        name_key=b"name key" if anonymize else None,
        progress=False,
        release=options,
    )
    return folder


def _one_face_per_identity(aligned, path):
    """A split CSV of the first face of each identity: every partner's label names one row."""
    rows = [
        f"{sorted(d.glob('*.png'))[0].relative_to(aligned).as_posix()},{d.name}"
        for d in sorted(aligned.iterdir())
        if d.is_dir()
    ]
    path.write_text("path,identity\n" + "\n".join(rows) + "\n")
    return path


def _errors(folder, aligned, masker_path, attack, **mixing_changes):
    release, masker = read_release(folder), OnnxMasker(masker_path)
    truth = _shard_truth(folder, release.run["release"], folder.parent / f"{folder.name}.ledger", aligned, masker)
    mixing = dataclasses.replace(masker.mixing, **mixing_changes)  # what the attacker takes the mixing to be
    estimates, info = attack(release, mixing) if attack is regenerate_secrets else attack(release, mixing.rescale)
    return torch.cat([nearest_faces(estimates[s], truth[s][2])[0] for s in release.shards]), info


@pytest.fixture(scope="module")
def unsigned_masker(pipeline_sample, tmp_path_factory):
    """The sample's masker with mixing that leaves the signs alone and adds no noise (the default does both)."""
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams, MixingParams

    path = tmp_path_factory.mktemp("unsigned") / "masker.onnx"
    export_masker(
        pipeline_sample["aligned"],
        pipeline_sample["splits"] / "public.csv",
        path,
        ExportParams(),
        mixing=MixingParams(sign_flip=False, noise=0.0),
    )
    return path


@pytest.fixture(scope="module")
def releases(pipeline_sample, unsigned_masker, tmp_path_factory):
    """Weak releases (recorded seed, faces reused) without and with the sign mask, and default
    ones (secret randomness), of the same 60 real faces."""
    root = tmp_path_factory.mktemp("releases")
    aligned, masker = pipeline_sample["aligned"], pipeline_sample["masker"]
    faces = _one_face_per_identity(aligned, root / "faces.csv")
    return {
        "weak": _release(aligned, unsigned_masker, root / "weak", WEAK, faces=faces),
        "weak_signed": _release(aligned, masker, root / "weak_signed", WEAK, faces=faces),
        "default": _release(aligned, masker, root / "default", SECRET, faces=faces),
        "default_all": _release(aligned, masker, root / "default_all", SECRET),
    }


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_recovers_faces_from_a_weak_release(releases, pipeline_sample, unsigned_masker, name):
    errors, _ = _errors(releases["weak"], pipeline_sample["aligned"], unsigned_masker, ATTACKS[name])
    mixes, _ = _errors(
        releases["weak"],
        pipeline_sample["aligned"],
        unsigned_masker,
        lambda r, *_: ({s: p.samples for s, p in r.shards.items()}, {}),
    )
    assert errors.median() < 0.05, f"{name}: median relative error {errors.median():.3f}"
    assert mixes.median() > 0.5  # the mixes themselves are far from every face


@pytest.mark.parametrize(("name", "recovers"), [("regenerate", True), ("labels", False), ("structure", False)])
def test_the_sign_mask_leaves_a_weak_release_to_its_recorded_seed_alone(releases, pipeline_sample, name, recovers):
    """Under a sign mask a mix is no longer a linear function of its faces: only replaying the draws (signs included) solves it."""
    errors, _ = _errors(releases["weak_signed"], pipeline_sample["aligned"], pipeline_sample["masker"], ATTACKS[name])
    if recovers:
        assert errors.median() < 0.05, f"{name}: median relative error {errors.median():.3f}"
    else:
        assert errors.median() >= 0.5 and (errors < 0.05).sum() == 0, (
            f"{name}: median relative error {errors.median():.3f}"
        )


def _weak_release_with(pipeline_sample, root, mixing):
    """A masker exported with ``mixing`` and a weak release of one face per identity made with it."""
    from fmix.masker.export import export_masker
    from fmix.params import ExportParams

    aligned, masker = pipeline_sample["aligned"], root / "masker.onnx"
    export_masker(aligned, pipeline_sample["splits"] / "public.csv", masker, ExportParams(), mixing=mixing)
    return masker, _release(
        aligned, masker, root / "weak", WEAK, faces=_one_face_per_identity(aligned, root / "faces.csv")
    )


def test_replaying_a_recorded_seed_takes_the_mixes_noise_off_too(pipeline_sample, tmp_path):
    """``mixing.noise`` is one more draw of the release: the recorded seed replays it exactly, a guess without it does not."""
    from fmix.params import MixingParams

    aligned = pipeline_sample["aligned"]
    masker, folder = _weak_release_with(pipeline_sample, tmp_path, MixingParams(noise=0.5))
    errors, info = _errors(folder, aligned, masker, regenerate_secrets)
    assert info["shards_matched"] == 1 and errors.median() < 0.05, f"median relative error {errors.median():.3f}"
    errors, info = _errors(folder, aligned, masker, regenerate_secrets, noise=0.0)
    assert info["shards_matched"] == 1 and errors.median() >= 0.5 and (errors < 0.05).sum() == 0, (
        f"median relative error {errors.median():.3f}"
    )


@pytest.fixture(scope="module")
def default_noise_release(pipeline_sample, tmp_path_factory):
    """A weak release without the sign mask, its mixes carrying the default noise (0.75)."""
    from fmix.params import MixingParams

    masker, folder = _weak_release_with(
        pipeline_sample, tmp_path_factory.mktemp("default_noise"), MixingParams(sign_flip=False)
    )
    assert OnnxMasker(masker).mixing.noise == 0.75
    return masker, folder


@pytest.mark.parametrize(("name", "recovers"), [("regenerate", True), ("labels", False), ("structure", False)])
def test_the_default_noise_alone_leaves_a_weak_release_to_its_recorded_seed(
    default_noise_release, pipeline_sample, name, recovers
):
    """Without a sign mask but with mixing.noise at its default, solving the linear mixing recovers no face; replaying the seed still does."""
    masker, folder = default_noise_release
    errors, _ = _errors(folder, pipeline_sample["aligned"], masker, ATTACKS[name])
    if recovers:
        assert errors.median() < 0.05, f"{name}: median relative error {errors.median():.3f}"
    else:
        assert errors.median() >= 0.5 and (errors < 0.05).sum() == 0, (
            f"{name}: median relative error {errors.median():.3f}"
        )


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("release", ["default", "default_all"])
def test_each_attack_fails_on_the_default_release(releases, pipeline_sample, name, release):
    errors, _ = _errors(releases[release], pipeline_sample["aligned"], pipeline_sample["masker"], ATTACKS[name])
    assert errors.median() >= 0.5 and (errors < 0.05).sum() == 0, f"{name}: median relative error {errors.median():.3f}"


def test_secret_regeneration_finds_the_recorded_seed_only_in_the_weak_release(releases, pipeline_sample):
    _, weak = _errors(
        releases["weak_signed"], pipeline_sample["aligned"], pipeline_sample["masker"], regenerate_secrets
    )
    _, default = _errors(releases["default"], pipeline_sample["aligned"], pipeline_sample["masker"], regenerate_secrets)
    assert weak == {"seeds_tried": 1, "recorded_seed": 0, "shards_matched": 1, "shards": 1}
    assert default == {"seeds_tried": 16, "recorded_seed": None, "shards_matched": 0, "shards": 1}


def test_no_release_file_holds_a_seed_or_key(releases, pipeline_sample, tmp_path):
    key = tmp_path / "secret.key"
    key.write_bytes(b"k" * 32)
    os_random = _release(pipeline_sample["aligned"], pipeline_sample["masker"], tmp_path / "os", ReleaseOptions())
    keyed = _release(
        pipeline_sample["aligned"],
        pipeline_sample["masker"],
        tmp_path / "keyed",
        ReleaseOptions(secret_key=key.read_bytes()),
    )
    for folder in (os_random, keyed):
        run = json.loads((folder / "run.json").read_text())
        assert run["randomness"] == {"source": "os" if folder != keyed else "key"} and run["one_use_per_face"] is True
        text = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
        assert key.read_bytes() not in text and not (folder / "labels.json").exists()
    assert json.loads((releases["weak"] / "run.json").read_text())["randomness"] == {
        "source": "insecure_seed",
        "seed": 0,
    }


def _name_mapping_accuracy(folder, aligned, items, key):
    """The mapping attack of issue 8: replay the seeded shuffle (recorded seed, else 0), guess each
    row's source, and count the guesses that are a constituent of that sample (checked by the owner)."""
    run = json.loads((folder / "run.json").read_text())
    seed = run["randomness"].get("seed", 0)
    order = list(items)
    random.Random(seed).shuffle(order)
    rows = [line.split(",") for line in (folder / "index.csv").read_text().splitlines()[1:]]
    hits = 0
    for name, shard, row, *_ in rows:
        guess = order[int(shard) * run["batch_size"] + int(row)][0]
        shard_sources = [rel for rel, _ in order[int(shard) * run["batch_size"] : (int(shard) + 1) * run["batch_size"]]]
        constituents = [
            set(c)
            for size in (1, 2)
            for c in itertools.combinations(shard_sources, size)
            if sample_name(list(c) if size > 1 else c[0], key) == name
        ]
        hits += any(guess in c for c in constituents)
    return hits / len(rows)


def test_anonymised_names_cannot_be_mapped_back(pipeline_sample, tmp_path):
    from fmix.release.protect import list_inputs

    aligned = pipeline_sample["aligned"]
    items = list_inputs(aligned, None)
    weak = _release(aligned, pipeline_sample["masker"], tmp_path / "weak", WEAK, anonymize=True)
    default = _release(aligned, pipeline_sample["masker"], tmp_path / "default", ReleaseOptions(), anonymize=True)
    assert _name_mapping_accuracy(weak, aligned, items, b"name key") == 1.0
    assert _name_mapping_accuracy(default, aligned, items, b"name key") < 0.25


def test_nearest_faces_reference_values():
    truth = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 1.0]]]])
    estimates = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 0.2]]], [[[0.0, 1.5]]]])
    error, index = nearest_faces(estimates, truth)
    assert index.tolist() == [0, 1, 1]
    torch.testing.assert_close(error, torch.tensor([0.0, 0.8, 0.5]))
    with pytest.raises(ValueError, match="Expected estimates and truth of one sample shape"):
        nearest_faces(estimates, truth[:, :, :, :1])


def test_secret_streams_and_key_file(tmp_path):
    from fmix.release.randomness import ReleaseRandomness, read_secret_key

    keyed = [ReleaseRandomness(key=b"k" * 16, context="inputs").generator(3).initial_seed() for _ in range(2)]
    assert keyed[0] == keyed[1] != ReleaseRandomness(key=b"k" * 16, context="other").generator(3).initial_seed()
    assert ReleaseRandomness().generator(3).initial_seed() != ReleaseRandomness().generator(3).initial_seed()
    assert ReleaseRandomness(insecure_seed=2).generator(3).initial_seed() == 2 * 1_000_003 + 3
    assert ReleaseRandomness(insecure_seed=0).label_numbers(["b", "a", "c"]) == {"b": 0, "a": 1, "c": 2}
    assert ReleaseRandomness(key=b"k" * 16).record() == {"source": "key"} and ReleaseRandomness().record() == {
        "source": "os"
    }
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="has 3 bytes, need at least 16"):
        read_secret_key(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="secret key file not found"):
        read_secret_key(tmp_path / "none")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "key").write_bytes(b"k" * 32)
    with pytest.raises(ValueError, match="must not be inside the output folder"):
        read_secret_key(tmp_path / "out" / "key", tmp_path / "out")
    with pytest.raises(ValueError, match="give a secret key or an insecure seed, not both"):
        ReleaseRandomness(key=b"k" * 16, insecure_seed=0)


def _synthetic_shard(partners, weights, dim=4000, seed=0):
    """Mixes ``(w0 f_b + w1 f_p(b)) / ||w||`` of random near-orthogonal faces around a common mean face."""
    rng = np.random.default_rng(seed)
    faces = rng.standard_normal((len(partners), dim)) + 0.5 * rng.standard_normal(dim)
    w = np.array(weights)
    mixes = (w[:, :1] * faces + w[:, 1:] * faces[partners]) / np.linalg.norm(w, axis=1, keepdims=True)
    return torch.from_numpy(mixes).float().reshape(len(partners), 1, 1, dim), torch.from_numpy(faces).float()


def test_structure_attack_solves_cycles_and_trees_exactly():
    from fmix.attacks.unmix import Release, ReleasedShard

    # 0 -> 1 -> 2 -> 0 (3-cycle) with 3 -> 0, 4 -> 0; 5 <-> 6 (2-cycle) with 7 -> 6; 8 -> 9 -> 10 -> 11 -> 8 (4-cycle) with 12 -> 9
    partners = [1, 2, 0, 0, 0, 6, 5, 6, 9, 10, 11, 8, 9]
    weights = [
        [0.6, 0.4],
        [0.45, 0.55],
        [0.5, 0.5],
        [0.62, 0.38],
        [0.4, 0.6],
        [0.55, 0.45],
        [0.35, 0.65],
        [0.6, 0.4],
        [0.52, 0.48],
        [0.47, 0.53],
        [0.64, 0.36],
        [0.58, 0.42],
        [0.41, 0.59],
    ]
    samples, faces = _synthetic_shard(partners, weights)
    release = Release(folder=None, run={}, shards={0: ReleasedShard(samples, [[0, 1]] * len(partners), weights)})
    estimates, info = match_structure(release)
    error = (estimates[0].reshape(len(partners), -1) - faces).norm(dim=1) / faces.norm(dim=1)
    assert error.max() < 1e-4
    # the 2-cycle's samples hold the same two faces: one of them is no clique of its own, and
    # the triangle 5, 6, 7 is tried as a 3-cycle before it is settled as one face and a 2-cycle
    assert info["rows_linked"] == 13 and info["triangles_tried"] == 2 and info["faces"] == 14


def test_structure_attack_leaves_unshared_samples_alone():
    from fmix.attacks.unmix import Release, ReleasedShard

    rng = np.random.default_rng(1)
    samples = torch.from_numpy(rng.standard_normal((6, 2, 3, 3))).float()
    release = Release(folder=None, run={}, shards={0: ReleasedShard(samples, [[0, 1]] * 6, [[0.6, 0.4]] * 6)})
    estimates, info = match_structure(release)
    torch.testing.assert_close(estimates[0], samples)
    assert info["rows_linked"] == 0
    with pytest.raises(ValueError, match=r"Expected threshold in \(0, 1\), got 1.5"):
        match_structure(release, threshold=1.5)


def test_face_cliques_and_orientation_reference_values():
    from fmix.attacks.unmix.graph import _maximal_cliques, face_cliques, orient_faces, sharing_graph

    # partners 1 -> 0, 2 -> 0, 0 -> 3 and the 4-cycle 3 -> 4 -> 5 -> 6 -> 3; faces (samples
    # holding them): {0, 1, 2}, {1}, {2}, {3, 0, 6}, {4, 3}, {5, 4}, {6, 5}
    truth = [[3], [0], [0], [4], [5], [6], [3]]
    adjacency = [{1, 2, 3, 6}, {0, 2}, {0, 1}, {0, 4, 6}, {3, 5}, {4, 6}, {0, 3, 5}]
    assert sorted(map(sorted, _maximal_cliques(adjacency[0], adjacency))) == [[1, 2], [3, 6]]
    faces = face_cliques(adjacency, [2] * 7)
    assert sorted(map(sorted, faces)) == [[0, 1, 2], [0, 3, 6], [1], [2], [3, 4], [4, 5], [5, 6]]
    partners, cycles = orient_faces(faces, 7, lambda p: sum(a != b for a, b in zip(p, truth)))
    assert partners == truth and cycles == 1
    with pytest.raises(ValueError, match="Expected one weight list per sample, got 5 samples and 4 lists"):
        sharing_graph(torch.zeros(5, 1, 2, 2), [[0.5, 0.5]] * 4)
