"""Face sources (fmix/data/sources.py) on real aligned LFW faces: the same faces and labels as the in-memory path."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fmix.data.faces import load_face_set
from fmix.data.images import read_rgb
from fmix.data.recordio import write_face_pack
from fmix.data.sources import (
    FaceBatch,
    FolderSource,
    MemorySource,
    PackSource,
    RankBatchSampler,
    epoch_batches,
    face_loader,
    open_source,
)


@pytest.fixture(scope="module")
def train_csv(pipeline_sample):
    return pipeline_sample["splits"] / "private_train.csv"


@pytest.fixture(scope="module")
def memory(pipeline_sample, train_csv):
    return load_face_set(pipeline_sample["aligned"], train_csv)


@pytest.fixture(scope="module")
def pack_dir(pipeline_sample, train_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "pack"
    write_face_pack(pipeline_sample["aligned"], out, train_csv)
    return out


def _all(loader) -> list:
    return list(epoch_batches(loader, 0))


def test_folder_source_yields_the_in_memory_faces(pipeline_sample, train_csv, memory):
    source = FolderSource(pipeline_sample["aligned"], train_csv)
    assert len(source) == len(memory) >= 16 and source.image_size == (112, 112)
    assert source.num_classes == int(memory.labels.max()) + 1
    for index in range(len(source)):
        image, label = source[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert torch.equal(image, memory.images[index].permute(2, 0, 1)) and label == int(memory.labels[index])
    # Through the loader, in source order, with and without workers: the in-memory path's batches.
    fast = _all(face_loader(MemorySource(memory), 4, shuffle=False))
    for workers in (0, 2):
        batches = _all(face_loader(source, 4, shuffle=False, workers=workers))
        assert len(batches) == len(fast) == len(memory) // 4
        for batch, expected in zip(batches, fast):
            assert (
                isinstance(batch, FaceBatch)
                and torch.equal(batch.images, expected.images)
                and torch.equal(batch.labels, expected.labels)
            )
    index = torch.arange(4)
    assert torch.equal(fast[0].float_images(), memory.float_images(index))  # what the trainer reads today


def test_a_folder_source_of_a_whole_aligned_folder(pipeline_sample, tmp_path):
    aligned = pipeline_sample["aligned"]
    source = FolderSource.of_folder(aligned)
    people = sorted(p.name for p in aligned.iterdir() if p.is_dir())
    files = sorted(aligned.glob("*/*.png"))
    assert len(source) == len(files) and source.num_classes == len(people) and source.image_size == (112, 112)
    first, label = source[0]
    assert label == 0 and source.paths[0] == files[0].relative_to(aligned).as_posix()
    assert torch.equal(first, torch.from_numpy(read_rgb(files[0]).transpose(2, 0, 1).copy()))
    assert source.labels.tolist() == [people.index(Path(path).parent.name) for path in source.paths]
    (tmp_path / "loose.png").write_bytes(files[0].read_bytes())
    with pytest.raises(ValueError, match=r"holds no identity folders with files \(expected ROOT/<identity>/<image>\)"):
        FolderSource.of_folder(tmp_path)


def test_pack_source_yields_the_in_memory_faces(pipeline_sample, train_csv, memory, pack_dir):
    source = open_source("pack", pack_dir)
    assert isinstance(source, PackSource) and len(source) == len(memory) and source.image_size == (112, 112)
    with pytest.raises(ValueError, match="unknown face source 'lmdb'; known: memory, folder, pack"):
        open_source("lmdb", pack_dir)
    # The pack numbers identities in sorted name order, as `fmix split` does: the split's labels.
    assert source.num_classes == int(memory.labels.max()) + 1
    with open(train_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    position = {row["path"]: i for i, row in enumerate(rows)}
    packed = sorted(rows, key=lambda row: (int(row["label"]), row["path"]))  # write_face_pack's record order
    loader = face_loader(source, 5, shuffle=False, workers=1, drop_last=False)
    batches = _all(loader)
    images = torch.cat([batch.images for batch in batches])
    labels = torch.cat([batch.labels for batch in batches])
    assert images.shape[0] == len(memory)
    for i, row in enumerate(packed):
        j = position[row["path"]]
        assert torch.equal(images[i], memory.images[j].permute(2, 0, 1)) and int(labels[i]) == int(memory.labels[j])


def test_rank_split_is_disjoint_complete_and_reshuffled(pipeline_sample, train_csv, memory):
    size, batch = len(memory), 3
    shares = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            sampler = RankBatchSampler(size, batch, rank=rank, world_size=2, seed=5)
            sampler.set_epoch(epoch)
            shares[epoch, rank] = [i for b in sampler for i in b]
            assert len(sampler) == size // 2 // batch and all(len(b) == batch for b in sampler)
        a, b = shares[epoch, 0], shares[epoch, 1]
        assert not set(a) & set(b) and len(a) == len(b) == size // 2 // batch * batch
    whole = RankBatchSampler(size, 1, rank=0, world_size=1, seed=5, drop_last=False)
    whole.set_epoch(0)
    halves = (
        RankBatchSampler(size, 1, rank=0, world_size=2, seed=5),
        RankBatchSampler(size, 1, rank=1, world_size=2, seed=5),
    )
    union = [i for sampler in halves for b in sampler for i in b]
    order = [i for b in whole for i in b]
    # The halves make up the epoch's order.
    assert sorted(order) == list(range(size)) and union == order[: size // 2 * 2]
    assert shares[0, 0] != shares[1, 0]  # another epoch, another order
    again = RankBatchSampler(size, batch, rank=0, world_size=2, seed=5)
    again.set_epoch(1)
    assert [i for b in again for i in b] == shares[1, 0]  # a function of (seed, epoch)
    # A resumed epoch starts at its batch without reading the ones before; the loader's batches are those faces.
    again.set_epoch(1, start_batch=2)
    assert [i for b in again for i in b] == shares[1, 0][2 * batch :] and len(again) == size // 2 // batch - 2
    source = FolderSource(pipeline_sample["aligned"], train_csv)
    loader = face_loader(source, batch, seed=5, rank=1, world_size=2)
    got = torch.cat([batch.labels for batch in epoch_batches(loader, 1)])
    assert torch.equal(got, memory.labels[shares[1, 1]])
