"""Read InsightFace verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

Such a file is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG or
PNG bytes) where images ``2i`` and ``2i + 1`` form pair ``i``, and ``issame_list`` holds N
bools. Pickles can run code while loading, so this reader uses a restricted unpickler that
refuses every global: only built-in bytes, strings, lists, tuples, bools and ints can be built,
and a file asking for anything else (``os.system``, a class instance, a numpy array) raises
``pickle.UnpicklingError`` before any of it is called.

Python 2 pickles (the original InsightFace files) store images as ``str``; they load as
``bytes`` with ``encoding="bytes"``. Python 3 pickles of protocol 2 encode ``bytes`` through the
global ``_codecs.encode`` and are refused like any other global: re-save them with protocol 3+.
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


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only built-in containers and scalars: every global is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102 - see the class docstring
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
        pickle.UnpicklingError: the pickle asks for a global (see :class:`RestrictedUnpickler`).
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
        raise ValueError(f"Expected bins and issame_list to be lists, got {type(bins).__name__} and {type(issame).__name__}")
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


def read_insightface_bin(path: str | Path, image_size: tuple[int, int] | None = DEFAULT_IMAGE_SIZE) -> VerificationBin:
    """Read and decode an InsightFace ``.bin`` verification set, without running pickled code.

    Args:
        path: the ``.bin`` file.
        image_size: required (width, height) of every image; None accepts any size shared by
            all images.

    Returns:
        The decoded set.
    """
    with open(path, "rb") as file:
        try:
            loaded = restricted_load(file)
        except ValueError as err:
            raise ValueError(f"{path} is not an InsightFace .bin: {err}") from err
    bins, issame = _check_structure(loaded)
    if not bins:
        raise ValueError(f"{path} holds no pairs")
    images = [decode_image(bytes(data), i, image_size) for i, data in enumerate(bins)]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"Expected images of one size in {path}, got shapes {sorted(shapes)}")
    return VerificationBin(np.stack(images), np.array(issame, dtype=np.bool_))
