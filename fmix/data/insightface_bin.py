"""Read InsightFace verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

Such a file is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG or
PNG bytes) where images ``2i`` and ``2i + 1`` form pair ``i``, and ``issame_list`` holds N
bools. Pickles can run code while loading, so this reader uses a restricted unpickler that
refuses every global but one: only built-in bytes, strings, lists, tuples, bools and ints can be
built, and a file asking for anything else (``os.system``, a class instance, a numpy array)
raises ``pickle.UnpicklingError`` before any of it is called.

Python 2 pickles (the original InsightFace files) store images as ``str``; they load as
``bytes`` with ``encoding="bytes"``. Python 3 pickles of protocol 2 (``pickle.dumps(...,
protocol=2)``, as many re-saved InsightFace files are) store each ``bytes`` as a call
``_codecs.encode(text, "latin1")``: that one global is allowed, as a stand-in that accepts
exactly a ``str`` and ``"latin1"`` and returns ``text.encode("latin1")``; any other arguments
are refused.

:func:`write_verification_bin` writes such a file (protocol 4) from aligned faces and LFW's
``pairs.txt``.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

DEFAULT_IMAGE_SIZE = (112, 112)
MAX_PIXELS = 4096 * 4096  # per image; a decompression-bomb guard
IMAGE_FORMATS = ("JPEG", "PNG")


def _latin1_bytes(*args: object) -> bytes:
    """The stand-in for ``_codecs.encode`` in protocol-2 pickles: ``text.encode("latin1")``, nothing else."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
        shown = ", ".join(type(arg).__name__ if not isinstance(arg, str) else repr(arg[:20]) for arg in args)
        raise pickle.UnpicklingError(
            f"refusing the call _codecs.encode({shown}): a protocol-2 .bin may only encode bytes as (str, 'latin1')"
        )
    return args[0].encode("latin1")


# The one global a .bin may name: how Python 3 writes bytes with pickle protocol 2.
ALLOWED_GLOBALS = {("_codecs", "encode"): _latin1_bytes}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only built-in containers and scalars.

    Every global is refused except ``_codecs.encode``, which resolves to a checked stand-in
    that only turns a ``str`` and ``"latin1"`` into ``bytes`` (protocol-2 pickles of ``bytes``).
    """

    def find_class(self, module: str, name: str):  # noqa: D102 - see the class docstring
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}: an InsightFace .bin may only hold bytes, "
            "lists, tuples and bools, and loading globals can run arbitrary code"
        )


def restricted_load(file: BinaryIO) -> object:
    """Unpickle with :class:`RestrictedUnpickler` (Python 2 ``str`` loads as ``bytes``).

    The opcodes are walked first (:func:`pickletools.genops`, which builds nothing), so an empty
    or truncated file, or one whose length field claims more bytes than it holds, is refused
    before the unpickler allocates anything for it.

    Args:
        file: a binary file object positioned at the pickle.

    Returns:
        The unpickled object, built from built-in types only.

    Raises:
        ValueError: the data is empty, truncated or not a well-formed pickle.
        pickle.UnpicklingError: the pickle asks for a global other than ``_codecs.encode``, or
            calls that one with other arguments than a ``str`` and ``"latin1"`` (see
            :class:`RestrictedUnpickler`).
    """
    data = file.read()
    if not data:
        raise ValueError("the file is empty: no pickle in it")
    try:
        for _ in pickletools.genops(data):
            pass
    except ValueError as err:
        raise ValueError(f"not a complete, well-formed pickle: {err}") from err
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


@dataclass(frozen=True)
class VerificationBin:
    """A decoded verification set.

    Attributes:
        images: the 2N faces, RGB uint8, of shape (2N, H, W, 3); pair ``i`` is ``2i, 2i + 1``.
        issame: True for same-identity pairs, bool of shape (N,).
    """

    images: np.ndarray
    issame: np.ndarray

    @property
    def num_pairs(self) -> int:
        """N, the number of pairs."""
        return len(self.issame)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The first and the second image of every pair, each of shape (N, H, W, 3) (views)."""
        return self.images[0::2], self.images[1::2]


def _check_structure(obj: object) -> tuple[list, list]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"Expected the .bin to hold a pair (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValueError(
            f"Expected bins and issame_list to be lists, got {type(bins).__name__} and {type(issame).__name__}"
        )
    if len(bins) != 2 * len(issame):
        raise ValueError(f"Expected len(bins) == 2 * len(issame_list), got {len(bins)} images for {len(issame)} pairs")
    for i, flag in enumerate(issame):
        if isinstance(flag, bool) or (isinstance(flag, int) and flag in (0, 1)):
            continue
        raise ValueError(f"Expected issame_list[{i}] to be a bool, got {flag!r}")
    for i, data in enumerate(bins):
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"Expected bins[{i}] to be encoded image bytes, got {type(data).__name__}")
    return list(bins), list(issame)


def decode_image(data: bytes, index: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one encoded face to RGB uint8.

    Args:
        data: JPEG or PNG bytes.
        index: position in the file, for error messages.
        size: required (width, height), or None to accept any size.

    Returns:
        Array of shape (H, W, 3), uint8.
    """
    from PIL import Image, UnidentifiedImageError
    from PIL.Image import DecompressionBombError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise ValueError(f"image {index} is {image.format}, expected one of {IMAGE_FORMATS}")
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"image {index} claims {image.width}x{image.height} pixels, more than {MAX_PIXELS}")
            if size is not None and image.size != tuple(size):
                raise ValueError(f"image {index} is {image.width}x{image.height}, expected {size[0]}x{size[1]}")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, DecompressionBombError, OSError) as err:
        raise ValueError(f"image {index} cannot be decoded: {err}") from err


def load_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """The encoded images and same flags of an InsightFace ``.bin``, checked but not decoded.

    Args:
        path: the ``.bin`` file.

    Returns:
        (2N encoded images, N same flags).

    Raises:
        ValueError: not a well-formed pickle of ``(bins, issame_list)`` with at least one pair.
        pickle.UnpicklingError: the pickle asks for code (see :class:`RestrictedUnpickler`).
    """
    with open(path, "rb") as file:
        try:
            loaded = restricted_load(file)
        except ValueError as err:
            raise ValueError(f"{path} is not an InsightFace .bin: {err}") from err
    bins, issame = _check_structure(loaded)
    if not bins:
        raise ValueError(f"{path} holds no pairs")
    return bins, issame


def read_insightface_bin(path: str | Path, image_size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE) -> VerificationBin:
    """Read and decode an InsightFace ``.bin`` verification set, without running pickled code.

    Args:
        path: the ``.bin`` file.
        image_size: required (width, height) of every image; None accepts any size shared by
            all images.

    Returns:
        The decoded set.
    """
    bins, issame = load_bin(path)
    images = [decode_image(bytes(data), i, image_size) for i, data in enumerate(bins)]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"Expected images of one size in {path}, got shapes {sorted(shapes)}")
    return VerificationBin(np.stack(images), np.array(issame, dtype=np.bool_))


def write_verification_bin(
    aligned: str | Path, pairs_txt: str | Path, out: str | Path, skip_missing: bool = False
) -> dict:
    """Write an InsightFace verification ``.bin`` from aligned LFW faces and LFW's View 2 ``pairs.txt``.

    The faces are ``ALIGNED/<name>/<name>_<NNNN>.png`` (as ``fmix align`` names them); their
    file bytes are stored as they are, each face once (pickle shares repeated objects), in a
    protocol-4 pickle of ``(bins, issame_list)`` in the order of ``pairs.txt``, so InsightFace's
    10 consecutive folds are LFW's folds.

    Args:
        aligned: the aligned LFW folder.
        pairs_txt: LFW ``pairs.txt`` (View 2).
        out: the ``.bin`` to write (atomically).
        skip_missing: drop the pairs whose faces were not aligned instead of refusing them.

    Returns:
        ``{"pairs", "matched", "dropped", "images", "size"}``.

    Raises:
        FileNotFoundError: a face of a pair is missing (without ``skip_missing``).
        ValueError: a face is not a PNG/JPEG, or the faces differ in size, or no pair is left.
    """
    from fmix.data.splits import read_lfw_pairs
    from fmix.io import atomic_write

    aligned = Path(aligned)
    if not aligned.is_dir():
        raise FileNotFoundError(f"aligned folder not found: {aligned}")
    pairs = read_lfw_pairs(pairs_txt)
    encoded: dict[str, bytes] = {}
    bins, issame, size = [], [], None
    missing: dict[str, None] = {}  # distinct missing faces, in pair order
    for _, name_a, i, name_b, j, same in pairs:
        names = (f"{name_a}/{name_a}_{i:04d}.png", f"{name_b}/{name_b}_{j:04d}.png")
        absent = [name for name in names if name not in encoded and not (aligned / name).is_file()]
        if absent:
            missing.update(dict.fromkeys(absent))
            continue
        for name in names:
            if name not in encoded:
                data = (aligned / name).read_bytes()
                try:
                    shape = decode_image(data, len(encoded), None).shape
                except ValueError as err:
                    raise ValueError(f"{aligned / name}: {err}") from err
                if size is not None and shape != size:
                    raise ValueError(
                        f"{aligned / name} is {shape[1]}x{shape[0]}, the faces before it {size[1]}x{size[0]}"
                    )
                encoded[name], size = data, shape
            bins.append(encoded[name])
        issame.append(bool(same))
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"{len(missing)} faces of {len(pairs) - len(issame)} pairs of {pairs_txt} are not in {aligned}, first {next(iter(missing))} "
            "(faces without a detected face are not aligned; --skip-missing drops their pairs)"
        )
    if not issame:
        raise ValueError(f"no pair of {pairs_txt} has both faces in {aligned}")
    with atomic_write(out, "wb") as handle:
        pickle.dump((bins, issame), handle, protocol=4)
    return {
        "pairs": len(issame),
        "matched": sum(issame),
        "dropped": len(pairs) - len(issame),
        "images": len(encoded),
        "size": f"{size[1]}x{size[0]}",
    }
