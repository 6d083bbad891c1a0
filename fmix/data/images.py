"""Reading photos safely: every failure becomes an :class:`ImageReadError` with a status code."""

from __future__ import annotations

import errno
import stat
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmix.io import atomic_write

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

# Statuses an unreadable file gets; "no_face" and "ok" come from alignment.
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"
SYMLINK_LOOP = "symlink_loop"
BROKEN_LINK = "broken_link"


class ImageReadError(Exception):
    """A file that cannot be used as a photo; ``status`` names the reason."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_rgb(path: str | Path, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode a photo to an upright 8-bit RGB array.

    EXIF orientation is applied; grayscale, CMYK, palette, alpha and 16-bit images are converted
    (alpha is composited on black, 16-bit samples are scaled to 8 bits). The pixel count is
    checked from the header before decoding, so a decompression bomb costs nothing.

    Args:
        path: the image file.
        max_pixels: largest accepted ``width * height``.

    Returns:
        Array of shape (H, W, 3), dtype uint8.

    Raises:
        ImageReadError: status ``empty_file``, ``not_an_image``, ``corrupt``, ``too_large``,
            ``symlink_loop`` or ``broken_link``.
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageReadError(SYMLINK_LOOP, f"{path} is a symbolic link loop") from err
        if err.errno == errno.ENOENT and path.is_symlink():
            raise ImageReadError(BROKEN_LINK, f"{path} is a symbolic link to a missing file") from err
        raise ImageReadError(NOT_AN_IMAGE, f"cannot read {path}: {err.strerror}") from err
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(NOT_AN_IMAGE, f"{path} is not a regular file")
    if info.st_size == 0:
        raise ImageReadError(EMPTY, f"{path} is an empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        TOO_LARGE, f"{path} has {width}x{height} pixels, more than max_pixels={max_pixels}"
                    )
                image.load()
                return _to_rgb_array(ImageOps.exif_transpose(image))
        except ImageReadError:
            raise
        except UnidentifiedImageError as err:
            raise ImageReadError(NOT_AN_IMAGE, f"{path} is not a recognised image file") from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageReadError(TOO_LARGE, f"{path}: {err}") from err
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageReadError(CORRUPT, f"{path} is corrupt or truncated: {err}") from err


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        samples = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or samples.max() > 255 else 255.0
        gray = np.clip(np.rint(samples * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def write_png_atomic(array: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG atomically (no half file if the run is killed).

    Args:
        array: image of shape (H, W, 3), dtype uint8.
        path: destination; its folder is created.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected a uint8 array of shape (H, W, 3), got {array.dtype} {array.shape}")
    with atomic_write(path, "wb") as out:
        Image.fromarray(array, "RGB").save(out, format="PNG")


def _is_listed_file(path: Path) -> bool:
    return not path.name.startswith(".") and (path.is_file() or (path.is_symlink() and not path.is_dir()))


def list_identity_folders(root: str | Path) -> dict[str, list[Path]]:
    """List an ImageFolder tree: one sub-folder per identity, files inside it.

    Every regular file is listed (not only known image suffixes), so that non-image files are
    reported rather than silently ignored; so is every symbolic link that is not a link to a
    folder, loops and broken links included (reading them gives a status). Hidden files are skipped.

    Args:
        root: the folder holding one folder per identity.

    Returns:
        Identity name -> sorted file paths, identities sorted by name.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder not found: {root}")
    identities = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.iterdir() if _is_listed_file(p))
        if files:
            identities[folder.name] = files
    if not identities:
        raise ValueError(f"{root} holds no identity folders with files (expected ROOT/<identity>/<image>)")
    return identities


def list_nested_files(root: str | Path) -> dict[str, list[Path]]:
    """Files inside sub-folders of identity folders (``ROOT/<identity>/<sub>/.../<file>``), which an ImageFolder does not hold.

    They are not faces of the tree, but a run must report them rather than drop them silently.

    Args:
        root: the folder holding one folder per identity.

    Returns:
        Identity name -> sorted nested file paths (hidden files and folders skipped).
    """
    nested: dict[str, list[Path]] = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(
                p
                for p in sub.rglob("*")
                if _is_listed_file(p) and not any(part.startswith(".") for part in p.relative_to(sub).parts)
            )
            if files:
                nested.setdefault(folder.name, []).extend(files)
    return nested


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change no pixel in either decoder (text, time, physical size); any other makes
# read_rgb_fast hand the file to read_rgb (palettes, transparency, gamma, colour profiles, EXIF...).
_PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"})
_PLAIN_PNG_MAX_BYTES = 16 * 2**20


def _plain_png_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(height, width) of a plain PNG: 8-bit RGB, not interlaced, only :data:`_PLAIN_PNG_CHUNKS`, every CRC right, one IEND last; else None."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[24:29] != b"\x08\x02\x00\x00\x00" or not 0 < width * height <= max_pixels:
        return None  # bit depth 8, colour type 2 (RGB), compression, filter and interlace 0
    position = len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        end = position + 12 + length
        kind = data[position + 4 : position + 8]
        if end > len(data) or kind not in _PLAIN_PNG_CHUNKS:
            return None
        if zlib.crc32(data[position + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            return None
        if kind == b"IEND":
            return (height, width) if end == len(data) else None
        position = end
    return None


def read_rgb_fast(path: str | Path, max_pixels: int = 40_000_000) -> np.ndarray:
    """:func:`read_rgb`, with OpenCV's PNG decoder for plain PNGs (what ``fmix align`` writes).

    A plain PNG (8-bit RGB, not interlaced, no chunk but image data, text, time and physical
    size, every CRC right) decodes to the same pixels in both libraries, about a third faster in
    OpenCV; any other file, and any file OpenCV does not decode, goes to :func:`read_rgb` (its
    statuses and messages included).

    Args:
        path: the image file.
        max_pixels: largest accepted ``width * height``.

    Returns:
        Array of shape (H, W, 3), dtype uint8.

    Raises:
        ImageReadError: as :func:`read_rgb`.
    """
    try:
        import cv2
    except ImportError:
        return read_rgb(path, max_pixels)
    try:
        info = Path(path).stat()
        if not stat.S_ISREG(info.st_mode) or not 0 < info.st_size <= _PLAIN_PNG_MAX_BYTES:
            return read_rgb(path, max_pixels)
        data = Path(path).read_bytes()
        size = _plain_png_size(data, max_pixels)
        if size is None:
            return read_rgb(path, max_pixels)
        flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10; BGR before
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR if flag is None else flag)
    except (OSError, cv2.error):
        return read_rgb(path, max_pixels)
    if decoded is None or decoded.dtype != np.uint8 or decoded.shape != (*size, 3):
        return read_rgb(path, max_pixels)
    return decoded if flag is not None else np.ascontiguousarray(decoded[..., ::-1])
