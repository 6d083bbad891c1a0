"""MXNet RecordIO without mxnet: files built byte by byte from the format (dmlc-core's framing,
mxnet's image header, InsightFace's header record), never with the writer under test."""

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fmix.data.recordio import (
    MAGIC_BYTES,
    FacePack,
    FacePackDataset,
    ImageHeader,
    RecordIOReader,
    RecordIOWriter,
    frame_record,
    pack_image_record,
    read_property,
    unpack_image_record,
)
from fmix.data.sampling import RankSampler, epoch_permutation, rank_share

MAGIC = 0xCED7230A


def _part(cflag: int, data: bytes) -> bytes:
    """One record part as the format describes it: magic, lrecord (cflag << 29 | length), data, zero padding."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def _image_record(flag: int, label: float, id: int, labels: tuple = (), image: bytes = b"") -> bytes:
    return struct.pack("<IfQQ", flag, label, id, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def _write(tmp_path, records: list[bytes], keys: list[int] | None = None, name: str = "a") -> tuple:
    """Write already framed records; the .idx lists each record's offset under its key."""
    keys = list(range(len(records))) if keys is None else keys
    offsets = np.cumsum([0] + [len(r) for r in records])[:-1]
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    rec.write_bytes(b"".join(records))
    idx.write_text("".join(f"{key}\t{offset}\n" for key, offset in zip(keys, offsets)))
    return rec, idx


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _faces(n: int, side: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def test_single_part_records_fixed_bytes(tmp_path):
    assert frame_record(b"hello") == bytes.fromhex("0a23d7ce0500000068656c6c6f000000")
    assert frame_record(b"abcd") == bytes.fromhex("0a23d7ce0400000061626364")  # no padding needed
    assert frame_record(b"") == bytes.fromhex("0a23d7ce00000000")
    # The magic at an unaligned position does not cut the record.
    unaligned = b"ab" + MAGIC_BYTES + b"cd"
    assert frame_record(unaligned) == _part(0, unaligned)
    rec, idx = _write(tmp_path, [_part(0, b"hello"), _part(0, b""), _part(0, unaligned)], keys=[5, 9, 2])
    reader = RecordIOReader(rec, idx)
    assert reader.keys == [5, 9, 2] and len(reader) == 3 and reader.offsets == {5: 0, 9: 16, 2: 24}
    assert reader.read(5) == b"hello" and reader.read(9) == b"" and reader.read(2) == unaligned
    scanned = RecordIOReader(rec)  # no .idx: keys are positions
    assert scanned.keys == [0, 1, 2] and [data for _, data in scanned] == [b"hello", b"", unaligned]


def test_multi_part_record_is_joined_with_the_magic(tmp_path):
    payload = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ij"
    hand = _part(1, b"abcd") + _part(2, b"efgh") + _part(3, b"ij")
    assert frame_record(payload) == hand  # the writer cuts exactly where dmlc-core does
    # Magic at the very start and end: empty first and last parts.
    edge = MAGIC_BYTES + b"wxyz" + MAGIC_BYTES
    edge_hand = _part(1, b"") + _part(2, b"wxyz") + _part(3, b"")
    assert frame_record(edge) == edge_hand
    rec, idx = _write(tmp_path, [hand, _part(0, b"next"), edge_hand])
    reader = RecordIOReader(rec, idx)
    assert reader.read(0) == payload and reader.read(1) == b"next" and reader.read(2) == edge
    assert [data for _, data in RecordIOReader(rec)] == [payload, b"next", edge]


def test_image_header_with_a_label_vector():
    png = _png(_faces(1)[0])
    header, image = unpack_image_record(_image_record(2, 0.0, 7, (3.0, 11.0), png))
    assert header == ImageHeader(2, (3.0, 11.0), 7, 0) and header.labels == (3.0, 11.0) and image == png
    header, image = unpack_image_record(_image_record(0, 4.0, 9, (), b"jpeg"))
    assert header == ImageHeader(0, 4.0, 9, 0) and header.labels == (4.0,) and image == b"jpeg"
    assert pack_image_record([3, 11], png, id=7) == _image_record(2, 0.0, 7, (3.0, 11.0), png)
    assert pack_image_record(4, b"jpeg", id=9) == _image_record(0, 4.0, 9, (), b"jpeg")
    with pytest.raises(ValueError, match="an image record has a 24-byte header, got a record of 10 bytes"):
        unpack_image_record(b"x" * 10)
    with pytest.raises(
        ValueError, match=r"flag 3 announces 3 labels \(12 bytes\), the record has 8 bytes after its header"
    ):
        unpack_image_record(_image_record(3, 0.0, 1, (1.0, 2.0)))


def _hand_pack(tmp_path, faces: list[np.ndarray], labels: list[int]) -> None:
    """An InsightFace pack as its files describe it: header record 0 [n+1, n+1+C], images 1..n."""
    n, classes = len(faces), len(set(labels))
    records = [_part(0, _image_record(2, 0.0, 0, (n + 1.0, n + 1.0 + classes)))]
    records += [
        _part(0, _image_record(0, float(label), key, (), _png(face)))
        for key, (face, label) in enumerate(zip(faces, labels), 1)
    ]
    rec, idx = _write(tmp_path, records, name="train")
    (tmp_path / "property").write_text(f"{classes},8,8\n")


def test_face_pack_reads_a_hand_built_pack(tmp_path):
    faces, labels = _faces(4), [0, 0, 1, 1]
    _hand_pack(tmp_path, faces, labels)
    pack = FacePack(tmp_path)
    assert list(pack.image_keys) == [1, 2, 3, 4] and len(pack) == 4 and pack.labels() == labels
    assert pack.summary() == {
        "pack": str(tmp_path),
        "records": 5,
        "images": 4,
        "classes": 2,
        "height": 8,
        "width": 8,
        "header_record": True,
        "indexed": True,
    }
    np.testing.assert_array_equal(pack.face(3), faces[2])
    dataset = FacePackDataset(pack)
    image, label = dataset[2]
    assert image.dtype == torch.float32 and image.shape == (3, 8, 8) and label == 1
    torch.testing.assert_close(image, torch.from_numpy(faces[2]).permute(2, 0, 1).float())
    # Without a header record (flag 0 in record 0) every key is an image.
    (tmp_path / "train.idx").write_text(
        "".join(line + "\n" for line in (tmp_path / "train.idx").read_text().splitlines()[1:])
    )
    assert list(FacePack(tmp_path).image_keys) == [1, 2, 3, 4] and FacePack(tmp_path).header is None


def test_truncated_file_and_bad_magic_are_clear_errors(tmp_path):
    good = _part(0, b"0123456789") + _part(1, b"abcd") + _part(3, b"ef")  # records at 0 and 20; parts at 20 and 32
    assert len(good) == 44
    rec, idx = _write(tmp_path, [good[:20], good[20:]])
    rec.write_bytes(good[:40])  # the last part's data is cut
    with pytest.raises(
        ValueError,
        match=r"a\.rec: the part at offset 32 claims 2 bytes, beyond the end of the file \(40 bytes\): truncated file\?",
    ):
        RecordIOReader(rec, idx).read(1)
    assert RecordIOReader(rec, idx).read(0) == b"0123456789"  # the records before the cut still read
    for cut in (36, 32):  # the last part's header is cut, or missing
        rec.write_bytes(good[:cut])
        message = rf"a\.rec is truncated: part 1 of the record at offset 20 needs an 8-byte part header at offset 32, the file has {cut} bytes"
        with pytest.raises(ValueError, match=message):
            RecordIOReader(rec, idx).read(1)
        with pytest.raises(ValueError, match=message):
            RecordIOReader(rec)  # the scan meets it too
    rec.write_bytes(good + b"\0\0\0\0")  # trailing bytes too short for a record
    with pytest.raises(
        ValueError,
        match=r"a\.rec is truncated: a record needs an 8-byte part header at offset 44, the file has 48 bytes",
    ):
        RecordIOReader(rec)
    rec.write_bytes(b"\x0b" + good[1:])
    with pytest.raises(
        ValueError,
        match=r"a\.rec: bad magic 0xced7230b at offset 0, expected 0xced7230a \(not a RecordIO file, or a wrong \.idx offset\)",
    ):
        RecordIOReader(rec, idx).read(0)
    rec.write_bytes(good)
    reader = RecordIOReader(rec, idx)
    with pytest.raises(ValueError, match=r"key 7 is not in .*a\.idx"):
        reader.read(7)
    idx.write_text("0\t0\n1\t8\n")  # an offset into the middle of a record
    with pytest.raises(ValueError, match=r"a\.rec: bad magic 0x\w+ at offset 8"):
        RecordIOReader(rec, idx).read(1)
    idx.write_text("0\t0\n1\t400\n")
    with pytest.raises(
        ValueError, match=r"a\.idx line 2: key 1 has offset 400, beyond the end of .*a\.rec \(44 bytes\)"
    ):
        RecordIOReader(rec, idx)
    idx.write_text("0\t0\nzero\t20\n")
    with pytest.raises(ValueError, match=r"a\.idx line 2: expected 'key<TAB>offset' \(two integers\), got 'zero\\t20'"):
        RecordIOReader(rec, idx)
    idx.write_text("0\t0\n0\t20\n")
    with pytest.raises(ValueError, match=r"a\.idx line 2: key 0 appears twice"):
        RecordIOReader(rec, idx)
    rec.write_bytes(_part(2, b"abcd"))  # a middle part where a record starts
    with pytest.raises(ValueError, match=r"the part at offset 0 has continuation flag 2, expected one of \(0, 1\)"):
        RecordIOReader(rec)


def test_face_pack_checks_index_and_property(tmp_path):
    _hand_pack(tmp_path, _faces(3), [0, 1, 1])
    lines = (tmp_path / "train.idx").read_text().splitlines()
    (tmp_path / "train.idx").write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop key 2
    with pytest.raises(
        ValueError, match=r"train\.idx lacks key 2 of the image keys \[1, 4\) announced by header record 0"
    ):
        FacePack(tmp_path)
    (tmp_path / "property").write_text("two,8,8\n")
    with pytest.raises(
        ValueError, match=r"property: expected one line 'num_classes,height,width' of positive integers, got 'two,8,8'"
    ):
        read_property(tmp_path / "property")
    with pytest.raises(FileNotFoundError, match="pack property file not found"):
        read_property(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="face pack folder not found"):
        FacePack(tmp_path / "none")


def test_face_pack_refuses_images_of_another_size(tmp_path):
    _hand_pack(tmp_path, _faces(2), [0, 1])
    (tmp_path / "property").write_text("2,112,112\n")
    with pytest.raises(ValueError, match=r"train\.rec record 1 \(offset 40\): image 1 is 8x8, expected 112x112"):
        FacePack(tmp_path).face(1)


def test_writer_reader_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    records = [rng.bytes(int(n)) for n in rng.integers(0, 50, 20)]
    records += [MAGIC_BYTES * 3, b"x" + MAGIC_BYTES * 2 + b"yyy", b"1234" + MAGIC_BYTES + b"5"]
    keys = [3 * i + 1 for i in range(len(records))]
    with RecordIOWriter(tmp_path / "w.rec", tmp_path / "w.idx") as writer:
        offsets = [writer.write(record, key) for record, key in zip(records, keys)]
        with pytest.raises(ValueError, match=r"key 1 was already written to .*w\.rec"):
            writer.write(b"again", 1)
    assert offsets[0] == 0 and offsets[1] == len(frame_record(records[0]))
    reader = RecordIOReader(tmp_path / "w.rec", tmp_path / "w.idx")
    assert reader.keys == keys and [reader.read(key) for key in keys] == records
    assert [data for _, data in RecordIOReader(tmp_path / "w.rec")] == records
    assert (tmp_path / "w.rec").stat().st_size % 4 == 0
    with pytest.raises(RuntimeError, match="killed"):  # a failed run leaves no files, not even temporaries
        with RecordIOWriter(tmp_path / "x.rec", tmp_path / "x.idx") as writer:
            writer.write(b"data")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.idx", "w.rec"]


def test_rank_share_fixed_values():
    np.testing.assert_array_equal(epoch_permutation(10, 0, 0), [4, 6, 2, 7, 3, 5, 9, 0, 8, 1])
    np.testing.assert_array_equal(epoch_permutation(10, 1, 0), [9, 1, 3, 8, 7, 6, 0, 4, 2, 5])
    np.testing.assert_array_equal(rank_share(10, 1, 3, epoch=0, seed=0), [7, 3, 5])
    np.testing.assert_array_equal(rank_share(10, 2, 3, shuffle=False), [6, 7, 8])


def test_rank_shares_are_disjoint_equal_and_cover_the_epoch():
    size, world = 23, 4
    for epoch in range(3):
        shares = [rank_share(size, rank, world, epoch, seed=5) for rank in range(world)]
        assert {len(share) for share in shares} == {size // world}
        union = np.concatenate(shares)
        assert len(set(union.tolist())) == len(union)  # disjoint
        np.testing.assert_array_equal(union, epoch_permutation(size, epoch, 5)[: world * (size // world)])
    assert not np.array_equal(rank_share(size, 0, world, 0, 5), rank_share(size, 0, world, 1, 5))
    np.testing.assert_array_equal(rank_share(size, 0, world, 1, 5), rank_share(size, 0, world, 1, 5))
    sampler = RankSampler(size, rank=3, world_size=world, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    assert len(sampler) == 5 and list(sampler) == rank_share(size, 3, world, 1, 5).tolist() != first
    assert list(RankSampler(size, seed=5)) == epoch_permutation(size, 0, 5).tolist()  # one process: all of it


def test_rank_share_checks_its_arguments():
    with pytest.raises(ValueError, match=r"Expected 0 <= rank < world_size=2, got rank 2"):
        rank_share(10, 2, 2)
    with pytest.raises(ValueError, match="Expected world_size >= 1, got 0"):
        rank_share(10, 0, 0)
    with pytest.raises(ValueError, match="3 samples cannot give each of 4 ranks one"):
        RankSampler(3, 0, 4)
    with pytest.raises(ValueError, match="Expected epoch >= 0, got -1"):
        RankSampler(10, 0, 1).set_epoch(-1)
