import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmix.data.faces import load_faces
from fmix.data.images import read_rgb
from fmix.freq import apply_mixing, sample_mixing
from fmix.masker.build import (
    build_masker,
    faces_to_tensor,
    mask_from_metadata,
    masker_from_metadata,
    masker_metadata,
    params_hash,
    public_channel_stats,
)
from fmix.masker.export import export_masker, export_onnx
from fmix.masker.metadata import bind_metadata
from fmix.masker.module import FixedKPolicy, sample_k
from fmix.masker.onnx_masker import OnnxMasker
from fmix.masker.protection import MixingConfig, Protection, mix_noise
from fmix.params import AlignParams, ExportParams, MaskParams
from fmix.release.protect import ReleaseOptions, protect_folder, sample_name
from fmix.release.randomness import ReleaseRandomness
from fmix_testing import LFW_IMAGES, copy_sample


def _public_csv(aligned, path, identities=("Alejandro_Toledo", "Alvaro_Uribe", "Amelie_Mauresmo")):
    lines = ["path,identity"] + [
        f"{p.relative_to(aligned).as_posix()},{name}"
        for name in identities
        for p in sorted((aligned / name).glob("*.png"))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _faces(aligned, count=5):
    files = sorted(aligned.glob("*/*.png"))[:count]
    return faces_to_tensor(np.stack([read_rgb(f) for f in files]))


@pytest.fixture(scope="module")
def masker_file(aligned_sample, tmp_path_factory):
    folder = tmp_path_factory.mktemp("masker")
    export_masker(
        aligned_sample, _public_csv(aligned_sample, folder / "public.csv"), folder / "masker.onnx", ExportParams()
    )
    return folder / "masker.onnx"


def test_sample_k_reference_values():
    probs = torch.tensor([[0.2, 0.3, 0.5]]).expand(5, -1)
    noise = torch.tensor([0.0, 0.1, 0.25, 0.6, 0.99])
    assert sample_k(probs, noise, torch.tensor([2, 4, 6])).tolist() == [2, 2, 4, 6, 6]
    one_hot = torch.tensor([[0.0, 1.0, 0.0]]).expand(3, -1)
    assert sample_k(one_hot, torch.tensor([0.0, 0.5, 0.999]), torch.tensor([2, 3, 4])).tolist() == [3, 3, 3]


@pytest.mark.parametrize("upsample", [1, 2, 8])
def test_fused_convolution_equals_mask_of_block_dct(upsample):
    from fmix.freq import FrequencyMask, block_dct, select_channels
    from fmix.masker.module import Masker

    kept = select_channels(low_freq_threshold=1)
    generator = torch.Generator().manual_seed(0)
    mask = FrequencyMask(
        kept, torch.randn(kept.numel(), generator=generator), torch.rand(kept.numel(), generator=generator) + 0.5
    )
    masker = Masker(mask, upsample, FixedKPolicy(2, (2, 3)), (2, 3)).double()
    images = torch.rand(2, 3, 32, 24, generator=generator, dtype=torch.float64) * 255
    expected = mask.double()(block_dct(images, upsample))
    torch.testing.assert_close(masker.masked(images), expected, rtol=0, atol=1e-9)


def test_fixed_k_policy_checks_k():
    with pytest.raises(ValueError, match=r"k=7 must be one of k_values=\[2, 3\]"):
        FixedKPolicy(7, (2, 3))


def test_export_metadata_and_onnx_parity(masker_file, aligned_sample):
    onnx_masker = OnnxMasker(masker_file)
    meta = onnx_masker.metadata
    assert len(json.loads(meta["kept_channels"])) == 174 and json.loads(meta["upsample"]) == 2
    assert json.loads(meta["k_values"]) == [2, 3, 4, 5, 6] and json.loads(meta["policy"]) == "fixed:2"
    assert json.loads(meta["params_hash"]) == params_hash(ExportParams())
    assert json.loads(meta["public_faces_for_stats"]) == 18
    images, noise = _faces(aligned_sample, 5), torch.rand(5)
    masked, k = onnx_masker(images, noise)
    torch_mask = mask_from_metadata(meta)
    from fmix.freq import block_dct

    expected = torch_mask.double()(block_dct(images.double(), 2))
    assert masked.shape == (5, 174, 28, 28) and k.tolist() == [2] * 5
    # Float32 limit: the error is measured against float64, relative to the output's scale.
    assert _relative_error(masked, expected) < 1e-5
    # Normalised by public statistics: roughly zero mean, unit variance on these faces.
    assert abs(masked.mean().item()) < 0.2 and 0.5 < masked.std().item() < 1.5


def test_the_masker_file_names_no_path_of_the_exporting_checkout(masker_file):
    """The exporter's per-node stack traces hold absolute paths: a masker handed to data owners drops them
    (and so is the same file from any checkout)."""
    import onnx

    from fmix.onnx_export import drop_source_traces

    data = Path(masker_file).read_bytes()
    assert str(Path(__file__).resolve().parents[2]).encode() not in data and b"stack_trace" not in data
    model = onnx.load(str(masker_file))
    assert model.graph.node and not any(node.metadata_props for node in model.graph.node)
    model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "checkout/fmix/x.py"')
    drop_source_traces(model)
    assert model.SerializeToString() == data


def test_export_parity_at_u8_and_dynamic_batch(aligned_sample, tmp_path):
    params = ExportParams(upsample=8, keep_lowest_energy=36, k=4)
    stats, _ = public_channel_stats(sorted(aligned_sample.glob("A*/*.png")), 8)
    masker = build_masker(params, stats)
    export_onnx(masker, tmp_path / "m8.onnx", masker_metadata(masker, params, 112, 18), 112, params.opset)
    onnx_masker = OnnxMasker(tmp_path / "m8.onnx")
    for batch in (1, 3):
        images, noise = _faces(aligned_sample, batch), torch.rand(batch)
        masked, k = onnx_masker(images, noise)
        expected, expected_k = masker(images, noise)
        assert masked.shape == (batch, 36, 112, 112) and k.tolist() == [4] * batch == expected_k.tolist()
        assert _relative_error(masked, expected) < 1e-5


def _relative_error(actual, expected):
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def test_protect_batch_same_on_torch_and_onnx_and_seeded(masker_file, aligned_sample):
    onnx_masker = OnnxMasker(masker_file)
    images = _faces(aligned_sample, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    config = MixingConfig(k_max=6, sign_flip=True, permute_channels=True)

    def run(graph, seed):
        return Protection(graph, config).protect(images, labels, torch.Generator().manual_seed(seed))

    a, b, c = run(onnx_masker, 1), run(onnx_masker, 1), run(onnx_masker, 2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    meta = onnx_masker.metadata
    torch_masker = build_masker(ExportParams(), _stats_like(meta))
    t = run(torch_masker, 1)
    assert _relative_error(t.x, a.x) < 1e-5 and torch.equal(t.weights, a.weights)
    np.testing.assert_allclose(a.weights.sum(1).numpy(), 1.0, atol=1e-6)
    assert (a.weights.max(1).values <= 0.65 + 1e-6).all()
    assert (a.labels[:, 2:] == -1).all() and (a.labels[:, :2] >= 0).all()
    assert (a.labels[:, 0] != a.labels[:, 1]).all()  # partners of another identity


@pytest.mark.parametrize("k", [2, torch.tensor([2, 3] * 6)])
def test_training_mixes_are_the_column_mixes_over_every_column(k):
    """Training mixes by one matrix product (:func:`fmix.freq.mixing.mix_as_matrix`): the column loop's mixes
    over all k_max columns, the unused ones weighing 0, up to float rounding."""
    x = torch.randn(12, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    batch = Protection(None, MixingConfig(6)).protect_encoded(
        x, torch.arange(12) % 4, k, torch.Generator().manual_seed(1)
    )
    assert batch.weights.shape == (12, 6) and (batch.weights[:, 3:] == 0).all()
    torch.testing.assert_close(batch.x, apply_mixing(x, batch.partners, batch.weights, rescale=True))


def test_mix_noise_is_drawn_last_with_the_given_std_and_spares_unmixed_samples():
    x = torch.randn(64, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    labels, k = torch.arange(64) % 16, torch.tensor([2, 3, 4, 5] * 16)

    def protect(noise, mix=True):
        protection = Protection(None, MixingConfig(6, sign_flip=True, noise=noise))
        return protection.protect_encoded(x, labels, k, torch.Generator().manual_seed(1), mix=mix)

    clean, noisy = protect(0.0), protect(0.5)
    assert torch.equal(clean.partners, noisy.partners) and torch.equal(clean.weights, noisy.weights)
    added = noisy.x - clean.x
    assert added.std().item() == pytest.approx(0.5, abs=0.01) and added.mean().item() == pytest.approx(0.0, abs=0.01)
    # the noise is the generator's next draw after the sign mask
    torch.testing.assert_close(added, mix_noise(x.shape, 0.5, _after_mix_draws(x, labels, k)))
    assert torch.equal(protect(0.5, mix=False).x, x)
    with pytest.raises(ValueError, match="Expected noise a finite number >= 0, got -0.1"):
        MixingConfig(6, noise=-0.1)


def test_replay_draws_gives_the_draws_of_protect_without_faces(masker_file, aligned_sample):
    masker = OnnxMasker(masker_file)
    faces, _, _ = load_faces(sorted(aligned_sample.glob("*/*.png"))[:12], 112)
    images, labels = faces_to_tensor(faces), torch.arange(12) % 5
    mixing = dataclasses.replace(masker.mixing, permute_channels=True)
    protected = Protection(masker, mixing).protect(images, labels, torch.Generator().manual_seed(7))
    draws = Protection(None, mixing).replay_draws(
        labels, protected.k, tuple(protected.x.shape[1:]), torch.Generator().manual_seed(7)
    )
    assert torch.equal(draws.partners, protected.partners) and torch.equal(draws.weights, protected.weights)
    assert (
        draws.permutation.shape == (12, protected.x.shape[1])
        and draws.sign is not None
        and draws.noise.std().item() == pytest.approx(mixing.noise, rel=0.05)
    )
    with pytest.raises(ValueError, match="this protection does not mix"):
        Protection(None, None).replay_draws(labels, protected.k, (1, 2, 2), torch.Generator())


def _after_mix_draws(x, labels, k):
    """A generator in the state that :meth:`Protection.mix` leaves it in before drawing the noise."""
    generator = torch.Generator().manual_seed(1)
    sample_mixing(labels, k, 6, "dirichlet", 0.65, tuple(x.shape[1:]), generator)
    return generator


def _stats_like(meta):
    """A stats object reproducing the stored normalisation (for building the torch masker)."""
    from fmix.freq import RunningChannelStats

    kept = json.loads(meta["kept_channels"])
    stats = RunningChannelStats()
    stats.count = 1
    stats._mean = torch.zeros(192, dtype=torch.float64)
    stats._mean[kept] = torch.tensor(json.loads(meta["channel_mean"]), dtype=torch.float64)
    std = torch.ones(192, dtype=torch.float64)
    std[kept] = torch.tensor(json.loads(meta["channel_std"]), dtype=torch.float64)
    stats._m2 = std.square()
    return stats


@pytest.fixture()
def mask_input(aligned_sample, tmp_path):
    """Aligned faces of 5 identities plus bad files: truncated, not an image, an unaligned photo."""
    src = tmp_path / "in"
    for name in ("Alejandro_Toledo", "Alvaro_Uribe", "Amelie_Mauresmo", "Andre_Agassi", "Angelina_Jolie"):
        shutil.copytree(aligned_sample / name, src / name)
    bad = src / "Bad_Person"
    bad.mkdir()
    good = (src / "Alvaro_Uribe" / "Alvaro_Uribe_0001.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    (bad / "readme.txt").write_text("hello")
    shutil.copy(LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg", bad / "photo.jpg")
    return src


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_mask_folder_protects_reports_and_keeps_inputs(mask_input, masker_file, tmp_path):
    before = _snapshot(mask_input)
    out = tmp_path / "out"
    key = ReleaseOptions(secret_key=b"a secret research key")
    summary = protect_folder(
        mask_input,
        out,
        masker_file,
        MaskParams(batch_size=11, previews=3, anonymize=False),
        progress=False,
        release=key,
    )
    assert _snapshot(mask_input) == before
    # One use per face: 30 readable faces in groups of k = 2 (odd batches leave a face over).
    assert summary["inputs"] == 33 and summary["faces_used"] + summary["skipped_by_status"].get("left_over", 0) == 30
    assert summary["protected"] == summary["faces_used"] // 2 and summary["k_histogram"] == {"2": summary["protected"]}
    assert {k: v for k, v in summary["skipped_by_status"].items() if k != "left_over"} == {
        "corrupt": 1,
        "not_an_image": 1,
        "wrong_size": 1,
    }
    assert summary["shards"] == 3 and summary["randomness"] == "key" and summary["one_use_per_face"] is True
    index = (out / "index.csv").read_text().splitlines()
    assert index[0] == "name,shard,row,labels,weights" and len(index) == 1 + summary["protected"]
    constituents = [name for line in index[1:] for name in line.split(",")[0].split("+")]
    assert len(constituents) == len(set(constituents)) == summary["faces_used"]  # each face in one sample
    weights = [line.split(",")[4] for line in index[1:]]
    assert all(len(w.split()) == 2 and all(len(v.split(".")[1]) <= 2 for v in w.split()) for w in weights)
    shard = np.load(out / "shard-00000.npy")
    assert shard.dtype == np.float16 and shard.shape[1:] == (174, 28, 28)
    assert not (out / "labels.json").exists()  # label numbering is a secret permutation unless asked
    assert (tmp_path / "fmix-ledger.jsonl").is_file() and not list(out.glob("*ledger*"))
    previews = sorted((out / "previews").glob("*.png"))
    assert [p.name for p in previews] == [
        "shard-00000-row-00000.png",
        "shard-00000-row-00001.png",
        "shard-00000-row-00002.png",
    ]
    assert all(not Image.open(p).getexif() and Image.open(p).size == (112, 112) for p in previews)
    # Resume with the key: a lost shard is redone from the ledger, identically; the others are kept.
    first = np.load(out / "shard-00002.npy")
    (out / "shard-00002.json").unlink()
    again = protect_folder(
        mask_input,
        out,
        masker_file,
        MaskParams(batch_size=11, previews=3, anonymize=False),
        progress=False,
        release=key,
    )
    assert again["protected"] == summary["protected"]
    np.testing.assert_array_equal(np.load(out / "shard-00002.npy"), first)
    with pytest.raises(
        ValueError, match=r"holds another run \(randomness: \{'source': 'key'\} -> \{'source': 'os'\}\)"
    ):
        protect_folder(mask_input, out, masker_file, MaskParams(batch_size=11, anonymize=False), progress=False)


def test_mask_resume_refuses_another_anonymize_or_masker(mask_input, masker_file, tmp_path):
    out = tmp_path / "out"
    protect_folder(mask_input, out, masker_file, MaskParams(batch_size=11, previews=0, anonymize=False), progress=False)
    (out / "shard-00002.json").unlink()
    with pytest.raises(ValueError, match=r"holds another run \(anonymize: False -> True\)"):
        protect_folder(
            mask_input, out, masker_file, MaskParams(batch_size=11, anonymize=True), name_key=b"k", progress=False
        )
    other = tmp_path / "other.onnx"
    meta = OnnxMasker(masker_file).metadata
    masker = build_masker(ExportParams(), _stats_like(meta))
    meta = bind_metadata(
        {**meta, "channel_mean": json.dumps((torch.tensor(json.loads(meta["channel_mean"])) + 0.5).tolist())}
    )
    masker = masker_from_metadata(meta)
    export_onnx(masker, other, meta)
    with pytest.raises(ValueError, match=r"holds another run \(masker_sha256: "):
        protect_folder(mask_input, out, other, MaskParams(batch_size=11), progress=False)


def test_mask_ledger_refuses_faces_released_before(mask_input, masker_file, tmp_path):
    first = protect_folder(mask_input, tmp_path / "first", masker_file, MaskParams(previews=0), progress=False)
    released = first["faces_used"]  # leftovers of a batch are not released, and not recorded as released
    assert released == 33 - first["skipped"], first
    with pytest.raises(
        ValueError,
        match=rf"{released} of the 33 faces were released before \(release [0-9a-f]{{16}}, ledger .*fmix-ledger.jsonl\)",
    ):
        protect_folder(mask_input, tmp_path / "second", masker_file, MaskParams(previews=0), progress=False)
    assert not (tmp_path / "second").exists()  # refused before writing anything
    with pytest.warns(UserWarning, match=f"{released} faces were released before"):
        summary = protect_folder(
            mask_input,
            tmp_path / "second",
            masker_file,
            MaskParams(previews=0),
            progress=False,
            release=ReleaseOptions(allow_rerelease=True),
        )
    assert summary["released_before"] == released
    with pytest.raises(ValueError, match="the ledger .* must not be inside the output folder"):
        protect_folder(
            mask_input,
            tmp_path / "third",
            masker_file,
            MaskParams(),
            progress=False,
            release=ReleaseOptions(ledger=tmp_path / "third" / "l.jsonl"),
        )


def _tampered(masker_file, tmp_path, name, change):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(masker_file))
    change(model, onnx, numpy_helper)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def test_mask_refuses_a_masker_whose_graph_does_not_match_its_metadata(mask_input, masker_file, tmp_path):
    def zero_weights(model, onnx, numpy_helper):
        for init in model.graph.initializer:
            if numpy_helper.to_array(init).ndim == 4:
                init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))

    def pass_through(model, onnx, numpy_helper):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [
                helper.make_node("Identity", ["images"], ["masked"]),
                helper.make_node("Cast", ["policy_noise"], ["k"], to=TensorProto.INT64),
            ],
            "pass",
            [
                helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 112, 112]),
                helper.make_tensor_value_info("policy_noise", TensorProto.FLOAT, ["b"]),
            ],
            [
                helper.make_tensor_value_info("masked", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("k", TensorProto.INT64, None),
            ],
        )
        meta = list(model.metadata_props)
        opset = model.opset_import[0].version
        model.CopyFrom(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
        model.metadata_props.extend(meta)

    zeroed = _tampered(masker_file, tmp_path, "zeroed.onnx", zero_weights)
    with pytest.raises(
        ValueError,
        match=r"zeroed.onnx: its graph does not compute the masking its metadata describes \(relative error 1 on a probe batch\)",
    ):
        protect_folder(mask_input, tmp_path / "o1", zeroed, MaskParams(), progress=False)
    passing = _tampered(masker_file, tmp_path, "pass.onnx", pass_through)
    with pytest.raises(
        ValueError,
        match=r"pass.onnx: its graph outputs \(4, 3, 112, 112\) where its metadata describes \(4, 174, 28, 28\)",
    ):
        protect_folder(mask_input, tmp_path / "o2", passing, MaskParams(), progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_mask_without_mixing_equals_the_masker(aligned_sample, masker_file, tmp_path):
    src = copy_sample(tmp_path / "in", identities=("Andre_Agassi",), per_identity=0)
    shutil.copytree(aligned_sample / "Andre_Agassi", src / "Andre_Agassi", dirs_exist_ok=True)
    summary = protect_folder(
        src,
        tmp_path / "out",
        masker_file,
        MaskParams(mix=False, previews=0, anonymize=False),
        dtype="float32",
        progress=False,
    )
    assert summary["k_histogram"] == {"1": 6}
    rows = (tmp_path / "out" / "index.csv").read_text().splitlines()[1:]
    names = [row.split(",")[0] for row in rows]
    images = faces_to_tensor(np.stack([read_rgb(src / f"{name}.png") for name in names]))
    expected, _ = OnnxMasker(masker_file)(images, torch.zeros(len(names)))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "shard-00000.npy"), expected.numpy(), atol=1e-6)
    assert all(row.endswith(",1.0") for row in rows)  # label vector of one face: its label, weight 1


def test_mask_anonymized_names(mask_input, masker_file, tmp_path):
    # The default: keyed-hash names without any key given (a random key that nobody keeps).
    protect_folder(
        mask_input,
        tmp_path / "o1",
        masker_file,
        MaskParams(),
        progress=False,
        release=ReleaseOptions(ledger=tmp_path / "o1.ledger"),
    )
    names = [line.split(",")[0] for line in (tmp_path / "o1" / "index.csv").read_text().splitlines()[1:]]
    assert names and all(len(name) == 20 and int(name, 16) >= 0 for name in names)
    assert MaskParams().anonymize and ReleaseRandomness().name_key() != ReleaseRandomness().name_key()
    assert (
        ReleaseRandomness(b"k" * 16, context="c").name_key()
        == ReleaseRandomness(b"k" * 16, context="c").name_key()
        != ReleaseRandomness(b"j" * 16, context="c").name_key()
    )
    with pytest.warns(UserWarning, match="kept names of mixed samples name the faces in them"):
        protect_folder(
            mask_input,
            tmp_path / "o3",
            masker_file,
            MaskParams(anonymize=False, previews=0),
            progress=False,
            release=ReleaseOptions(ledger=tmp_path / "o3.ledger"),
        )
    protect_folder(
        mask_input,
        tmp_path / "o2",
        masker_file,
        MaskParams(anonymize=True, previews=2),
        name_key=b"secret",
        progress=False,
    )
    text = (tmp_path / "o2" / "index.csv").read_text() + (tmp_path / "o2" / "summary.json").read_text()
    assert "Alvaro" not in text and "Bad_Person" not in text
    assert not (tmp_path / "o2" / "labels.json").exists()
    assert sample_name("Alvaro_Uribe/Alvaro_Uribe_0001.png", b"secret") != sample_name(
        "Alvaro_Uribe/Alvaro_Uribe_0001.png", b"other"
    )
    assert len(sample_name("a/b.png", b"k")) == 20


def test_mask_aligns_raw_photos_in_memory(masker_file, tmp_path):
    src = copy_sample(tmp_path / "photos", identities=("Ariel_Sharon", "Bill_Clinton"), per_identity=3)
    summary = protect_folder(
        src, tmp_path / "out", masker_file, MaskParams(previews=0), align=AlignParams(), progress=False
    )
    assert summary["faces_used"] == 6 and summary["protected"] == 3 and summary["skipped"] == 0


def test_mask_errors(mask_input, masker_file, tmp_path):
    with pytest.raises(ValueError, match="must not be inside the input folder"):
        protect_folder(mask_input, mask_input / "out", masker_file, MaskParams(), progress=False)
    with pytest.raises(FileNotFoundError, match="masker not found"):
        protect_folder(mask_input, tmp_path / "o", tmp_path / "none.onnx", MaskParams(), progress=False)
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="is not a valid ONNX masker"):
        protect_folder(mask_input, tmp_path / "o", tmp_path / "fake.onnx", MaskParams(), progress=False)
    with pytest.raises(ValueError, match="dtype must be 'float16' or 'float32'"):
        protect_folder(mask_input, tmp_path / "o", masker_file, MaskParams(), dtype="int8", progress=False)
