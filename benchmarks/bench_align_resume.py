"""`fmix align` at scale without detection: listing and resume bookkeeping on a synthetic tree.

Writes a tree of tiny files (default 20,000 1x1 PNGs in 2,000 identity folders) under /tmp, a
manifest as a finished earlier run leaves it (half the rows ``ok`` with their output file, half
``no_face``), then times, for growing prefixes of the tree (to show how time grows with the number
of files), the listing (:func:`fmix.data.align.select_sources`), the manifest read and the
done/todo bookkeeping, and a whole resumed :func:`fmix.data.align.align_folder` call (nothing left
to detect); and prints the peak Python memory of each step. Microseconds per file that stay flat
as the tree grows mean linear work; a resume that re-read the manifest per file would grow with it.

Usage: python benchmarks/bench_align_resume.py [--files 20000] [--folders 2000] [--keep]
Prints seconds, microseconds per file and peak memory; never asserts.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

from PIL import Image

from fmix.data.align import (
    MANIFEST,
    OUTPUT_AFFECTING,
    OUTPUT_PARAMS,
    align_folder,
    read_manifest,
    refused_sources,
    select_sources,
)
from fmix.params import AlignParams


def make_tree(root: Path, files: int, folders: int) -> tuple[Path, Path]:
    """SRC/<id_NNNNN>/<img_NNNNNN>.png (1x1 PNGs) and DST with a finished run's manifest."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 64, 32)).save(buffer, format="PNG")
    data = buffer.getvalue()
    src, dst = root / "src", root / "dst"
    rows = []
    for index in range(files):
        identity = f"id_{index % folders:05d}"
        (src / identity).mkdir(parents=True, exist_ok=True)
        (src / identity / f"img_{index:06d}.png").write_bytes(data)
        source = f"{identity}/img_{index:06d}.png"
        if index % 2:
            rows.append(
                {
                    "source": source,
                    "identity": identity,
                    "status": "no_face",
                    "output": "",
                    "score": None,
                    "landmarks": None,
                    "message": "no face",
                }
            )
        else:
            output = f"{identity}/img_{index:06d}.png"
            (dst / identity).mkdir(parents=True, exist_ok=True)
            (dst / output).write_bytes(data)
            rows.append(
                {
                    "source": source,
                    "identity": identity,
                    "status": "ok",
                    "output": output,
                    "score": 0.99,
                    "landmarks": [[0.0, 0.0]] * 5,
                    "message": "",
                }
            )
    with open(dst / MANIFEST, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    params = AlignParams(min_images=1, workers=1)
    (dst / OUTPUT_PARAMS).write_text(json.dumps({key: getattr(params, key) for key in OUTPUT_AFFECTING}))
    return src, dst


def measured(step):
    """(result, seconds, peak MiB of Python allocations) of ``step()``."""
    tracemalloc.start()
    start = time.perf_counter()
    result = step()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def bookkeeping(src: Path, dst: Path, params: AlignParams):
    """What align_folder does before any detection: listing, manifest, done set, todo, refusals."""
    src_root = src.resolve()
    tasks = select_sources(src_root, params)
    done = {row.source for row in read_manifest(dst) if row.status != "ok" or (dst / row.output).is_file()}
    todo = [task for task in tasks if task[0].relative_to(src_root).as_posix() not in done]
    refused = refused_sources(todo, src_root)
    return len(tasks), len(todo), len(refused)


def prefix(root: Path, src: Path, dst: Path, folders: int) -> tuple[Path, Path]:
    """The first ``folders`` identities of the tree as their own SRC and finished DST (links, a cut manifest)."""
    part_src, part_dst = root / f"src_{folders}", root / f"dst_{folders}"
    part_src.mkdir()
    part_dst.mkdir()
    names = [f"id_{i:05d}" for i in range(folders)]
    for name in names:
        (part_src / name).symlink_to(src / name, target_is_directory=True)
        if (dst / name).is_dir():
            (part_dst / name).symlink_to(dst / name, target_is_directory=True)
    keep = set(names)
    with open(dst / MANIFEST) as full, open(part_dst / MANIFEST, "w") as out:
        out.writelines(line for line in full if json.loads(line)["identity"] in keep)
    shutil.copy(dst / OUTPUT_PARAMS, part_dst / OUTPUT_PARAMS)
    return part_src, part_dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=2_000)
    parser.add_argument("--keep", action="store_true", help="keep the tree under /tmp")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fmix-align-scale-"))
    try:
        start = time.perf_counter()
        src, dst = make_tree(root, args.files, args.folders)
        print(
            f"tree: {args.files} files in {args.folders} folders under {root} (written in {time.perf_counter() - start:.1f} s)"
        )
        params = AlignParams(min_images=1, workers=1)
        print(
            "resumed runs with every file done (the time a resume spends before its first detection); peak MiB: Python allocations (tracemalloc, a second run)"
        )
        print(f"{'step':<40} {'files':>7} {'seconds':>8} {'us/file':>8} {'peak MiB':>9}")
        for fraction in (0.25, 0.5, 1.0):
            part_src, part_dst = prefix(root, src, dst, max(1, int(args.folders * fraction)))
            steps = (
                ("listing (select_sources)", lambda: len(select_sources(part_src.resolve(), params))),
                ("listing + manifest + todo bookkeeping", lambda: bookkeeping(part_src, part_dst, params)[0]),
                (
                    "align_folder, resumed, nothing left",
                    lambda: align_folder(part_src, part_dst, params, progress=False)["selected"],
                ),
            )
            for name, step in steps:
                begin = time.perf_counter()
                files = step()
                seconds = time.perf_counter() - begin
                peak = measured(step)[2]
                print(f"{name:<40} {files:>7} {seconds:>8.2f} {1e6 * seconds / files:>8.1f} {peak:>9.1f}")
        summary = align_folder(src, dst, params, progress=False)
        print(
            f"full tree: resumed_skipped={summary['resumed_skipped']} processed_now={summary['processed_now']} status_counts={summary['status_counts']}"
        )
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
