"""Does the reconstruction attack have teeth? White-box inversion of u=1 masking on real aligned LFW faces.

Makes: the table it prints (white-box inversion of u = 1 masking); no table in docs/results/.

Trains the inversion network on public faces (``data/splits/public.csv``) protected on the fly
with the real masker, then inverts held-out private faces (``private_train.csv``) and scores
SSIM beside the free floor (mean public face), for three maskers:

- ``all``: no masking (all 192 channels, DC included): a plumbing check, SSIM should approach 1;
- ``dc``: the DC channels dropped;
- ``lowfreq``: ``p + q <= 2`` dropped (the default masker).

Targets (issue): ``all`` >= 0.95; masking alone >= 0.60 and >= floor + 0.10.
Writes a grid (row 1: originals; then per masker: protected view, reconstruction).

Measured (defaults: 1573 public faces of 85 identities, 300 private faces of 189 identities,
90 CPU s on 1 thread, about 260 steps of batch 16; free floor 0.444):

    masker     K  steps   S1     S3    S3-floor  PSNR
    all      192   268  1.000  0.971   +0.527   34.9
    dc       189   267  0.605  0.911   +0.467   21.6
    lowfreq  174   258  0.471  0.728   +0.284   17.2

Usage: python experiments/attack_teeth.py [--seconds 90] [--threads 1] [--eval-faces 300]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fmix.attacks import (
    AttackConfig,
    MaskerProtector,
    ReconstructionAttack,
    evaluate_reconstruction,
    image_grid,
    one_per_identity,
)
from fmix.data.faces import load_faces, read_face_list
from fmix.data.images import write_png_atomic
from fmix.freq import DC_CHANNELS, FrequencyMask, RunningChannelStats, block_dct, protected_to_image, select_channels
from fmix.masker.build import build_masker, faces_to_tensor
from fmix.masker.module import FixedKPolicy, Masker
from fmix.metrics import free_floor, ssim
from fmix.params import ExportParams

REPO = Path(__file__).resolve().parents[1]


def load_split(csv: Path, aligned: Path, limit: int | None) -> tuple[torch.Tensor, list[str]]:
    rows = read_face_list(csv)
    if limit is not None and limit < len(rows):  # spread over the file (identities are grouped)
        rows = [rows[round(i * len(rows) / limit)] for i in range(limit)]
    faces, loaded, skipped = load_faces([aligned / path for path, _ in rows], size=112)
    if skipped:
        print(f"skipped {len(skipped)} unreadable faces of {csv.name}")
    return faces_to_tensor(faces).to(torch.uint8), [rows[i][1] for i in loaded]


def maskers(stats: RunningChannelStats) -> dict[str, Masker]:
    policy = FixedKPolicy(2, (2,))
    out = {}
    everything = torch.arange(192)
    out["all"] = Masker(
        FrequencyMask(everything, stats.mean[everything].float(), stats.std[everything].float(), allow_dc=True),
        1,
        policy,
        (2,),
    )
    kept = select_channels(drop=DC_CHANNELS)
    out["dc"] = Masker(FrequencyMask(kept, *(s.float() for s in stats.stats(kept))), 1, policy, (2,))
    out["lowfreq"] = build_masker(ExportParams(), stats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aligned", type=Path, default=REPO / "data" / "aligned")
    parser.add_argument("--splits", type=Path, default=REPO / "data" / "splits")
    parser.add_argument("--train-faces", type=int, default=None, help="public faces to train on (default: all)")
    parser.add_argument("--eval-faces", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=90.0, help="CPU seconds of training per masker")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--settings", default="all,dc,lowfreq")
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ssim-weight", type=float, default=1.0)
    parser.add_argument("--adv-weight", type=float, default=0.01)
    parser.add_argument("--adv-warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=Path("/tmp/attack_grid.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    public, public_ids = load_split(args.splits / "public.csv", args.aligned, args.train_faces)
    private, private_ids = load_split(args.splits / "private_train.csv", args.aligned, args.eval_faces)
    names = sorted(set(public_ids))
    labels = torch.tensor([names.index(n) for n in public_ids])
    print(
        f"public (attacker) faces: {len(public)} of {len(set(public_ids))} identities; private (evaluation) faces: {len(private)} of {len(set(private_ids))} identities"
    )
    stats = RunningChannelStats()
    for start in range(0, len(public), 256):
        stats.update(block_dct(public[start : start + 256].float(), 1))
    mean_face = public.float().mean(dim=0)
    originals = private.float()
    floor = free_floor(mean_face, originals)
    print(f"free floor (mean public face vs private faces): SSIM {floor.mean():.3f}")

    config = AttackConfig(
        width=args.width,
        batch_size=args.batch_size,
        lr=args.lr,
        ssim_weight=args.ssim_weight,
        adv_weight=args.adv_weight,
        adv_warmup=args.adv_warmup,
        seed=args.seed,
    )
    print(f"attack: {config.to_dict()}; budget {args.seconds:.0f} CPU s per masker, {args.threads} thread(s)")
    shown = one_per_identity(private_ids, 8)
    rows = [originals[shown]]
    print(
        f"{'masker':8} {'K':>4} {'steps':>6} {'cpu_s':>6} {'S1':>6} {'S3':>6} {'floor':>6} {'S3-fl':>6} {'PSNR':>6} {'l1_end':>7}"
    )
    for name, masker in maskers(stats).items():
        if name not in args.settings.split(","):
            continue
        protector = MaskerProtector(masker)
        attack = ReconstructionAttack(config).fit(public, protector, labels, seconds=args.seconds)
        with torch.no_grad():
            protected = masker.masked(originals)
        started = time.process_time()
        recon = attack.invert(protected)
        scores = evaluate_reconstruction(recon, originals, mean_face=mean_face).summary()
        view = protected_to_image(protected, masker.mask, 1)
        s1 = ssim(view, originals).mean().item()
        l1_end = sum(h["l1"] for h in attack.history[-50:]) / len(attack.history[-50:])
        print(
            f"{name:8} {masker.mask.num_kept:4d} {len(attack.history):6d} {attack.history[-1]['seconds']:6.1f} {s1:6.3f} {scores['S3']:6.3f} "
            f"{scores['floor']:6.3f} {scores['S3_minus_floor']:+6.3f} {scores['psnr']:6.2f} {l1_end:7.4f}  (invert {time.process_time() - started:.1f} s)",
            flush=True,
        )
        rows += [view[shown], recon[shown]]
    write_png_atomic(image_grid(rows), args.grid)
    print(f"grid: {args.grid} (row 1 originals; then per masker: protected view, reconstruction)")


if __name__ == "__main__":
    main()
