"""Alignment throughput on real LFW photos: 1 worker vs N workers, side by side in one run.

Usage: python benchmarks/bench_align.py [--images 600] [--workers 2]
Prints images/s for each setting, their ratio, and the detection rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fmix.data.align import align_folder
from fmix.params import AlignParams

LFW_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images_deepfunneled"


def run(src: Path, params: AlignParams) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        summary = align_folder(src, Path(out) / "aligned", params, progress=False)
        return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", type=Path, default=LFW_IMAGES)
    parser.add_argument("--min-images", type=int, default=20)
    parser.add_argument("--identities", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for workers in sorted({1, args.workers}):
        params = AlignParams(min_images=args.min_images, max_identities=args.identities, workers=workers)
        seconds, summary = run(args.src, params)
        ok = summary["status_counts"].get("ok", 0)
        rows.append((workers, summary["selected"], ok, seconds, summary["selected"] / seconds))
        print(
            f"workers={workers}: {summary['selected']} photos in {seconds:.2f} s = {rows[-1][4]:.1f} img/s, "
            f"detected and aligned {ok} ({100.0 * ok / summary['selected']:.1f}%)"
        )
    if len(rows) == 2:
        print(f"speed-up {rows[1][0]} workers vs 1: {rows[1][4] / rows[0][4]:.2f}x")


if __name__ == "__main__":
    main()
