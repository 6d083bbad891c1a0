"""InsightFace face packs in MXNet RecordIO (``train.rec``, ``train.idx``, ``property``), without mxnet.

**Framing** (dmlc-core ``RecordIOWriter``). A file is a sequence of record parts, each::

    uint32 magic 0xced7230a | uint32 lrecord | data | zero padding to a multiple of 4 bytes

(little endian). The upper 3 bits of ``lrecord`` are the continuation flag ``cflag``, the
lower 29 bits the part's length. A record whose data holds the magic number's 4 bytes at a
4-byte aligned position is cut there: the magic itself is not stored, the pieces around it
become parts with ``cflag`` 1 (first), 2 (middle) and 3 (last), and a reader joins them again
with the magic between them; a record that needed no cut is one part with ``cflag`` 0. Only
the last part can need padding (the cuts are aligned).

**Index** (``train.idx``, mxnet ``MXIndexedRecordIO``): text lines ``key<TAB>offset``, the
offset of the record's first part in ``train.rec``.

**Image records** (mxnet ``recordio.pack``): a 24-byte header ``<IfQQ`` (``flag`` uint32,
``label`` float32, ``id`` uint64, ``id2`` uint64); when ``flag > 0``, ``flag`` float32 labels
follow (a label vector, the header's own ``label`` is then unused) and then the encoded image
(JPEG or PNG).

**Face packs** (InsightFace ``faces_emore``, ``faces_glint``..., read by arcface_torch's
``MXFaceDataset``): record 0 is a header record whose label vector ``[a, b]`` says that the
image records are the keys ``[1, a)`` (records ``[a, b)`` describe the identities); a pack
whose record 0 has no label vector has no header, and every key is an image. An image's class
is its label (the first of a label vector). ``property`` is one text line
``num_classes,height,width``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
MAX_PART_LENGTH = (1 << 29) - 1  # the length field has 29 bits
IMAGE_HEADER = struct.Struct("<IfQQ")
PACK_REC, PACK_IDX, PACK_PROPERTY = "train.rec", "train.idx", "property"
# cflag of a part -> the cflags the next part of the same record may have (None: the record ends).
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


class ImageHeader(NamedTuple):
    """The header of an image record (mxnet ``IRHeader``).

    Attributes:
        flag: number of labels in the label vector (0: one scalar label).
        label: the scalar label, or the label vector as a tuple of floats when ``flag > 0``.
        id: the record's id (InsightFace: its key).
        id2: high bits of the id (0).
    """

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int

    @property
    def labels(self) -> tuple[float, ...]:
        """The labels as a tuple (one element for a scalar label)."""
        return self.label if isinstance(self.label, tuple) else (self.label,)


def frame_record(data: bytes) -> bytes:
    """Frame one record as dmlc's ``RecordIOWriter`` does (cut at aligned magic numbers, pad the end).

    Args:
        data: the record's bytes.

    Returns:
        The bytes to append to a ``.rec`` file.

    Raises:
        ValueError: a part would be longer than the 29-bit length field allows.
    """
    data = bytes(data)
    if len(data) > MAX_PART_LENGTH:
        raise ValueError(f"a RecordIO record holds at most {MAX_PART_LENGTH} bytes, got {len(data)}")
    cuts = [i for i in range(0, len(data) - 3, 4) if data[i : i + 4] == MAGIC_BYTES]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut + 4
    pieces.append(data[start:])
    out = []
    for index, piece in enumerate(pieces):
        if len(pieces) == 1:
            cflag = _WHOLE
        else:
            cflag = _FIRST if index == 0 else _LAST if index == len(pieces) - 1 else _MIDDLE
        out += [MAGIC_BYTES, struct.pack("<I", (cflag << 29) | len(piece)), piece]
    out.append(b"\0" * (-len(data) % 4))
    return b"".join(out)


def _pread(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class RecordIOReader:
    """Random access to the records of a ``.rec`` file by key, through its ``.idx``.

    Without an ``.idx``, the file is scanned once (part headers only) and the keys are the
    records' positions 0, 1, 2, ... Reads use ``os.pread`` on a descriptor opened per process,
    so a reader may be shared with forked data-loader workers.

    Args:
        path_rec: the ``.rec`` file.
        path_idx: its ``.idx`` file, or None to scan.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a malformed ``.idx`` line, a duplicate key, an offset beyond the ``.rec``,
            or (when scanning) a malformed ``.rec``.
    """

    def __init__(self, path_rec: str | Path, path_idx: str | Path | None = None) -> None:
        self.path_rec = Path(path_rec)
        self.path_idx = None if path_idx is None else Path(path_idx)
        if not self.path_rec.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path_rec}")
        self.size = self.path_rec.stat().st_size
        self._fd: int | None = None
        self._pid = -1
        self.offsets = self._read_index() if self.path_idx is not None else self._scan()

    @property
    def keys(self) -> list[int]:
        """The keys, in ``.idx`` order (file order when scanned)."""
        return list(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def __contains__(self, key: object) -> bool:
        return key in self.offsets

    def _read_index(self) -> dict[int, int]:
        if not self.path_idx.is_file():
            raise FileNotFoundError(f"RecordIO index not found: {self.path_idx}")
        offsets: dict[int, int] = {}
        with open(self.path_idx, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                fields = line.split()
                try:
                    key, offset = int(fields[0]), int(fields[1])
                    if len(fields) != 2:
                        raise ValueError
                except (IndexError, ValueError):
                    raise ValueError(
                        f"{self.path_idx} line {number}: expected 'key<TAB>offset' (two integers), got {line.strip()[:80]!r}"
                    ) from None
                if key in offsets:
                    raise ValueError(f"{self.path_idx} line {number}: key {key} appears twice")
                if not 0 <= offset <= self.size - 8:
                    raise ValueError(
                        f"{self.path_idx} line {number}: key {key} has offset {offset}, beyond the end of {self.path_rec} ({self.size} bytes)"
                    )
                offsets[key] = offset
        return offsets

    def _scan(self) -> dict[int, int]:
        offsets, offset = {}, 0
        while offset < self.size:
            offsets[len(offsets)] = offset
            offset = self._walk(offset, read_data=False)[1]
        return offsets

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path_rec, os.O_RDONLY), os.getpid()
        return self._fd

    def _walk(self, offset: int, read_data: bool = True) -> tuple[bytes, int]:
        """The record starting at ``offset`` (parts joined) and the offset after it."""
        fd = self._descriptor()
        parts, position, previous = [], offset, None
        while True:
            head = _pread(fd, 8, position)
            if len(head) < 8:
                what = "a record" if previous is None else f"part {len(parts)} of the record at offset {offset}"
                raise ValueError(
                    f"{self.path_rec} is truncated: {what} needs an 8-byte part header at offset {position}, the file has {self.size} bytes"
                )
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise ValueError(
                    f"{self.path_rec}: bad magic 0x{magic:08x} at offset {position}, expected 0x{MAGIC:08x} (not a RecordIO file, or a wrong .idx offset)"
                )
            cflag, length = lrecord >> 29, lrecord & MAX_PART_LENGTH
            expected = (_WHOLE, _FIRST) if previous is None else (_MIDDLE, _LAST)
            if cflag not in expected:
                raise ValueError(
                    f"{self.path_rec}: the part at offset {position} has continuation flag {cflag}, expected one of {expected}"
                )
            end = position + 8 + length + (-length % 4)
            if end > self.size:
                raise ValueError(
                    f"{self.path_rec}: the part at offset {position} claims {length} bytes, beyond the end of the file ({self.size} bytes): truncated file?"
                )
            parts.append(_pread(fd, length, position + 8) if read_data else b"")
            position, previous = end, cflag
            if cflag in (_WHOLE, _LAST):
                return MAGIC_BYTES.join(parts), position

    def read(self, key: int) -> bytes:
        """The bytes of record ``key`` (parts joined again).

        Args:
            key: a key of the ``.idx`` (a position when scanned).

        Returns:
            The record's data.

        Raises:
            ValueError: the key is not in the index, or the record is malformed (bad magic,
                truncated, a length beyond the file), naming the file and the offset.
        """
        if key not in self.offsets:
            source = (
                self.path_idx if self.path_idx is not None else f"the {len(self.offsets)} records of {self.path_rec}"
            )
            raise ValueError(f"key {key} is not in {source}")
        return self._walk(self.offsets[key])[0]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """(key, record) pairs in index order."""
        for key in self.offsets:
            yield key, self.read(key)

    def close(self) -> None:
        """Close the file descriptor (a later read opens it again)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # pickled into spawned data-loader workers without the descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class RecordIOWriter:
    """Write a ``.rec`` (and its ``.idx``) that mxnet and dmlc-core read.

    The files are written under temporary names and moved into place by :meth:`close` (or at
    the end of a ``with`` block that raised nothing), so a killed run leaves no half pack.

    Args:
        path_rec: the ``.rec`` to write.
        path_idx: its ``.idx``, or None for none.
    """

    def __init__(self, path_rec: str | Path, path_idx: str | Path | None = None) -> None:
        self.path_rec = Path(path_rec)
        self.path_idx = None if path_idx is None else Path(path_idx)
        self.keys: list[int] = []
        self._key_set: set[int] = set()
        self.offset = 0
        self._files = []
        for path in (self.path_rec, self.path_idx):
            if path is None:
                continue
            if path.is_dir():
                raise IsADirectoryError(f"{path} is an existing folder: give a file name")
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            self._files.append((os.fdopen(handle, "wb"), Path(tmp), path))

    def write(self, data: bytes, key: int | None = None) -> int:
        """Append one record.

        Args:
            data: the record's bytes.
            key: its key in the ``.idx`` (default: the number of records written so far).

        Returns:
            The record's offset in the ``.rec``.

        Raises:
            ValueError: a key written before, or a record too long for RecordIO.
        """
        key = len(self.keys) if key is None else int(key)
        if key in self._key_set:
            raise ValueError(f"key {key} was already written to {self.path_rec}")
        framed = frame_record(data)
        offset = self.offset
        self._files[0][0].write(framed)
        if self.path_idx is not None:
            self._files[1][0].write(f"{key}\t{offset}\n".encode())
        self.keys.append(key)
        self._key_set.add(key)
        self.offset += len(framed)
        return offset

    def close(self) -> None:
        """Finish: move the files into place."""
        for handle, tmp, path in self._files:
            handle.close()
            os.replace(tmp, path)
        self._files = []

    def discard(self) -> None:
        """Abandon: delete the temporary files."""
        for handle, tmp, _ in self._files:
            handle.close()
            tmp.unlink(missing_ok=True)
        self._files = []

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def pack_image_record(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """An image record (mxnet ``recordio.pack``): header, label vector if any, image bytes.

    Args:
        label: one label (``flag`` 0) or a sequence of labels (``flag`` = its length).
        image: the encoded image (or b"" for a header record).
        id: the header's id.
        id2: the header's second id.

    Returns:
        The record's bytes.
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return IMAGE_HEADER.pack(0, float(label), id, id2) + bytes(image)
    vector = np.asarray(label, dtype="<f4").ravel()
    if vector.size == 0:
        raise ValueError("Expected a label or a non-empty label vector, got an empty one")
    return IMAGE_HEADER.pack(vector.size, 0.0, id, id2) + vector.tobytes() + bytes(image)


def unpack_image_record(data: bytes) -> tuple[ImageHeader, bytes]:
    """Split an image record into its header and its encoded image (mxnet ``recordio.unpack``).

    Args:
        data: a record of an image ``.rec``.

    Returns:
        (header, image bytes); the header's label is a tuple when ``flag > 0``.

    Raises:
        ValueError: the record is shorter than its header and label vector.
    """
    if len(data) < IMAGE_HEADER.size:
        raise ValueError(f"an image record has a {IMAGE_HEADER.size}-byte header, got a record of {len(data)} bytes")
    flag, label, id, id2 = IMAGE_HEADER.unpack_from(data)
    end = IMAGE_HEADER.size + 4 * flag
    if flag > 0:
        if len(data) < end:
            raise ValueError(
                f"the image header's flag {flag} announces {flag} labels ({4 * flag} bytes), the record has {len(data) - IMAGE_HEADER.size} bytes after its header"
            )
        label = tuple(float(x) for x in np.frombuffer(data, "<f4", flag, IMAGE_HEADER.size))
    return ImageHeader(flag, label, id, id2), bytes(data[end:])


def read_property(path: str | Path) -> tuple[int, int, int]:
    """Read a pack's ``property`` file.

    Args:
        path: the file (one line ``num_classes,height,width``).

    Returns:
        (num_classes, height, width).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not three comma-separated positive integers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pack property file not found: {path}")
    text = path.read_text(errors="replace").strip()
    try:
        values = tuple(int(field) for field in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(
            f"{path}: expected one line 'num_classes,height,width' of positive integers, got {text[:80]!r}"
        )
    return values


def _label_of(header: ImageHeader) -> int:
    return int(header.labels[0])


class FacePack:
    """An InsightFace face pack: ``train.rec``, ``train.idx`` (optional: scanned) and ``property``.

    Args:
        root: the pack's folder.

    Raises:
        FileNotFoundError: ``train.rec`` or ``property`` is missing.
        ValueError: the files are malformed, or the header record announces image keys that the
            index lacks.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"face pack folder not found: {self.root}")
        idx = self.root / PACK_IDX
        self.reader = RecordIOReader(self.root / PACK_REC, idx if idx.is_file() else None)
        self.num_classes, self.height, self.width = read_property(self.root / PACK_PROPERTY)
        if not len(self.reader):
            raise ValueError(f"{self.reader.path_rec} holds no records")
        self.header: ImageHeader | None = None
        first_key = self.reader.keys[0] if 0 not in self.reader else 0
        first = self._unpack(first_key)[0]
        if first.flag > 0:
            self.header = first
            end = int(first.labels[0])
            if end < 1:
                raise ValueError(f"{self.reader.path_rec}: header record 0 announces image keys [1, {end}): none")
            missing = next((key for key in range(1, end) if key not in self.reader), None)
            if missing is not None:
                raise ValueError(
                    f"{self.reader.path_idx or self.reader.path_rec} lacks key {missing} of the image keys [1, {end}) announced by header record 0"
                )
            self.image_keys: Sequence[int] = range(1, end)
        else:
            self.image_keys = self.reader.keys

    def __len__(self) -> int:
        return len(self.image_keys)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) from ``property``."""
        return self.height, self.width

    def _unpack(self, key: int) -> tuple[ImageHeader, bytes]:
        try:
            return unpack_image_record(self.reader.read(key))
        except ValueError as err:
            if str(err).startswith(str(self.reader.path_rec)):
                raise
            raise ValueError(
                f"{self.reader.path_rec} record {key} (offset {self.reader.offsets.get(key)}): {err}"
            ) from err

    def record(self, key: int) -> tuple[int, bytes]:
        """(class label, encoded image) of the image record ``key``."""
        header, image = self._unpack(key)
        return _label_of(header), image

    def label(self, key: int) -> int:
        """The class label of image record ``key``."""
        return self.record(key)[0]

    def labels(self) -> list[int]:
        """The class label of every image, in :attr:`image_keys` order (reads every record)."""
        return [self.label(key) for key in self.image_keys]

    def face(self, key: int) -> np.ndarray:
        """Decode image record ``key``.

        Args:
            key: an image key.

        Returns:
            Array of shape (height, width, 3), uint8, RGB.

        Raises:
            ValueError: the image is not a JPEG/PNG of the pack's size, or cannot be decoded.
        """
        return self.item(key)[0]

    def item(self, key: int) -> tuple[np.ndarray, int]:
        """(decoded face, class label) of image record ``key`` (see :meth:`face`)."""
        from fmix.data.insightface_bin import decode_image

        label, image = self.record(key)
        try:
            return decode_image(image, key, (self.width, self.height)), label
        except ValueError as err:
            raise ValueError(f"{self.reader.path_rec} record {key} (offset {self.reader.offsets[key]}): {err}") from err

    def summary(self) -> dict:
        """Counts and sizes, from the header record and ``property`` (reads no image)."""
        return {
            "pack": str(self.root),
            "records": len(self.reader),
            "images": len(self.image_keys),
            "classes": self.num_classes,
            "height": self.height,
            "width": self.width,
            "header_record": self.header is not None,
            "indexed": self.reader.path_idx is not None,
        }


class FacePackDataset(Dataset):
    """A torch dataset over a face pack's images.

    Args:
        pack: the pack, or its folder.
        keys: the image keys to serve (default: all of them).

    Shape:
        - image: :math:`(3, H, W)` float32 in [0, 255], RGB.
        - label: a Python int.
    """

    def __init__(self, pack: FacePack | str | Path, keys: Sequence[int] | None = None) -> None:
        self.pack = pack if isinstance(pack, FacePack) else FacePack(pack)
        self.keys = self.pack.image_keys if keys is None else list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        face, label = self.pack.item(self.keys[index])
        return torch.tensor(face, dtype=torch.float32).permute(2, 0, 1).contiguous(), label


# --- writing packs from aligned folders, exporting packs to aligned folders -------------------

FACE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _aligned_faces(aligned: Path, faces_csv: Path | None) -> list[tuple[str, str]]:
    """(path relative to ``aligned``, identity) of the faces to pack, sorted."""
    from fmix.data.faces import read_face_list
    from fmix.data.images import list_identity_folders

    if faces_csv is not None:
        rows = read_face_list(faces_csv)
        if not rows:
            raise ValueError(f"{faces_csv} lists no faces")
        return sorted(set(rows), key=lambda row: (row[1], row[0]))
    identities = list_identity_folders(aligned)
    rows = [
        (path.relative_to(aligned).as_posix(), name)
        for name, paths in identities.items()
        for path in paths
        if path.suffix.lower() in FACE_SUFFIXES
    ]
    if not rows:
        raise ValueError(
            f"{aligned} holds no .png/.jpg faces in identity folders (expected ALIGNED/<identity>/<face>.png)"
        )
    return rows


def _encoded_face(path: Path, size: int | None) -> tuple[bytes, int]:
    """The face file's bytes (re-encoded as PNG unless JPEG/PNG) and its side, after checking it decodes to a square."""
    from PIL import Image

    from fmix.data.images import ImageReadError, read_rgb

    try:
        rgb = read_rgb(path)
    except ImageReadError as err:
        raise ValueError(f"cannot pack {path}: {err}") from err
    height, width = rgb.shape[:2]
    if height != width or (size is not None and height != size):
        raise ValueError(
            f"cannot pack {path}: it is {width}x{height}, expected an aligned {size or height}x{size or height} face"
        )
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        plain = image.format in ("PNG", "JPEG") and image.mode == "RGB"
    if not plain:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        data = buffer.getvalue()
    return data, height


def write_face_pack(aligned: str | Path, dst: str | Path, faces_csv: str | Path | None = None) -> dict:
    """Pack aligned faces into an InsightFace face pack (``train.rec``, ``train.idx``, ``property``).

    Labels number the identities in sorted name order. The layout is InsightFace's: header
    record 0 with labels ``[N + 1, N + 1 + C]``, images at keys ``1..N`` (label = class, id =
    key), then one record per identity at keys ``N + 1 .. N + C`` with labels ``[first, end)``
    of its image keys. ``identities.csv`` maps labels to names.

    Args:
        aligned: folder of aligned faces ``<identity>/<face>.png`` (an ``fmix align`` output).
        dst: the pack's folder; must not hold a ``train.rec`` yet.
        faces_csv: optional split CSV (``path``, ``identity``) restricting the faces.

    Returns:
        ``{"images", "classes", "size", "pack"}``.

    Raises:
        FileExistsError: ``dst`` already holds a pack.
        ValueError: no faces, or a face that is unreadable, not square or of another size.
    """
    from fmix.io import atomic_write

    aligned, dst = Path(aligned), Path(dst)
    if not aligned.is_dir():
        raise FileNotFoundError(f"aligned folder not found: {aligned}")
    if (dst / PACK_REC).exists():
        raise FileExistsError(f"{dst / PACK_REC} already exists: remove it or choose another folder")
    rows = _aligned_faces(aligned, Path(faces_csv) if faces_csv is not None else None)
    names = sorted({identity for _, identity in rows})
    labels = {name: index for index, name in enumerate(names)}
    rows = sorted(rows, key=lambda row: (labels[row[1]], row[0]))
    count = len(rows)
    size = None
    ranges: dict[str, list[int]] = {}
    with RecordIOWriter(dst / PACK_REC, dst / PACK_IDX) as writer:
        writer.write(pack_image_record([count + 1, count + 1 + len(names)], b""), key=0)
        for key, (relative, identity) in enumerate(rows, 1):
            data, size = _encoded_face(aligned / relative, size)
            writer.write(pack_image_record(labels[identity], data, id=key), key=key)
            ranges.setdefault(identity, [key, key])[1] = key + 1
        for index, name in enumerate(names):
            writer.write(pack_image_record(ranges[name], b"", id=count + 1 + index), key=count + 1 + index)
    with atomic_write(dst / PACK_PROPERTY) as out:
        out.write(f"{len(names)},{size},{size}\n")
    with atomic_write(dst / "identities.csv") as out:
        writer_csv = csv.writer(out, lineterminator="\n")
        writer_csv.writerow(("label", "identity", "images"))
        writer_csv.writerows((labels[name], name, ranges[name][1] - ranges[name][0]) for name in names)
    return {"images": count, "classes": len(names), "size": size, "pack": str(dst)}


EXPORT_MARKER = "rec_export.json"


def export_face_pack(pack_dir: str | Path, dst: str | Path, resume: bool = False) -> dict:
    """Write a pack's faces as an aligned ImageFolder ``DST/<label>/<key>.png``.

    DST becomes a folder that ``fmix split`` and ``fmix train`` read like an ``fmix align``
    output: ``manifest.jsonl`` gets one row per face (source ``train.rec#<key>``, identity
    ``<label>``), appended as faces are written. A non-empty DST is refused unless ``resume``
    is set and DST is an unfinished export of the same pack, whose written faces are then kept.

    Args:
        pack_dir: the pack's folder.
        dst: the output folder.
        resume: continue an earlier export into ``dst``.

    Returns:
        ``{"images", "classes", "written", "resumed_skipped"}``.

    Raises:
        FileExistsError: ``dst`` is not empty (and not a resumable export of this pack).
        ValueError: a malformed pack or face.
    """
    from fmix.data.align import MANIFEST, read_manifest
    from fmix.data.images import write_png_atomic
    from fmix.io import remove_stale_temporaries, write_json_atomic

    pack = FacePack(pack_dir)
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"output folder {dst} is an existing file")
    marker = {"pack": str(Path(pack_dir).resolve()), "images": len(pack)}
    if dst.is_dir() and any(dst.iterdir()):
        recorded = json.loads((dst / EXPORT_MARKER).read_text()) if (dst / EXPORT_MARKER).is_file() else None
        if not resume:
            raise FileExistsError(
                f"output folder {dst} is not empty: choose an empty folder" + (" or pass --resume" if recorded else "")
            )
        if recorded != marker:
            raise FileExistsError(
                f"output folder {dst} is not an unfinished export of {pack_dir} (no matching {EXPORT_MARKER}): choose an empty folder"
            )
        remove_stale_temporaries(dst)
        _cut_half_line(dst / MANIFEST)
    write_json_atomic(dst / EXPORT_MARKER, marker)
    done = {row.source for row in read_manifest(dst) if (dst / row.output).is_file()}
    written = 0
    with open(dst / MANIFEST, "a") as manifest:
        for key in pack.image_keys:
            source = f"{PACK_REC}#{key}"
            if source in done:
                continue
            face, label = pack.item(key)
            output = f"{label}/{key}.png"
            write_png_atomic(face, dst / output)
            manifest.write(
                json.dumps({"source": source, "identity": str(label), "status": "ok", "output": output}) + "\n"
            )
            manifest.flush()
            written += 1
    return {
        "images": len(pack),
        "classes": pack.num_classes,
        "written": written,
        "resumed_skipped": len(pack) - written,
    }


def _cut_half_line(path: Path) -> None:
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
