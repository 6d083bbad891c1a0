"""One epoch of >= 100k faces streamed from an InsightFace pack through the training data path, peak memory printed.

The pack: LFW deep-funneled photos (../shared/data) as 112x112 centre crops, JPEG-encoded once
and repeated with new labels (repeat r of identity c gets label r * C + c), written under /tmp
(never in the repository) in InsightFace's layout (header record, images, identity records,
``property``). 100k faces held in memory as the in-memory path does would take 100k x 112 x 112 x
3 bytes = 3.5 GiB (3.8 GB) for the images alone.

What is measured (2 CPU cores: one real training epoch of 100k faces would take hours, so it
is not run):

1. the data path for the whole epoch: :func:`fmix.data.sources.face_loader` over the pack
   (workers decode) -> batches -> float faces -> random flips -> the masker's frequency transform
   -> mixing (k = 2, the ``mixing`` section's defaults: Dirichlet weights, cap, rescale, noise;
   no sign mask drawn, since the network reads |x|, as the trainer does), as :meth:`fmix.train.trainer.Trainer.fr_step` does before the network;
2. the training step (the FR network's forward, backward, clipping, SGD) on ``--steps`` of those
   batches, from which an epoch's training time is extrapolated.

Peak memory: this process's RSS, and the peak over time of the summed PSS of this process and
its loader workers (PSS shares the pages they share, such as torch's libraries, out between them:
the sum is what the run costs the machine); sampled every 0.5 s.

3. with ``--epoch-width W``, one whole epoch of :class:`fmix.train.trainer.Trainer` (the steps of
   ``fmix train``: flips, transform, k = 2 mixing, forward, backward, SGD) on the streamed pack,
   with a network of width W (a small one, so that the epoch fits a benchmark run on 2 cores).

Usage: python benchmarks/bench_stream_pack.py [--faces 100000] [--distinct 2000] [--workers 2] [--batch-size 64] [--steps 200] [--epoch-width 0.125 [--epoch-only]]
Never asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fmix.data.images import read_rgb
from fmix.data.recordio import PACK_IDX, PACK_PROPERTY, PACK_REC, RecordIOWriter, pack_image_record
from fmix.data.root import data_root
from fmix.data.sources import PackSource, epoch_batches, face_loader
from fmix.freq import RunningChannelStats, block_dct
from fmix.masker.build import build_masker
from fmix.masker.protection import MixingConfig, Protection
from fmix.models.frnet import build_net
from fmix.params import ExportParams, MixingParams, TrainParams

LFW_IMAGES = data_root(relative_to=Path(__file__).resolve().parents[1]) / "lfw" / "images_deepfunneled"


def lfw_crops(count: int) -> tuple[list[bytes], list[int], list]:
    """(JPEG bytes, identity label, RGB array) of ``count`` 112x112 crops of LFW photos (names in sorted order)."""
    if not LFW_IMAGES.is_dir():
        raise FileNotFoundError(f"the shared LFW data is missing: {LFW_IMAGES}")
    data, labels, arrays = [], [], []
    for label, name in enumerate(sorted(p.name for p in LFW_IMAGES.iterdir() if p.is_dir())):
        for photo in sorted((LFW_IMAGES / name).iterdir()):
            crop = read_rgb(photo)[69:181, 69:181]
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, format="JPEG", quality=90)
            data.append(buffer.getvalue())
            labels.append(label)
            arrays.append(crop)
            if len(data) == count:
                return data, labels, arrays
    return data, labels, arrays


def write_synthetic_pack(dst: Path, faces: int, distinct: int) -> dict:
    """A pack of ``faces`` images: the distinct crops repeated, repeat r of identity c labelled r * C + c."""
    data, base_labels, arrays = lfw_crops(distinct)
    identities = max(base_labels) + 1
    labels = [(i // len(data)) * identities + base_labels[i % len(data)] for i in range(faces)]
    order = sorted(range(faces), key=lambda i: labels[i])  # InsightFace packs hold a class's images together
    classes = max(labels) + 1
    dst.mkdir(parents=True, exist_ok=True)
    ranges: dict[int, list[int]] = {}
    with RecordIOWriter(dst / PACK_REC, dst / PACK_IDX) as writer:
        writer.write(pack_image_record([faces + 1, faces + 1 + classes], b""), key=0)
        for key, i in enumerate(order, 1):
            writer.write(pack_image_record(labels[i], data[i % len(data)], id=key), key=key)
            ranges.setdefault(labels[i], [key, key])[1] = key + 1
        for label in range(classes):
            first, end = ranges.get(label, [0, 0])
            writer.write(pack_image_record([first, end], b"", id=faces + 1 + label), key=faces + 1 + label)
    (dst / PACK_PROPERTY).write_text(f"{classes},112,112\n")
    return {"faces": faces, "classes": classes, "bytes": (dst / PACK_REC).stat().st_size, "arrays": arrays}


class MemoryWatch:
    """Peak RSS of this process and peak summed PSS of this process and its children, sampled in a thread."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peak_rss, self.peak_pss, self._stop = every, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _kib(path: str, field: str) -> int:
        """A ``field: N kB`` line of a /proc file, in bytes (0 when the process is gone)."""
        try:
            with open(path) as handle:
                for line in handle:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        """``pid``'s child processes, recursively (Linux /proc)."""
        found, todo = [], [pid]
        while todo:
            parent = todo.pop()
            try:
                with open(f"/proc/{parent}/task/{parent}/children") as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                children = []
            found += children
            todo += children
        return found

    def _sample(self) -> None:
        me = os.getpid()
        self.peak_rss = max(self.peak_rss, self._kib(f"/proc/{me}/status", "VmRSS"))
        total = sum(self._kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in [me, *self._descendants(me)])
        self.peak_pss = max(self.peak_pss, total)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "MemoryWatch":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def mixed_step(batch, encoder, protection, net, optimizer, generator, clip_grad: float) -> float:
    """One training step as the mixing methods take it: encode, mix k = 2, loss, clipped SGD step; the loss."""
    with torch.no_grad():
        mixed = protection.mix(encoder(batch.float_images()), batch.labels, 2, generator)
    loss = net(mixed.x, batch.labels[mixed.partners], mixed.weights).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
    optimizer.step()
    return loss.item()


def trainer_epoch(source: PackSource, encoder, args) -> None:
    """One whole epoch of :class:`fmix.train.trainer.Trainer` (what ``fmix train`` runs per step) on the streamed pack."""
    from fmix.methods import build_method
    from fmix.models.encoders import FrequencyEncoder
    from fmix.train.trainer import Trainer

    params = TrainParams(
        method="mixup",
        width=args.epoch_width,
        embedding_size=32,
        batch_size=args.batch_size,
        epochs=1,
        mix_warmup_fraction=0.0,
        source="folder",  # streamed: how a source other than the in-memory one is read
        workers=args.workers,
    )
    method = build_method(params)
    frequency = FrequencyEncoder(encoder)
    net = build_net(params, frequency.channels, frequency.size, source.num_classes, sign_invariant=True)
    trainer = Trainer(params, method, MixingParams(), frequency, method.prepare_net(net), source, torch.device("cpu"))
    start, steps = time.perf_counter(), 0
    with MemoryWatch() as memory:
        for number, batch in enumerate(trainer.loader(0)):
            trainer.fr_step(batch, 0, number)
            trainer.state.step += 1
            steps += 1
    seconds = time.perf_counter() - start
    print(
        f"fmix train's Trainer, one whole epoch (mixup k=2, {params.backbone} width {params.width}, embedding 32, {source.num_classes} classes): "
        f"{steps} steps, {steps * args.batch_size} faces in {seconds / 60:.1f} min; last loss {trainer.state.stats.loss / max(1, trainer.state.stats.fr_steps):.2f} (epoch mean)"
    )
    print(
        f"  peak RSS of the main process {memory.peak_rss / 2**30:.2f} GiB; peak PSS of main + {args.workers} workers {memory.peak_pss / 2**30:.2f} GiB (goal < 3 GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=2000, help="distinct LFW crops, repeated with new labels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="faces per batch (train.batch_size's default)")
    parser.add_argument("--steps", type=int, default=200, help="training steps measured")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument(
        "--epoch-width",
        type=float,
        default=0.0,
        help="also run one whole epoch of fmix train's Trainer (mixup k=2) on the pack with a network of this width (0: skip)",
    )
    parser.add_argument("--epoch-only", action="store_true", help="with --epoch-width: only the Trainer's epoch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="fmix-bench-stream-"))
    try:
        start = time.perf_counter()
        pack = write_synthetic_pack(root / "pack", args.faces, args.distinct)
        print(
            f"pack: {pack['faces']} faces of {pack['classes']} classes, {pack['bytes'] / 2**20:.0f} MiB of JPEG records under {root} (written in {time.perf_counter() - start:.0f} s); "
            f"in memory as uint8 they would take {pack['faces'] * 112 * 112 * 3 / 2**30:.2f} GiB"
        )
        faces = torch.from_numpy(np.stack(pack.pop("arrays")[:500])).permute(0, 3, 1, 2).float()
        stats = RunningChannelStats()
        stats.update(block_dct(faces, ExportParams().upsample))
        del faces
        masker = build_masker(ExportParams(), stats)
        encoder = masker.transform
        mixing = MixingConfig.from_params(MixingParams())
        # As the trainer does: the network reads |x|, which the sign mask leaves as it is, so training draws none.
        protection = Protection(None, dataclasses.replace(mixing, sign_flip=False))
        generator = torch.Generator().manual_seed(0)
        print(
            f"masker: {encoder.channels} channels of {112 * masker.upsample // 8}x{112 * masker.upsample // 8}; mixing k=2, {protection.mixing}"
        )

        source = PackSource(root / "pack")
        if args.epoch_width > 0:  # first, so that the other phases' objects do not count in its memory
            trainer_epoch(source, encoder, args)
            if args.epoch_only:
                return
        loader = face_loader(source, args.batch_size, seed=0, workers=args.workers)
        seen, checksum = 0, 0.0
        with MemoryWatch() as memory, torch.no_grad():
            start = time.perf_counter()
            loader_seconds = 0.0
            tick = time.perf_counter()
            for batch in epoch_batches(loader, 0):
                loader_seconds += time.perf_counter() - tick
                images = batch.float_images()
                flip = torch.rand(images.shape[0], generator=generator) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
                x = encoder(images)
                mixed = protection.mix(x, batch.labels, 2, generator)
                checksum += float(mixed.x[:, :, 0, 0].sum())
                seen += images.shape[0]
                tick = time.perf_counter()
            seconds = time.perf_counter() - start
        print(
            f"data path, one epoch: {seen} faces in {seconds:.1f} s = {seen / seconds:.0f} faces/s "
            f"({args.workers} workers, batch {args.batch_size}; {loader_seconds:.1f} s of it waiting on the loader)"
        )
        print(
            f"  peak RSS of the main process {memory.peak_rss / 2**30:.2f} GiB; peak PSS of main + workers {memory.peak_pss / 2**30:.2f} GiB "
            f"(goal < 3 GB; the in-memory path: {pack['faces'] * 112 * 112 * 3 / 1e9:.1f} GB for the images alone)"
        )
        del loader

        params = TrainParams()
        net = build_net(params, encoder.channels, 112 * masker.upsample // 8, source.num_classes, sign_invariant=True)
        optimizer = torch.optim.SGD(
            net.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
        loader = face_loader(source, args.batch_size, seed=0, workers=args.workers)
        net.train()
        times = []
        with MemoryWatch() as memory:
            for number, batch in enumerate(epoch_batches(loader, 1)):
                if number == args.steps:
                    break
                start = time.perf_counter()
                loss = mixed_step(batch, encoder, protection, net, optimizer, generator, params.clip_grad)
                times.append(time.perf_counter() - start)
        steady = times[min(5, len(times) - 1) :]
        per_step = sum(steady) / len(steady)
        steps_per_epoch = len(source) // args.batch_size
        print(
            f"training step ({params.backbone} width {params.width}, {source.num_classes} classes, batch {args.batch_size}, {args.threads} torch thread(s)): "
            f"{per_step:.3f} s/step over {len(steady)} steps (first {len(times) - len(steady)} not counted) = {args.batch_size / per_step:.0f} faces/s; "
            f"last loss {loss:.2f}"
        )
        print(
            f"  one epoch of {len(source)} faces = {steps_per_epoch} steps would take {steps_per_epoch * per_step / 3600:.1f} h of training here; "
            f"the data path delivers an epoch in {seen / (seen / seconds) / 60:.1f} min"
        )
        print(
            f"  peak RSS of the main process while training {memory.peak_rss / 2**30:.2f} GiB; peak PSS of main + workers {memory.peak_pss / 2**30:.2f} GiB"
        )
        print(
            f"peak RSS of this process over the run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (ru_maxrss)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
