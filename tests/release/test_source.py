"""The release as a face source: its samples and published soft labels, streamed and checked."""

import json
import shutil

import numpy as np
import pytest
import torch

from fmix.data.sources import SoftLabelBatch, epoch_batches, face_loader
from fmix.params import MaskParams
from fmix.release.protect import ReleaseOptions, protect_folder
from fmix.release.source import ReleaseSource


@pytest.fixture(scope="module")
def release(pipeline_sample, tmp_path_factory):
    train_csv = pipeline_sample["splits"] / "private_train.csv"
    root = tmp_path_factory.mktemp("release")
    options = ReleaseOptions(ledger=root / "ledger.jsonl", publish_label_names=True)
    params = MaskParams(batch_size=7, previews=0)
    protect_folder(
        pipeline_sample["aligned"],
        root / "release",
        pipeline_sample["masker"],
        params,
        face_list=train_csv,
        dtype="float32",
        progress=False,
        release=options,
    )
    return root / "release"


def test_release_source_yields_the_published_soft_labels(release):
    source = ReleaseSource(release)
    lines = (release / "index.csv").read_text().splitlines()[1:]
    assert len(source) == len(lines) >= 6
    assert source.k_max == 2 and source.sample_shape[1:] == (28, 28)
    labels_json = json.loads((release / "labels.json").read_text())
    assert source.num_classes == max(labels_json.values()) + 1
    shards = {}
    for index, line in enumerate(lines):
        name, shard, row, labels, weights = line.split(",")
        if shard not in shards:
            shards[shard] = np.load(release / f"shard-{int(shard):05d}.npy")
        sample, got_labels, got_weights = source[index]
        assert source.names[index] == name
        np.testing.assert_array_equal(sample.numpy(), shards[shard][int(row)])
        published = [int(v) for v in labels.split()]
        assert got_labels.tolist() == published + [-1] * (2 - len(published))
        assert got_weights.tolist() == pytest.approx([float(v) for v in weights.split()] + [0.0] * (2 - len(published)))
        assert all(len(v.split(".")[-1]) <= 2 for v in weights.split())  # rounded as released
    batches = list(epoch_batches(face_loader(source, 2, shuffle=False, workers=1), 0))
    assert all(isinstance(batch, SoftLabelBatch) for batch in batches)
    assert torch.equal(torch.cat([b.labels for b in batches]), source.labels[: 2 * len(batches)])
    assert torch.equal(torch.cat([b.weights for b in batches]), source.weights[: 2 * len(batches)])


def test_release_source_refuses_a_damaged_sample(release, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(release, copy)
    shard = np.load(copy / "shard-00000.npy")
    shard[1, 0, 0, 0] = np.nan
    np.save(copy / "shard-00000.npy", shard)
    source = ReleaseSource(copy)
    assert torch.isfinite(source[0][0]).all()
    with pytest.raises(ValueError, match=r"shard 0 row 1 holds non-finite values"):
        source[1]
    with pytest.raises(ValueError, match=r"k_max=1 is below the largest k"):
        ReleaseSource(copy, k_max=1)
