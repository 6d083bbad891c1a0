"""Un-mixing attacks (a)-(c) on full-size releases: recovery error of the weak and the default release.

Makes: docs/results/2026-11-29-unmixing-a-release.md (recovery error of attacks (a)-(c) on full-size
releases).

Releases the private training faces twice with ``fmix mask``'s library call, into OUT:

- ``weak``: ``--insecure-seed 0 --insecure-reuse`` (recorded seed, one sample per face with
  partners from its 256-face shard: every face in about k samples);
- ``default``: OS CSPRNG, one use per face;

then runs each attack of ``fmix.attacks.unmix`` on both and scores every estimate by its relative
error to the nearest true masked face of its shard (the owner's ledger says which faces). No
inversion network: this measures the un-mixing alone (``fmix attack unmix`` adds S3/S4).

Acceptance (issue 8): on the weak release each attack recovers faces (median relative error
< 0.05); on the default release each fails (median >= 0.5).

Measured (default split: 2,781 private faces, 11 shards; the k = 2 masker of ``fmix export``;
one thread, shared 2-core machine):

    attack                    weak (2,781 samples)           default (1,390 samples)
                              median  share<0.05  seconds    median  share<0.05  seconds
    none (the released mixes)  0.614     0.000        -      0.607     0.000        -
    (a) secret regeneration    0.001     1.000      3.0      0.607     0.000      2.1
    (b) label resolution       0.001     1.000     23.4      1.174     0.000     86.4
    (c) structure only         0.001     1.000     21.6      0.617     0.000      2.6

(c) on the weak release: 2,782 faces found for 2,781 samples, every row linked, 27 cycles of
partners oriented, 12 triangles tried; on the default release 67 of 1,390 rows were linked by
chance correlations (other photos of one person), to no gain.

Usage: python experiments/unmix_recovery.py ALIGNED PRIVATE_CSV MASKER OUT [--attacks regenerate,labels,structure]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fmix.attacks.release import _shard_truth, nearest_faces
from fmix.attacks.unmix import match_structure, read_release, regenerate_secrets, resolve_labels
from fmix.masker.onnx_masker import OnnxMasker
from fmix.params import MaskParams
from fmix.release.protect import ReleaseOptions, protect_folder


def release(aligned: Path, faces: Path, masker: Path, folder: Path, options: ReleaseOptions) -> Path:
    """Release ``faces`` into ``folder`` (kept when it already holds a finished release)."""
    ledger = folder.parent / f"{folder.name}.ledger"
    if not (folder / "summary.json").is_file():
        options = ReleaseOptions(**{**options.__dict__, "ledger": ledger})
        protect_folder(aligned, folder, masker, MaskParams(previews=0), faces, progress=False, release=options)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("aligned", type=Path)
    parser.add_argument("private_csv", type=Path)
    parser.add_argument("masker", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--attacks", default="regenerate,labels,structure")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    masker = OnnxMasker(args.masker)
    attacks = {
        "regenerate": lambda r: regenerate_secrets(r, masker.mixing),
        "labels": lambda r: resolve_labels(r, masker.mixing.rescale),
        "structure": lambda r: match_structure(r, masker.mixing.rescale),
    }
    chosen = ["mixes"] + [name for name in args.attacks.split(",") if name]
    record: dict = {}
    for kind, options in (
        ("weak", ReleaseOptions(insecure_seed=0, insecure_reuse=True)),
        ("default", ReleaseOptions()),
    ):
        folder = release(args.aligned, args.private_csv, args.masker, args.out / kind, options)
        data = read_release(folder)
        truth = _shard_truth(folder, folder.parent / f"{folder.name}.ledger", args.aligned, masker)
        for name in chosen:
            start = time.perf_counter()
            estimates, info = (
                ({s: p.samples for s, p in data.shards.items()}, {}) if name == "mixes" else attacks[name](data)
            )
            seconds = time.perf_counter() - start
            errors = torch.cat([nearest_faces(estimates[s], truth[s][2])[0] for s in data.shards])
            record.setdefault(name, {})[kind] = {
                "median_relative_error": round(errors.median().item(), 4),
                "share_under_0.05": round((errors < 0.05).float().mean().item(), 4),
                "seconds": round(seconds, 1),
                "samples": len(errors),
                "details": info,
            }
            print(
                f"{kind:8s} {name:10s} median {errors.median():.4f}  share<0.05 {(errors < 0.05).float().mean():.3f}  {seconds:.1f} s",
                flush=True,
            )
    (args.out / "bench_unmix.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
