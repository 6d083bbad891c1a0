"""Helpers shared by the tests: where the real LFW data is, small samples of it, the bad-input zoo."""

from __future__ import annotations

import shutil
from pathlib import Path

from fmix.data.root import data_root

REPO = Path(__file__).resolve().parents[1]
LFW = data_root(relative_to=REPO) / "lfw"  # ../shared/data/lfw, or $FMIX_DATA/lfw
LFW_IMAGES = LFW / "images_deepfunneled"
# Identities with many photos, sorted by name: a stable small real sample.
SAMPLE_IDENTITIES = (
    "Alejandro_Toledo",
    "Alvaro_Uribe",
    "Amelie_Mauresmo",
    "Andre_Agassi",
    "Angelina_Jolie",
    "Ariel_Sharon",
    "Arnold_Schwarzenegger",
    "Atal_Bihari_Vajpayee",
    "Bill_Clinton",
    "Carlos_Menem",
)


def require_files(paths: list[Path]) -> list[Path]:
    """``paths`` if every one is a file; a missing data set fails the test (never skips it)."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} test file(s) of the shared data set are missing, first {missing[0]} (see ../shared/data)"
        )
    return paths


def copy_sample(dst: Path, identities=SAMPLE_IDENTITIES, per_identity: int = 6) -> Path:
    """Copy the first ``per_identity`` photos of each identity into ``dst/<identity>/``."""
    for name in identities:
        (dst / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((LFW_IMAGES / name).iterdir())[:per_identity]:
            shutil.copy(path, dst / name / path.name)
    return dst


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels but holds no data: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_bad_input_zoo(folder: Path, photo: Path) -> dict[str, str]:
    """Write the bad-input zoo next to a real photo; returns file name -> expected alignment status."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    data = photo.read_bytes()
    rgb = Image.open(photo).convert("RGB")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "bomb.png").write_bytes(png_header_only(60000, 60000))
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    wide = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(folder / "gray16.png")
    # Stored rotated 90 degrees, with the EXIF orientation that tells viewers to turn it back.
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", exif=exif, quality=95)
    Image.new("RGB", (250, 250), (120, 160, 200)).save(folder / "no_face.png")
    return {
        "empty.jpg": "empty_file",
        "truncated.jpg": "corrupt",
        "garbage.jpg": "not_an_image",
        "notes.txt": "not_an_image",
        "bomb.png": "too_large",
        "gray.png": "ok",
        "cmyk.jpg": "ok",
        "rgba.png": "ok",
        "palette.png": "ok",
        "gray16.png": "ok",
        "exif_rotated.jpg": "ok",
        "no_face.png": "no_face",
    }


def parity_game(**overrides):
    """A strategy-network game (the adversarial one of docs/design.md §3 unless overridden) whose 16 anchors show
    their label's parity: even labels +1 everywhere, odd ones -1. Returns ``(game, anchors, labels)``."""
    import torch

    from fmix.methods.adaptive_game import AdaptiveGame
    from fmix.params import AdaptiveParams

    labels = torch.arange(16)
    sign = 1.0 - 2.0 * (labels % 2).float()
    anchors = sign[:, None, None, None].expand(16, 3, 8, 8).contiguous()
    torch.manual_seed(0)
    # A budget of 4, halfway between 2 and 6: the best policy gives 6 to one half and 2 to the other.
    params = AdaptiveParams(
        **{
            "policy_lr": 0.05,
            "entropy_weight": 0.0,
            "difficulty_weight": 0.0,
            "policy_signal": "none",
            "target_mean_k": 4.0,
            "policy_objective": "adversarial",
            **overrides,
        }
    )
    return AdaptiveGame(3, (2, 3, 4, 5, 6), params), anchors, labels


def k_times_parity(x, constituents, weights):
    """A stand-in FR loss for :func:`parity_game`: k for even anchors, -k for odd ones."""
    return (weights > 0).sum(1).float() * (1.0 - 2.0 * (constituents[:, 0] % 2).float())
