"""DDP on the CPU with 2 processes (gloo) over a face pack: each rank's share of an epoch, and DDP training steps.

The pack is the synthetic one of ``bench_stream_pack.py`` (LFW crops repeated with new labels,
under /tmp, never in the repository), ``--faces`` of them (a multiple of 2 x batch, so that the
ranks' full batches cover the whole epoch). Two ranks (torch.multiprocessing spawn, gloo) each
build :func:`fmix.data.sources.face_loader` over the pack, rank and world size from
``torch.distributed``, and:

1. stream epochs 0 and 1, gathering the sample indices every rank read: they must be disjoint,
   of equal size, and make up the whole epoch, in another order each epoch (checked and printed);
2. time ``--steps`` DDP training steps (masker transform, k = 2 mixing, FR network in
   ``DistributedDataParallel``, gradients all-reduced by gloo), against the same steps in one
   process (world size 1) in the same run.

Usage: python benchmarks/bench_ddp_pack.py [--faces 20480] [--workers 1] [--batch-size 64] [--steps 20]
Prints numbers; never asserts (a failed check is printed as FAILED).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream_pack import mixed_step, write_synthetic_pack  # noqa: E402


def _network(source, batch_size: int):
    """The masker transform (statistics of the pack's first faces), the k = 2 mixing and the FR network."""
    from fmix.data.sources import FaceBatch, collate_faces
    from fmix.freq import RunningChannelStats, block_dct
    from fmix.masker.build import build_masker
    from fmix.masker.protection import MixingConfig, Protection
    from fmix.models.frnet import build_net
    from fmix.params import ExportParams, MixingParams, TrainParams

    first: FaceBatch = collate_faces([source[i] for i in range(min(256, len(source)))])
    stats = RunningChannelStats()
    stats.update(block_dct(first.float_images(), ExportParams().upsample))
    masker = build_masker(ExportParams(), stats)
    protection = Protection(None, dataclasses.replace(MixingConfig.from_params(MixingParams()), sign_flip=False))
    params = TrainParams(batch_size=batch_size)
    torch.manual_seed(0)  # the same initial network on every rank (DDP also broadcasts rank 0's)
    net = build_net(
        params, masker.transform.channels, 112 * masker.upsample // 8, source.num_classes, sign_invariant=True
    )
    return masker.transform, protection, net, params


def _train_steps(loader, encoder, protection, model, params, steps: int, epoch: int, rank: int) -> list[float]:
    from fmix.data.sources import epoch_batches

    optimizer = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )
    generator = torch.Generator().manual_seed(1000 + rank)
    times = []
    for number, batch in enumerate(epoch_batches(loader, epoch)):
        if number == steps:
            break
        start = time.perf_counter()
        mixed_step(batch, encoder, protection, model, optimizer, generator, params.clip_grad)
        times.append(time.perf_counter() - start)
    return times


def _rank(
    rank: int, world: int, pack: str, init_file: str, out: str, workers: int, batch_size: int, steps: int
) -> None:
    from fmix.data.sources import PackSource, epoch_batches, face_loader

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        source = PackSource(pack)
        loader = face_loader(
            source,
            batch_size,
            seed=3,
            rank=None if world > 1 else 0,
            world_size=None if world > 1 else 1,
            workers=workers,
        )
        record = {"rank": rank, "epochs": {}}
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            indices = [i for batch in loader.batch_sampler for i in batch]  # what the loader reads this epoch
            start, images = time.perf_counter(), 0
            for batch in epoch_batches(loader, epoch):
                images += batch.images.shape[0]
            record["epochs"][epoch] = {"indices": indices, "images": images, "seconds": time.perf_counter() - start}
        encoder, protection, net, params = _network(source, batch_size)
        model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
        model.train()
        record["step_seconds"] = _train_steps(loader, encoder, protection, model, params, steps, 2, rank)
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, record)
        else:
            gathered = [record]
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        if world > 1:
            dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=20_480)
    parser.add_argument("--distinct", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per rank")
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fmix-bench-ddp-"))
    try:
        pack = write_synthetic_pack(root / "pack", args.faces, args.distinct)
        print(
            f"pack: {pack['faces']} faces of {pack['classes']} classes under {root}; batch {args.batch_size} per rank, {args.workers} loader worker(s) per rank, 1 torch thread per process"
        )
        results = {}
        for world in (2, 1):
            out = root / f"world{world}.json"
            start = time.perf_counter()
            mp.spawn(
                _rank,
                args=(
                    world,
                    str(root / "pack"),
                    str(root / f"init{world}"),
                    str(out),
                    args.workers,
                    args.batch_size,
                    args.steps,
                ),
                nprocs=world,
                join=True,
            )
            results[world] = (json.loads(out.read_text()), time.perf_counter() - start)
        ranks, _ = results[2]
        size = args.faces
        for epoch in ("0", "1"):
            shares = [r["epochs"][epoch]["indices"] for r in ranks]
            disjoint = not set(shares[0]) & set(shares[1])
            whole = sorted(shares[0] + shares[1]) == list(range(size))
            equal = len(shares[0]) == len(shares[1])
            verdict = "ok" if disjoint and whole and equal else "FAILED"
            rates = [r["epochs"][epoch]["images"] / r["epochs"][epoch]["seconds"] for r in ranks]
            print(
                f"epoch {epoch}: rank shares of {len(shares[0])} and {len(shares[1])} faces, disjoint {disjoint}, union = the whole epoch of {size} {whole}: {verdict}; "
                f"loader {rates[0]:.0f} + {rates[1]:.0f} = {sum(rates):.0f} images/s"
            )
        order0 = ranks[0]["epochs"]["0"]["indices"] + ranks[1]["epochs"]["0"]["indices"]
        order1 = ranks[0]["epochs"]["1"]["indices"] + ranks[1]["epochs"]["1"]["indices"]
        print(f"epoch 1 reshuffled: {order0 != order1}")
        single, _ = results[1]
        one = single[0]["epochs"]["0"]
        print(
            f"one process: loader {one['images'] / one['seconds']:.0f} images/s over the whole epoch ({one['images']} faces)"
        )

        def per_step(seconds: list[float]) -> float:
            steady = seconds[min(3, len(seconds) - 1) :]
            return sum(steady) / len(steady)

        ddp = max(per_step(r["step_seconds"]) for r in ranks)
        alone = per_step(single[0]["step_seconds"])
        print(
            f"training step (masker + k=2 mixing + iresnet18 width 0.5, {pack['classes']} classes): one process {alone:.3f} s/step = {args.batch_size / alone:.0f} faces/s; "
            f"DDP 2 ranks {ddp:.3f} s/step = {2 * args.batch_size / ddp:.0f} faces/s together; speed-up {alone * 2 / ddp:.2f}x on this machine's 2 cores"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
