"""DDP on the CPU: two processes (gloo, torch.multiprocessing spawn) stream one face pack through `face_loader`."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fmix.data.images import read_rgb
from fmix.data.recordio import PACK_IDX, PACK_PROPERTY, PACK_REC, RecordIOWriter, pack_image_record
from fmix_testing import LFW_IMAGES, SAMPLE_IDENTITIES, require_files

FACES, BATCH, WORLD, SEED = 12, 3, 2, 11


def _write_pack(dst, photos) -> None:
    """A pack without header record whose face i (a 112x112 crop of a real LFW photo, PNG) has label i."""
    import io

    from PIL import Image

    dst.mkdir(parents=True)
    with RecordIOWriter(dst / PACK_REC, dst / PACK_IDX) as writer:
        for key, photo in enumerate(photos):
            buffer = io.BytesIO()
            Image.fromarray(read_rgb(photo)[69:181, 69:181]).save(buffer, format="PNG")
            writer.write(pack_image_record(key, buffer.getvalue(), id=key), key=key)
    (dst / PACK_PROPERTY).write_text(f"{len(photos)},112,112\n")


def _rank(rank: int, pack: str, init_file: str, out: str) -> None:
    from fmix.data.sources import PackSource, epoch_batches, face_loader

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        source = PackSource(pack)
        loader = face_loader(source, BATCH, seed=SEED)  # rank and world size from torch.distributed
        seen = {}
        for epoch in (0, 1):
            labels, images_match = [], True
            for batch in epoch_batches(loader, epoch):
                labels += batch.labels.tolist()
                images_match &= all(
                    torch.equal(image, source[label][0]) for image, label in zip(batch.images, batch.labels.tolist())
                )
            gathered = [None] * WORLD
            dist.all_gather_object(
                gathered, {"labels": labels, "images_match": images_match, "rank": loader.batch_sampler.rank}
            )
            seen[epoch] = gathered
        if rank == 0:
            with open(out, "w") as handle:
                json.dump(seen, handle)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_halves_that_make_up_the_epoch(tmp_path):
    photos = require_files(
        [sorted((LFW_IMAGES / name).iterdir())[0] for name in SAMPLE_IDENTITIES]
        + [sorted((LFW_IMAGES / SAMPLE_IDENTITIES[0]).iterdir())[i] for i in (1, 2)]
    )
    _write_pack(tmp_path / "pack", photos)
    out = tmp_path / "seen.json"
    mp.spawn(_rank, args=(str(tmp_path / "pack"), str(tmp_path / "init"), str(out)), nprocs=WORLD, join=True)
    seen = json.loads(out.read_text())
    from fmix.data.sampling import epoch_permutation

    orders = []
    for epoch in ("0", "1"):
        ranks = seen[epoch]
        assert [r["rank"] for r in ranks] == [0, 1] and all(r["images_match"] for r in ranks)
        first, second = ranks[0]["labels"], ranks[1]["labels"]
        assert len(first) == len(second) == FACES // WORLD  # equal shares, full batches
        # Disjoint, and the union is the epoch.
        assert not set(first) & set(second) and sorted(first + second) == list(range(FACES))
        assert first + second == epoch_permutation(FACES, int(epoch), SEED).tolist()  # the order of (seed, epoch)
        orders.append(first + second)
    assert orders[0] != orders[1]
    assert np.unique(orders[0]).size == FACES
