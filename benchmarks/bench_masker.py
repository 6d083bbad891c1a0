"""Masker throughput (faces/s) on real aligned faces, all variants measured side by side in one run.

Variants, for u = 1 and u = 8:
- fmix torch eager (upsampling folded into the DCT kernel),
- fmix ONNX Runtime (the exported masker.onnx),
- reference "family front end": F.interpolate x u of the whole image, then block DCT,
- reference per-image scipy: YCbCr, (zoom,) scipy.fft.dctn per 8x8 block, one face at a time.
Also prints the memory-write bound: the output bytes per face against the measured copy bandwidth,
and the end-to-end figure of ``fmix mask`` (decode, ledger hashes, mask, group, mix, write shards,
index and previews) at u = 1 beside the graph-only one. ``benchmarks/bench_mask_end_to_end.py``
measures ``fmix mask`` end to end at the default u = 2, fixed-k and adaptive maskers, before and
after issue 32, with a profile of its stages.

Usage: python benchmarks/bench_masker.py [--faces 64] [--aligned data/aligned] [--threads 2] [--e2e-faces 2781]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fmix.data.align import PhotoAligner
from fmix.data.images import read_rgb
from fmix.freq import NUM_CHANNELS, RunningChannelStats, block_dct, dct_matrix, rgb_to_ycbcr
from fmix.masker.build import build_masker, faces_to_tensor, masker_metadata
from fmix.masker.export import export_onnx
from fmix.masker.onnx_masker import OnnxMasker
from fmix.params import AlignParams, ExportParams

LFW_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images_deepfunneled"


def load_aligned(count: int, aligned: Path) -> torch.Tensor:
    files = sorted(aligned.glob("*/*.png"))[:count] if aligned.is_dir() else []
    if len(files) == count:
        return faces_to_tensor(np.stack([read_rgb(f) for f in files]))
    aligner = PhotoAligner(AlignParams())
    faces = []
    for photo in sorted(LFW_IMAGES.glob("*/*.jpg")):
        face = aligner(read_rgb(photo))
        if face is not None:
            faces.append(face)
        if len(faces) == count:
            return faces_to_tensor(np.stack(faces))
    raise SystemExit("not enough faces")


def family_front_end(images: torch.Tensor, u: int) -> torch.Tensor:
    """The paper family's way: materialise the upsampled image, then a blockwise DCT."""
    big = F.interpolate(images, scale_factor=u, mode="bilinear", align_corners=False) if u > 1 else images
    planes = rgb_to_ycbcr(big) - 128.0
    b, _, h, w = planes.shape
    d = dct_matrix(8, dtype=planes.dtype)
    blocks = planes.reshape(b, 3, h // 8, 8, w // 8, 8)
    coefficients = torch.einsum("pi,bchiwj,qj->bcpqhw", d, blocks, d)
    return coefficients.reshape(b, NUM_CHANNELS, h // 8, w // 8)


def scipy_per_image(images: np.ndarray, u: int) -> list[np.ndarray]:
    from scipy.fft import dctn
    from scipy.ndimage import zoom

    out = []
    matrix = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    for image in images:
        planes = np.einsum("ij,jhw->ihw", matrix, image) + np.array([0.0, 128.0, 128.0])[:, None, None] - 128.0
        if u > 1:
            planes = zoom(planes, (1, u, u), order=1)
        _, h, w = planes.shape
        blocks = planes.reshape(3, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
        out.append(dctn(blocks, axes=(3, 4), norm="ortho"))
    return out


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def copy_bandwidth() -> float:
    """Bytes/s of a large tensor copy on this machine (the write bound's denominator)."""
    source = torch.empty(512 * 2**20 // 4)  # far larger than the caches
    source.uniform_()
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), 10)
    return 2 * source.numel() * 4 / seconds  # read + write


def end_to_end(aligned: Path, count: int, masker_path: Path) -> tuple[int, float]:
    """Faces and seconds of one ``protect_folder`` run (the library call behind ``fmix mask``)."""
    from fmix.params import MaskParams
    from fmix.release.protect import ReleaseOptions, protect_folder

    files = sorted(aligned.glob("*/*.png"))[:count]
    with tempfile.TemporaryDirectory() as tmp:
        faces = Path(tmp) / "faces.csv"
        faces.write_text(
            "path,identity\n" + "".join(f"{f.relative_to(aligned).as_posix()},{f.parent.name}\n" for f in files)
        )
        start = time.perf_counter()
        protect_folder(
            aligned,
            Path(tmp) / "out",
            masker_path,
            MaskParams(),
            faces,
            progress=False,
            release=ReleaseOptions(ledger=Path(tmp) / "ledger.jsonl"),
        )
        return len(files), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--aligned", type=Path, default=Path("data/aligned"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--e2e-faces", type=int, default=2781, help="faces of the end-to-end fmix mask run (u = 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = load_aligned(args.faces, args.aligned)
    n = images.shape[0]
    bandwidth = copy_bandwidth()
    print(f"{n} aligned faces, {args.threads} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for u in (1, 8):
        stats = RunningChannelStats()
        with torch.no_grad():
            stats.update(block_dct(images, u))
        params = ExportParams(upsample=u)
        masker = build_masker(params, stats)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "masker.onnx"
            export_onnx(masker, path, masker_metadata(masker, params, 112, n))
            onnx_masker = OnnxMasker(path, providers=["CPUExecutionProvider"])
            if u == 1 and args.aligned.is_dir():
                count, seconds = end_to_end(args.aligned, args.e2e_faces, path)
                print(
                    f"u=1 fmix mask end to end (decode, hash, mask, group, mix, write): {count} faces in {seconds:.2f} s = {count / seconds:.0f} faces/s"
                )
            noise = torch.rand(n)
            with torch.no_grad():
                results = {
                    "fmix torch eager": timed(lambda: masker(images, noise), args.repeats),
                    "fmix onnxruntime": timed(lambda: onnx_masker(images, noise), args.repeats),
                    "family front end (interpolate, then DCT)": timed(
                        lambda: masker.mask(family_front_end(images, u)), args.repeats
                    ),
                    "per-image scipy": timed(lambda: scipy_per_image(images.numpy().astype(np.float64), u), 1),
                }
            reference = family_front_end(images.double(), u)
            error = ((family_front_end(images, u) - reference).abs().max() / reference.abs().max()).item()
            fused = masker.masked(images).double()
            fused_error = ((fused - masker.mask.double()(reference)).abs().max() / fused.abs().max()).item()
        out_bytes = masker.mask.num_kept * (112 * u // 8) ** 2 * 4
        print(
            f"\nu={u}: output {masker.mask.num_kept}x{112 * u // 8}x{112 * u // 8} float32 = {out_bytes / 1e6:.2f} MB/face; "
            f"write bound {bandwidth / 2 / out_bytes:.0f} faces/s\n  relative max error vs float64: family front end {error:.1e}, "
            f"fmix fused masker {fused_error:.1e}"
        )
        family = n / results["family front end (interpolate, then DCT)"]
        for name, seconds in results.items():
            rate = n / seconds
            print(f"  {name:44s} {rate:9.1f} faces/s   {rate / family:6.2f}x family front end")


if __name__ == "__main__":
    main()
