"""Loader throughput (images/s delivered) of the face sources, side by side in one run, on real LFW faces.

Sources (fmix/data/sources.py): the aligned folder + split CSV (decoded per item), the InsightFace
pack of the same faces (read and decoded per item) and the in-memory face set, each through
:func:`fmix.data.sources.face_loader` with 0, 1 and 2 workers. The in-memory source batches by one
indexing in the main process whatever the workers (its fast path); the rows ``memory per item``
show the same faces fetched one item at a time through worker processes, which is what the fast
path saves.

The faces are 112x112 centre crops of LFW deep-funneled photos (../shared/data), written as PNG
(as ``fmix align`` writes) under /tmp, and packed with ``fmix rec pack``'s writer: the crops stand in
for aligned faces (decoding cost is what matters here; detection is not measured).

Usage: python benchmarks/bench_loader.py [--faces 2000] [--batch-size 64] [--epochs 2]
Epoch 0 includes starting the workers; the last epoch is the steady state. Never asserts.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fmix.data.faces import load_face_set
from fmix.data.images import read_rgb
from fmix.data.recordio import write_face_pack
from fmix.data.root import data_root
from fmix.data.sources import FolderSource, MemorySource, PackSource, collate_faces, epoch_batches, face_loader

LFW_IMAGES = data_root(relative_to=Path(__file__).resolve().parents[1]) / "lfw" / "images_deepfunneled"


def write_faces(dst: Path, count: int) -> Path:
    """``count`` 112x112 crops of LFW photos as DST/aligned/<name>/<file>.png and DST/train.csv (path, identity, label)."""
    if not LFW_IMAGES.is_dir():
        raise FileNotFoundError(f"the shared LFW data is missing: {LFW_IMAGES}")
    rows, names = [], sorted(p.name for p in LFW_IMAGES.iterdir() if p.is_dir())
    for name in names:
        for photo in sorted((LFW_IMAGES / name).iterdir()):
            if len(rows) == count:
                break
            (dst / "aligned" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(read_rgb(photo)[69:181, 69:181]).save(dst / "aligned" / name / f"{photo.stem}.png")
            rows.append((f"{name}/{photo.stem}.png", name))
        if len(rows) == count:
            break
    labels = {name: i for i, name in enumerate(sorted({name for _, name in rows}))}
    with open(dst / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "identity", "label"))
        writer.writerows((path, name, labels[name]) for path, name in rows)
    return dst / "train.csv"


class PerItem(Dataset):
    """A source fetched one item at a time (no batched ``__getitems__``)."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.source[index]


def per_item_loader(source, batch_size: int, workers: int) -> DataLoader:
    loader = face_loader(source, batch_size, workers=0)
    options = dict(prefetch_factor=2, persistent_workers=True) if workers else {}
    return DataLoader(
        PerItem(source), batch_sampler=loader.batch_sampler, num_workers=workers, collate_fn=collate_faces, **options
    )


def timed_epochs(loader: DataLoader, epochs: int) -> list[tuple[float, int]]:
    """(seconds, images) of each epoch."""
    out = []
    for epoch in range(epochs):
        start, images = time.perf_counter(), 0
        for batch in epoch_batches(loader, epoch):
            images += batch.images.shape[0]
        out.append((time.perf_counter() - start, images))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="fmix-bench-loader-"))
    try:
        train_csv = write_faces(root, args.faces)
        write_face_pack(root / "aligned", root / "pack", train_csv)
        start = time.perf_counter()
        memory = MemorySource(load_face_set(root / "aligned", train_csv))
        load_seconds = time.perf_counter() - start
        print(
            f"{len(memory)} LFW faces (112x112 PNG crops) of {memory.num_classes} identities, batch {args.batch_size}, torch threads 1, {torch.get_num_threads()} thread(s); "
            f"decoding them all into memory took {load_seconds:.2f} s ({len(memory) / load_seconds:.0f} images/s, {memory.faces.images.numel() / 2**20:.1f} MiB)"
        )
        folder, pack = FolderSource(root / "aligned", train_csv), PackSource(root / "pack")
        print(f"{'source':<18} {'workers':>7} {'epoch 0 img/s':>14} {'last epoch img/s':>17} {'vs memory':>10}")
        results = {}
        cases = [("memory (fast path)", 0, lambda w: face_loader(memory, args.batch_size, workers=w))]
        cases += [("memory per item", w, lambda w: per_item_loader(memory, args.batch_size, w)) for w in (0, 1, 2)]
        cases += [("folder", w, lambda w: face_loader(folder, args.batch_size, workers=w)) for w in (0, 1, 2)]
        cases += [("pack", w, lambda w: face_loader(pack, args.batch_size, workers=w)) for w in (0, 1, 2)]
        for name, workers, build in cases:
            loader = build(workers)
            epochs = timed_epochs(loader, args.epochs)
            del loader
            first, last = (n / s for s, n in (epochs[0], epochs[-1]))
            results[name, workers] = last
            ratio = last / results["memory (fast path)", 0]
            print(f"{name:<18} {workers:>7} {first:>14.0f} {last:>17.0f} {ratio:>9.3f}x")
        best = {name: max(v for (n, _), v in results.items() if n == name) for name in ("folder", "pack")}
        print(
            f"best streamed: folder {best['folder']:.0f} img/s, pack {best['pack']:.0f} img/s; "
            f"pack / folder at 2 workers {results['pack', 2] / results['folder', 2]:.2f}x; "
            f"in-memory fast path / best streamed {results['memory (fast path)', 0] / max(best.values()):.1f}x"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
