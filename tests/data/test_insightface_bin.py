import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from fmix.data.insightface_bin import VerificationBin, read_insightface_bin, restricted_load
from fmix_testing import LFW_IMAGES, require_files

NAMES = ("Aaron_Eckhart", "AJ_Cook", "Aaron_Guiel", "AJ_Lamas")


def _encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def face_jpegs() -> list[bytes]:
    """Four real LFW faces, centre crop 112x112, as JPEG bytes."""
    paths = require_files([LFW_IMAGES / name / f"{name}_0001.jpg" for name in NAMES])
    return [_encode(np.asarray(Image.open(path).convert("RGB"))[69:181, 69:181]) for path in paths]


def _python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """``(bins, issame)`` as Python 2 writes it with protocol 2: images as ``str`` (BINSTRING)."""
    out = [b"\x80\x02", b"]", b"("]  # PROTO 2, EMPTY_LIST, MARK
    out += [b"T" + struct.pack("<I", len(data)) + data for data in bins]
    out += [b"e", b"]", b"("]  # APPENDS, EMPTY_LIST, MARK
    out += [b"\x88" if flag else b"\x89" for flag in issame]  # NEWTRUE / NEWFALSE
    out += [b"e", b"\x86", b"."]  # APPENDS, TUPLE2, STOP
    return b"".join(out)


def test_reads_back_real_jpeg_faces(tmp_path, face_jpegs):
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((face_jpegs, [True, False]), protocol=4))
    data = read_insightface_bin(path)
    assert isinstance(data, VerificationBin) and data.num_pairs == 2
    assert data.images.shape == (4, 112, 112, 3) and data.images.dtype == np.uint8
    assert data.issame.dtype == np.bool_ and data.issame.tolist() == [True, False]
    for image, encoded in zip(data.images, face_jpegs):
        np.testing.assert_array_equal(image, _decode(encoded))
    first, second = data.pairs()
    np.testing.assert_array_equal(first[1], data.images[2])
    np.testing.assert_array_equal(second[1], data.images[3])


def test_reads_python2_pickles_and_png(tmp_path, face_jpegs):
    png = _encode(_decode(face_jpegs[0]), "PNG")
    path = tmp_path / "agedb_30.bin"
    path.write_bytes(_python2_pickle([png, face_jpegs[1]], [False]))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # Python 3's default encoding cannot read these images
    data = read_insightface_bin(path)
    np.testing.assert_array_equal(data.images[0], _decode(face_jpegs[0]))  # PNG is lossless
    assert data.issame.tolist() == [False]


def test_checks_sizes_and_counts(tmp_path, face_jpegs):
    small = _encode(np.zeros((100, 100, 3), np.uint8))
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(pickle.dumps(([face_jpegs[0], small], [True])))
    with pytest.raises(ValueError, match="image 1 is 100x100, expected 112x112"):
        read_insightface_bin(path)
    with pytest.raises(
        ValueError, match=r"Expected images of one size in .*, got shapes \[\(100, 100, 3\), \(112, 112, 3\)\]"
    ):
        read_insightface_bin(path, image_size=None)
    path.write_bytes(pickle.dumps(([small, small], [True])))
    assert read_insightface_bin(path, image_size=(100, 100)).images.shape == (2, 100, 100, 3)
    path.write_bytes(pickle.dumps((face_jpegs[:3], [True])))
    with pytest.raises(ValueError, match=r"Expected len\(bins\) == 2 \* len\(issame_list\), got 3 images for 1 pairs"):
        read_insightface_bin(path)
    path.write_bytes(pickle.dumps(([face_jpegs[0], b"\xff\xd8\xff\xe0garbage"], [True])))
    with pytest.raises(ValueError, match="image 1 cannot be decoded"):
        read_insightface_bin(path)
    path.write_bytes(pickle.dumps(([face_jpegs[0], "text"], ["yes"])))
    with pytest.raises(ValueError, match=r"Expected issame_list\[0\] to be a bool, got 'yes'"):
        read_insightface_bin(path)
    path.write_bytes(pickle.dumps(([face_jpegs[0], "text"], [True])))
    with pytest.raises(ValueError, match=r"Expected bins\[1\] to be encoded image bytes, got str"):
        read_insightface_bin(path)
    path.write_bytes(pickle.dumps({"bins": []}))
    with pytest.raises(ValueError, match=r"Expected the .bin to hold a pair \(bins, issame_list\), got dict"):
        read_insightface_bin(path)


class _Exploit:
    """Pickles into a call of ``os.system`` (what a malicious .bin would carry)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Plain:
    pass


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payloads = {
        "reduce": pickle.dumps(([_Exploit(f"touch {marker}")], [True])),
        "protocol0_global": f"cos\nsystem\n(Vtouch {marker}\ntR.".encode(),
        "instance": pickle.dumps(([b"a", b"b"], [_Plain()])),
        "numpy": pickle.dumps((np.zeros(2), [True])),
    }
    for name, payload in payloads.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(payload)
        with pytest.raises(
            pickle.UnpicklingError, match=r"refusing to load the global \S+: an InsightFace .bin may only hold"
        ):
            read_insightface_bin(path)
    assert not marker.exists()


def test_restricted_load_names_the_refused_global(tmp_path):
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load the global (os|posix)\.system"):
        restricted_load(io.BytesIO(pickle.dumps(_Exploit("true"))))
    assert restricted_load(io.BytesIO(pickle.dumps(([b"x"], (True, 1), "s")))) == ([b"x"], (True, 1), "s")


def test_empty_truncated_and_lying_files_are_value_errors(tmp_path, face_jpegs):
    """Issue 9: these raised raw EOFError, UnpicklingError and MemoryError."""
    good = pickle.dumps((face_jpegs[:2], [True]), protocol=4)
    cases = {
        "empty": (b"", r"empty\.bin is not an InsightFace \.bin: the file is empty: no pickle in it"),
        "truncated": (
            good[: len(good) // 2],
            r"truncated\.bin is not an InsightFace \.bin: not a complete, well-formed pickle: expected \d+ bytes in a bytes4, but only \d+ remain",
        ),
        "no_stop": (
            good[:-1],
            r"no_stop\.bin is not an InsightFace \.bin: not a complete, well-formed pickle: pickle exhausted before seeing STOP",
        ),
        # BINBYTES8 claiming 2**60 bytes: the unpickler itself would try to allocate them.
        "huge_claim": (
            b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"abc",
            r"huge_claim\.bin is not an InsightFace \.bin: not a complete, well-formed pickle: expected 1152921504606846976 bytes in a bytes8, but only 3 remain",
        ),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_insightface_bin(path)


def test_reads_python3_protocol2_pickles(tmp_path, face_jpegs):
    """Python 3 writes bytes in protocol 2 as calls of the global _codecs.encode(str, 'latin1')."""
    payload = pickle.dumps((face_jpegs, [True, False]), protocol=2)
    assert payload[:2] == b"\x80\x02" and b"c_codecs\nencode\n" in payload
    path = tmp_path / "lfw_protocol2.bin"
    path.write_bytes(payload)
    data = read_insightface_bin(path)
    assert data.issame.tolist() == [True, False]
    for image, encoded in zip(data.images, face_jpegs):
        np.testing.assert_array_equal(image, _decode(encoded))
    assert restricted_load(io.BytesIO(pickle.dumps([b"\x00\xff\xd8", b"x"], protocol=2))) == [b"\x00\xff\xd8", b"x"]


def _codecs_call(*args: bytes) -> bytes:
    """A protocol-2 pickle calling _codecs.encode on the given (already encoded) argument opcodes."""
    return b"\x80\x02c_codecs\nencode\n(" + b"".join(args) + b"tR."


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def test_protocol2_allows_only_latin1_encode(tmp_path):
    marker = tmp_path / "pwned"
    assert restricted_load(io.BytesIO(_codecs_call(_unicode("abc"), _unicode("latin1")))) == b"abc"
    refused = {
        "system": (
            pickle.dumps(([_Exploit(f"touch {marker}")], [True]), protocol=2),
            r"refusing to load the global (os|posix)\.system",
        ),
        "decode": (
            b"\x80\x02c_codecs\ndecode\n(" + _unicode("abc") + _unicode("latin1") + b"tR.",
            r"refusing to load the global _codecs\.decode",
        ),
        "builtins_bytes": (pickle.dumps(b"", protocol=2), r"refusing to load the global __builtin__\.bytes"),
        "rot13": (
            _codecs_call(_unicode("abc"), _unicode("rot13")),
            r"refusing the call _codecs\.encode\('abc', 'rot13'\): a protocol-2 \.bin may only encode bytes as \(str, 'latin1'\)",
        ),
        "not_str": (
            _codecs_call(b"C\x03abc", _unicode("latin1")),
            r"refusing the call _codecs\.encode\(bytes, 'latin1'\)",
        ),
        "three_args": (
            _codecs_call(_unicode("abc"), _unicode("latin1"), _unicode("strict")),
            r"refusing the call _codecs\.encode\('abc', 'latin1', 'strict'\)",
        ),
    }
    for name, (payload, message) in refused.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(payload)
        with pytest.raises(pickle.UnpicklingError, match=message):
            read_insightface_bin(path)
    assert not marker.exists()
