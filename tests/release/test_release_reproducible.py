"""A keyed release is the same, bit for bit, whatever path ``fmix mask`` takes to it (issue 32).

For a fixed-k masker and an adaptive one (a strategy network reading the FR network's confidence,
as ``fmix export --policy`` writes it), three proofs that the faster ``fmix mask`` writes what the
code before it wrote:

- its digest equals the one that code wrote (:data:`PINNED`, computed with it), wherever the masker
  file, the faces and ONNX Runtime's outputs are those of the machine the digest came from (else
  skipped: another CPU or runtime rounds otherwise);
- every shard equals what that code computes from the ledger's plan, here in the test: PIL decode,
  the whole graph on the whole batch, :meth:`~fmix.masker.protection.Protection.protect_groups`,
  ``astype``;
- its parts equal theirs on their own: the mixing, the groups drawn with k on demand, the
  per-face masker runs, the PNG decoder.

And a run that fails in one shard's thread resumes to the release an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fmix.data.faces import load_faces
from fmix.data.images import ImageReadError, read_rgb, read_rgb_fast
from fmix.freq import draw_groups
from fmix.freq.mixing import draw_groups_on_demand
from fmix.masker.build import faces_to_tensor, masker_from_metadata, masker_metadata, read_masker_metadata
from fmix.masker.export import export_masker, export_onnx
from fmix.masker.module import Masker, StrategyPolicy
from fmix.masker.onnx_masker import OnnxMasker, subgraph
from fmix.masker.protection import MixingConfig, Protection
from fmix.models.frnet import build_net
from fmix.models.strategy import ConfidenceSignal, StrategyNetwork
from fmix.params import ExportParams, MaskParams, MixingParams, TrainParams
from fmix.release import protect
from fmix.release.folder import shard_path
from fmix.release.ledger import Ledger
from fmix.release.mixing import mix_groups, release_groups
from fmix.release.protect import ReleaseOptions, protect_folder, sample_name
from fmix.release.randomness import ReleaseRandomness
from fmix_testing import make_bad_input_zoo

SECRET = b"issue-32: a fixed research key, 32b"
CASES = {  # name -> (masker, MaskParams fields, shard dtype)
    "fixed": ("fixed", {}, "float16"),
    "adaptive": ("adaptive", {}, "float16"),
    "adaptive-odd-batches-kept-names-float32": ("adaptive", {"batch_size": 7, "anonymize": False}, "float32"),
    "fixed-unmixed": ("fixed", {"mix": False}, "float16"),
}
# Case -> (fingerprint of the masker, the faces and ONNX Runtime's outputs: _fingerprint; sha256 of
# the release: _digest), as the code before issue 32 (b158fe9) wrote it. The fingerprints were pinned
# again when `export` gained `keep_highest_energy` (the masker file holds the params' hash) and when the
# exporter's stack traces left the file (they named the checkout's absolute path, so a clone skipped
# these cases); the releases they give are the same bytes.
PINNED = {
    "fixed": (
        "5cec272228242a6fcbe0fbbe2ee0ed4c3cf1813fb8b2e0180c8019009756d02f",
        "685a0b8dca3d47fc9bfb812d8d38e25d598993c3c0239c30136c19c66e016555",
    ),
    "adaptive": (
        "b94c0cc5c4a5b1db7f802266f364374726572a32681f5566951a45edeac4bda8",
        "5231765441e99c62b988ebdc71e55461e5e7d6a371e13e98a9edfd03d398e468",
    ),
    "adaptive-odd-batches-kept-names-float32": (
        "b94c0cc5c4a5b1db7f802266f364374726572a32681f5566951a45edeac4bda8",
        "2a3228770cf8a2f92ac48c07bf1232526070c91c85dca884189f81e5fc4b2c04",
    ),
    "fixed-unmixed": (
        "5cec272228242a6fcbe0fbbe2ee0ed4c3cf1813fb8b2e0180c8019009756d02f",
        "cc2b38d2a5d38c2a36e1d025bc00c12966e5e7c20917c0a36292c0c2cb17f91c",
    ),
}


# The mixing the digests were pinned with, whatever the defaults become.
PINNED_MIXING = MixingParams(noise=0.75)


@pytest.fixture(scope="module")
def maskers(pipeline_sample, tmp_path_factory) -> dict[str, Path]:
    """The pipeline's fixed-k masker (at :data:`PINNED_MIXING`) and an adaptive one (random strategy network reading the FR confidence)."""
    root = tmp_path_factory.mktemp("maskers")
    export_masker(
        pipeline_sample["aligned"],
        pipeline_sample["splits"] / "public.csv",
        root / "fixed.onnx",
        ExportParams(),
        mixing=PINNED_MIXING,
    )
    fixed = masker_from_metadata(read_masker_metadata(root / "fixed.onnx"))
    torch.manual_seed(32)
    net = build_net(TrainParams(width=0.125, embedding_size=32), fixed.mask.num_kept, 28, 5, sign_invariant=True)
    network = StrategyNetwork(fixed.mask.num_kept, tuple(fixed.k_values.tolist()), signals=1)
    with torch.no_grad():  # spread the random policy's choices over every k
        network.mlp[-1].weight.mul_(20.0)
    policy = StrategyPolicy(network, ConfidenceSignal(net.backbone, net.head))
    adaptive = Masker(fixed.mask, fixed.upsample, policy, tuple(fixed.k_values.tolist())).eval()
    metadata = masker_metadata(adaptive, ExportParams(), 112, 10, PINNED_MIXING, policy="strategy")
    export_onnx(adaptive, root / "adaptive.onnx", metadata)
    return {"fixed": root / "fixed.onnx", "adaptive": root / "adaptive.onnx"}


def _release(aligned: Path, masker: Path, out: Path, params: dict, dtype: str = "float16") -> dict:
    options = ReleaseOptions(secret_key=SECRET, ledger=out.parent / f"{out.name}-ledger.jsonl")
    params = MaskParams(
        **({"batch_size": 16, "previews": 3, "noise": None, "noise_photos": None} | params)
    )  # the masker's noise, as pinned
    return protect_folder(aligned, out, masker, params, dtype=dtype, progress=False, release=options)


def _digest(release: Path) -> str:
    """sha256 of every released file but ``run.json`` (it holds a random release id)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in release.rglob("*") if p.is_file() and p.name != "run.json"):
        digest.update(path.relative_to(release).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _fingerprint(masker: Path, aligned: Path) -> str:
    """sha256 of the masker file, the input faces and what ONNX Runtime computes on some of them."""
    digest = hashlib.sha256(masker.read_bytes())
    files = sorted(aligned.glob("*/*.png"))
    for path in files:
        digest.update(path.read_bytes())
    faces, _, _ = load_faces(files[:8], 112)
    masked, k = OnnxMasker(masker)(faces_to_tensor(faces), torch.linspace(0.05, 0.95, 8))
    digest.update(masked.numpy().tobytes() + k.numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ the release


@pytest.mark.parametrize("case", list(CASES))
def test_the_release_is_the_one_the_code_before_issue_32_wrote(case, pipeline_sample, maskers, tmp_path):
    kind, params, dtype = CASES[case]
    fingerprint, expected = PINNED[case]
    if _fingerprint(maskers[kind], pipeline_sample["aligned"]) != fingerprint:
        pytest.skip("another masker file, other faces or other ONNX Runtime outputs than where the digest was pinned")
    _release(pipeline_sample["aligned"], maskers[kind], tmp_path / "release", params, dtype)
    assert _digest(tmp_path / "release") == expected


@pytest.mark.parametrize("case", ["fixed", "adaptive", "adaptive-odd-batches-kept-names-float32"])
def test_every_shard_is_what_the_original_path_computes_from_the_ledgers_plan(case, pipeline_sample, maskers, tmp_path):
    kind, params, dtype = CASES[case]
    aligned, out = pipeline_sample["aligned"], tmp_path / "release"
    summary = _release(aligned, maskers[kind], out, params, dtype)
    ledger = Ledger(summary["ledger"])
    header = next(entry for entry in ledger.entries if entry["kind"] == "release")
    randomness = ReleaseRandomness(SECRET, None, header["inputs_hash"])
    name_key = randomness.name_key() if params.get("anonymize", True) else None
    masker = OnnxMasker(maskers[kind])  # the whole graph on the whole batch, ONNX Runtime's default threads
    assert masker.transform_session is None and not masker.per_face
    shards = ledger.shards(header["release"])
    assert len(shards) == summary["shards"] > 1
    for shard, sources in shards.items():
        faces, loaded, skipped = load_faces([aligned / source for source in sources], 112)  # PIL
        assert skipped == [] and loaded == list(range(len(sources)))
        labels = torch.tensor([header["labels"][Path(source).parent.name] for source in sources])
        protected = masker.protection.protect_groups(faces_to_tensor(faces), labels, randomness.generator(shard))
        stored = np.load(shard_path(out, shard, "npy"))
        assert stored.dtype == np.dtype(dtype) and stored.tobytes() == protected.x.numpy().astype(dtype).tobytes()
        rows = json.loads(shard_path(out, shard, "json").read_text())["rows"]
        assert len(rows) == len(protected.k)
        for row, size, group in zip(rows, protected.k.tolist(), protected.members.tolist()):
            assert row["labels"] == protected.labels[row["row"], :size].tolist()
            assert row["name"] == sample_name([sources[i] for i in group[:size]], name_key)


def test_the_adaptive_release_draws_k_for_the_faces_that_start_a_group_only(maskers, pipeline_sample, tmp_path):
    masker = OnnxMasker(maskers["adaptive"], threads=1)
    masker.split_graph()
    assert masker.per_face and masker.transform_session is not None and masker.policy_session is not None
    fixed = OnnxMasker(maskers["fixed"], threads=1)
    fixed.split_graph()
    assert fixed.per_face and fixed.transform_session is None  # a fixed k costs nothing: the whole graph
    files = sorted(pipeline_sample["aligned"].glob("*/*.png"))[:24]
    faces, _, _ = load_faces(files, 112)
    people = sorted({f.parent.name for f in files})
    labels = torch.tensor([people.index(f.parent.name) for f in files])
    asked: list[int] = []
    policy_k = masker.policy_k
    masker.policy_k = lambda *args: asked.append(1) or policy_k(*args)
    released = release_groups(masker, faces, labels, torch.Generator().manual_seed(3), "float32")
    whole = OnnxMasker(maskers["adaptive"]).protection.protect_groups(
        faces_to_tensor(faces), labels, torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(a, b) for a, b in zip(released, whole))
    assert len(asked) == len(whole.k) + len(whole.leftover) < len(files)


def test_the_masker_split_graph_computes_each_face_as_the_whole_graph_does(maskers, pipeline_sample):
    files = sorted(pipeline_sample["aligned"].glob("*/*.png"))[:21]
    faces, _, _ = load_faces(files, 112)
    noise = torch.rand(len(files), generator=torch.Generator().manual_seed(0))
    for kind in ("fixed", "adaptive"):
        whole = OnnxMasker(maskers[kind])
        masked, k = whole(faces_to_tensor(faces), noise)
        masker = OnnxMasker(maskers[kind], threads=1)
        masker.split_graph()
        into, k_into = np.empty_like(masked.numpy()), np.empty_like(k.numpy())
        masker.run_into(faces, noise.numpy(), into, k_into, chunk=8)
        assert into.tobytes() == masked.numpy().tobytes() and np.array_equal(k_into, k.numpy())
        if kind == "adaptive":
            masker.run_into(faces, None, into, None, chunk=5)
            assert into.tobytes() == masked.numpy().tobytes()
            alone = [
                int(masker.policy_k(faces[i : i + 1], into[i : i + 1], noise.numpy()[i : i + 1])[0]) for i in range(21)
            ]
            assert alone == k.tolist()


def test_a_masker_file_changed_after_loading_is_not_split(maskers, tmp_path):
    path = tmp_path / "masker.onnx"
    path.write_bytes(maskers["adaptive"].read_bytes())
    masker = OnnxMasker(path, threads=1)
    path.write_bytes(maskers["fixed"].read_bytes())
    with pytest.raises(ValueError, match="changed since it was loaded"):
        masker.split_graph()
    with pytest.raises(ValueError, match="threads >= 1"):
        OnnxMasker(maskers["fixed"], threads=0)


def test_subgraph_cuts_what_onnx_extracts(maskers):
    import onnx
    from onnx.utils import Extractor

    data = maskers["adaptive"].read_bytes()
    model = onnx.load_from_string(data)
    for inputs, outputs in ((["images"], ["masked"]), (["images", "masked", "policy_noise"], ["k"])):
        cut, extracted = (
            onnx.load_from_string(subgraph(data, inputs, outputs)),
            Extractor(model).extract_model(inputs, outputs),
        )
        onnx.checker.check_model(cut)
        assert [node.SerializeToString() for node in cut.graph.node] == [
            node.SerializeToString() for node in extracted.graph.node
        ]
        assert sorted(t.SerializeToString() for t in cut.graph.initializer) == sorted(
            t.SerializeToString() for t in extracted.graph.initializer
        )
        assert [v.name for v in cut.graph.input] == inputs and [v.name for v in cut.graph.output] == outputs
        assert cut.metadata_props == model.metadata_props and cut.opset_import == model.opset_import
    with pytest.raises(ValueError, match=r"no value or no type for \['images'\]"):
        subgraph(data, [], ["masked"])
    with pytest.raises(ValueError, match="no value or no type"):
        subgraph(data, ["images"], ["nothing"])
    with pytest.raises(ValueError):
        subgraph(data[:1000], ["images"], ["masked"])


def _released_faces(release: Path) -> list[str]:
    names = [line.split(",")[0] for line in (release / "index.csv").read_text().splitlines()[1:]]
    return sorted(face for name in names for face in name.split("+"))


def test_a_run_that_fails_in_a_shard_resumes_with_every_face_once(pipeline_sample, maskers, tmp_path, monkeypatch):
    aligned, params = pipeline_sample["aligned"], {"batch_size": 8, "anonymize": False}
    whole = _release(aligned, maskers["adaptive"], tmp_path / "whole", params)
    original, ledger_path = protect._protect_shard, tmp_path / "cut-ledger.jsonl"

    def failing(job, batch, generator):
        ledger = Ledger(ledger_path)
        release = next(e["release"] for e in ledger.entries if e["kind"] == "release")
        if ledger.shards(release).get(3) == [rel for rel, _ in batch]:
            raise RuntimeError("killed in shard 3")
        return original(job, batch, generator)

    monkeypatch.setattr(protect, "_protect_shard", failing)
    with pytest.raises(RuntimeError, match="killed in shard 3"):
        _release(aligned, maskers["adaptive"], tmp_path / "cut", params)
    cut = tmp_path / "cut"
    written = sorted(int(p.stem.split("-")[1]) for p in cut.glob("shard-*.json"))
    assert written == [0, 1, 2] and sorted(int(p.stem.split("-")[1]) for p in cut.glob("shard-*.npy")) == written
    released = {e["shard"] for e in Ledger(ledger_path).entries if e["kind"] == "released"}
    assert released == set(written)  # the ledger lists the faces of written shards only
    before = {p.name: p.read_bytes() for p in cut.glob("shard-*")}
    monkeypatch.setattr(protect, "_protect_shard", original)
    resumed = _release(aligned, maskers["adaptive"], cut, params)
    # The shards written before are kept, and are those of an uninterrupted run (the same plan and key).
    assert all(
        (cut / name).read_bytes() == data == (tmp_path / "whole" / name).read_bytes() for name, data in before.items()
    )
    # Shards planned after the failure come from a new shuffle of the faces left: every face once all the same.
    left_over = [s["source"] for s in resumed["skipped_files"] if s["status"] == "left_over"]
    assert sorted(_released_faces(cut) + [f.rsplit(".", 1)[0] for f in left_over]) == sorted(
        p.relative_to(aligned).with_suffix("").as_posix() for p in aligned.glob("*/*.png")
    )
    assert resumed["inputs"] == whole["inputs"] and resumed["shards"] == whole["shards"]


# ------------------------------------------------------------------ its parts


class _FakeGraph:
    """(images, noise) -> (random masked faces, k from the noise), deterministic."""

    def __init__(self, k_values: tuple[int, ...]) -> None:
        self.k_values = torch.tensor(k_values)

    def __call__(self, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(int(images.sum()) % 1000)
        masked = torch.randn(images.shape[0], 30, 6, 6, generator=generator) * 3
        return masked, self.k_values[(noise * len(self.k_values)).long().clamp(max=len(self.k_values) - 1)]


@pytest.mark.parametrize(
    "k_values, config",
    [
        ((2,), MixingConfig(6, "dirichlet", 0.65, True, False, True, 0.75)),
        ((2, 3, 4, 5, 6), MixingConfig(6, "dirichlet", 0.65, True, False, True, 0.75)),
        ((2, 3, 4, 5, 6), MixingConfig(6, "instahide", None, False, True, False, 0.0)),
        ((3, 6), MixingConfig(6, "dirichlet", 0.65, True, True, True, 0.0)),
        ((1, 2), MixingConfig(2, "dirichlet", None, True, False, True, 0.5)),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_mix_groups_is_protect_groups_bit_for_bit(k_values, config, dtype):
    protection = Protection(_FakeGraph(k_values), config, k_values)
    images = torch.rand(61, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255
    labels = torch.randint(0, 9, (61,), generator=torch.Generator().manual_seed(2))
    reference = torch.Generator().manual_seed(5)
    expected = protection.protect_groups(images, labels, reference)
    generator = torch.Generator().manual_seed(5)
    masked, k = protection.mask(images, generator)
    mixed = mix_groups(protection, masked, k, labels, generator, dtype)
    assert mixed.x.dtype == getattr(torch, dtype)
    assert mixed.x.numpy().tobytes() == expected.x.numpy().astype(dtype).tobytes()
    assert all(torch.equal(a, b) for a, b in zip(mixed[1:], expected[1:]))
    assert torch.equal(generator.get_state(), reference.get_state())  # the same draws, nothing more


def test_a_mix_noise_grows_with_its_most_photographed_constituent():
    """``mask.noise_photos``: the factor per label is sqrt(max(1, n / noise_photos)); a mix takes its constituents' largest."""
    items = [(f"a/{i}.png", "a") for i in range(20)] + [(f"b/{i}.png", "b") for i in range(5)] + [("c/0.png", "c")]
    scale = protect.noise_scale_of_labels(items, {"a": 2, "b": 0, "c": 1}, 5)
    assert scale.dtype == np.float32 and scale.tolist() == [1.0, 1.0, 2.0]  # a: sqrt(20 / 5)
    assert protect.noise_scale_of_labels(items, {"a": 2, "b": 0, "c": 1}, None) is None
    # On zero faces a mix is its noise alone: each row is the plain release's row times its factor, bit for bit.
    config = MixingConfig(6, "dirichlet", 0.65, True, False, True, 0.75)
    protection = Protection(_FakeGraph((2, 3)), config, (2, 3))
    labels = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    masked, k = torch.zeros(40, 30, 6, 6), torch.tensor([2, 3] * 20)
    factors = np.array([1.0, 3.0, 2.0], np.float32)
    plain = mix_groups(protection, masked, k, labels, torch.Generator().manual_seed(5))
    scaled = mix_groups(protection, masked, k, labels, torch.Generator().manual_seed(5), noise_scale=factors)
    assert torch.equal(plain.members, scaled.members) and torch.equal(plain.weights, scaled.weights)
    for row in range(len(plain.k)):
        largest = max(factors[label] for label in plain.labels[row, : plain.k[row]].tolist())
        assert torch.equal(scaled.x[row], plain.x[row] * largest)
    assert {float(factors[plain.labels[row, : plain.k[row]]].max()) for row in range(len(plain.k))} >= {2.0, 3.0}


def test_groups_drawn_with_k_on_demand_are_draw_groups_and_ask_the_anchors_only():
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        batch = int(torch.randint(1, 40, (1,), generator=generator))
        labels = torch.randint(0, int(torch.randint(1, 8, (1,), generator=generator)), (batch,), generator=generator)
        k = torch.randint(1, 7, (batch,), generator=generator)
        expected = draw_groups(labels, k, 6, torch.Generator().manual_seed(seed))
        asked: list[int] = []
        drawn = draw_groups_on_demand(
            labels, lambda face: asked.append(face) or int(k[face]), 6, torch.Generator().manual_seed(seed)
        )
        assert all(torch.equal(a, b) for a, b in zip(drawn, expected))
        assert len(asked) == len(set(asked)) == len(expected.size) + len(expected.leftover)  # one per group
    with pytest.raises(ValueError, match=r"k in \[1, 6\]"):
        draw_groups_on_demand(torch.tensor([0, 1]), lambda face: 7, 6)


def _png(path: Path, chunks: list[tuple[bytes, bytes]], width: int, height: int, colour: int = 2) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(k, d) for k, d in chunks))
    return path


def _outcome(reader, path: Path):
    try:
        return reader(path).tobytes()
    except ImageReadError as err:
        return err.status, str(err)


def test_the_fast_png_reader_reads_what_read_rgb_reads(pipeline_sample, lfw_sample, tmp_path):
    zoo = tmp_path / "zoo"
    make_bad_input_zoo(zoo, next(lfw_sample.glob("*/*.jpg")))
    face = next(pipeline_sample["aligned"].glob("*/*.png"))
    rgb = Image.open(face).convert("RGB")
    rgb.save(zoo / "plain.png")
    info = PngInfo()
    info.add_text("comment", "a text chunk changes no pixel")
    rgb.save(zoo / "text.png", pnginfo=info)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(zoo / "exif.png", exif=exif)  # eXIf: read_rgb turns it; the fast path hands it over
    rgb.save(zoo / "transparent.png", transparency=(0, 0, 0))
    data = (zoo / "plain.png").read_bytes()
    (zoo / "bad_crc.png").write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    (zoo / "truncated.png").write_bytes(data[: len(data) // 2])
    (zoo / "trailing.png").write_bytes(data + b"trailing bytes")
    pixels = np.asarray(rgb)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    _png(zoo / "hand_made.png", [(b"IDAT", zlib.compress(rows)), (b"IEND", b"")], *rgb.size)
    packed = zlib.compress(rows)
    broken = packed[: len(packed) // 2] + bytes(64) + packed[len(packed) // 2 + 64 :]
    _png(zoo / "bad_zlib.png", [(b"IDAT", broken), (b"IEND", b"")], *rgb.size)
    _png(zoo / "short_rows.png", [(b"IDAT", zlib.compress(rows[:-500])), (b"IEND", b"")], *rgb.size)
    _png(zoo / "huge.png", [(b"IDAT", zlib.compress(rows)), (b"IEND", b"")], 70000, 70000)
    (zoo / "folder.png").mkdir()
    os.symlink(zoo / "missing.png", zoo / "broken_link.png")
    files = sorted(zoo.iterdir())
    assert len(files) >= 25
    for path in files:
        assert _outcome(read_rgb_fast, path) == _outcome(read_rgb, path), path.name
    assert isinstance(_outcome(read_rgb_fast, zoo / "hand_made.png"), bytes)
    assert _outcome(read_rgb_fast, zoo / "bad_zlib.png")[0] == "corrupt"
