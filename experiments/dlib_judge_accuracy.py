"""How well does the dlib judge recognise our aligned 112x112 crops? (issue 12, item 3)

Makes: docs/judge.md (the judge's top-1 and pair rates on aligned LFW).

Picks ``--people`` random identities with at least ``--per-person`` aligned faces, takes the
first ``--per-person`` faces of each, embeds them with :class:`fmix.models.dlib_judge.DlibJudge`
and reports leave-one-out top-1 (nearest other face), the share of same-person pairs under
the judge's 0.6 distance (TAR) and of different-person pairs under it (FAR), and faces/s.

Measured (1 torch thread, shared 2-core CPU; output of ``fmix align`` for LFW identities
with >= 2 photos):

    people  faces  seed  LOO top-1  TAR@0.6  FAR@0.6  faces/s
        60    300     0      0.997    0.975   0.0042     16.4

Usage: python experiments/dlib_judge_accuracy.py ALIGNED [--people 60] [--per-person 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from fmix.data.faces import load_faces
from fmix.models.dlib_judge import DlibJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aligned", type=Path, help="output folder of `fmix align`")
    parser.add_argument("--people", type=int, default=60)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    folders = sorted(p for p in args.aligned.iterdir() if p.is_dir() and len(list(p.glob("*.png"))) >= args.per_person)
    if len(folders) < args.people:
        raise SystemExit(f"error: only {len(folders)} identities have >= {args.per_person} faces in {args.aligned}")
    chosen = random.Random(args.seed).sample(folders, args.people)
    paths = [path for folder in chosen for path in sorted(folder.glob("*.png"))[: args.per_person]]
    labels = np.repeat(np.arange(args.people), args.per_person)
    faces, _, skipped = load_faces(paths)
    if skipped:
        raise SystemExit(f"error: {len(skipped)} faces cannot be read, e.g. {skipped[0]}")

    judge = DlibJudge()
    start = time.perf_counter()
    descriptors = judge.embed(faces)
    seconds = time.perf_counter() - start

    distance = judge.distance(descriptors, descriptors).numpy()
    np.fill_diagonal(distance, np.inf)
    top1 = (labels[distance.argmin(axis=1)] == labels).mean()
    upper = np.triu_indices(len(labels), 1)
    same = (labels[:, None] == labels[None, :])[upper]
    close = distance[upper] < judge.threshold
    print(
        f"people {args.people} faces {len(labels)} seed {args.seed}: LOO top-1 {top1:.3f}, "
        f"TAR@{judge.threshold} {close[same].mean():.3f} ({same.sum()} pairs), "
        f"FAR@{judge.threshold} {close[~same].mean():.4f} ({(~same).sum()} pairs), {len(labels) / seconds:.1f} faces/s"
    )


if __name__ == "__main__":
    main()
