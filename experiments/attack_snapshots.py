"""How much does the inversion network's last snapshot swing? S4 of the snapshot and of its moving average.

Makes: docs/attacks.md, "The attackers' budget" and "The moving average of the inversion networks"
(S4 of the snapshot against its moving average, by step).

Trains one white-box attacker (as ``fmix attack``, with the run's ``attack`` section: network,
seed, judge) on a pipeline run's protection and scores, every ``--every`` steps from ``--from-step``, the generator's current
weights and their moving average (``AttackConfig.ema_decay``), side by side on the same faces.
``--mode mixed`` attacks the protection's mixes, ``--mode check`` its masking un-mixed (the attack
check), ``--mode masked`` the masking alone, as ``ppfrfd``'s attack does. The scoring time is not budgeted.

Measured here on the privacy profile's ``adaptive`` (300 s on one thread, 128 faces; steps 320,
360, ..., then the last; the same loop and seeds, run before ``on_step`` existed):

    mode    snapshot S4                                      moving average S4
    mixed   0.055 0.031 0.141 0.102 0.070 0.109 (step 490)    0.086 0.086 0.078 0.102 0.102 0.109
    check   0.359 0.281 0.289 0.383 0.383 0.445 (step 519)    0.375 0.383 0.484 0.477 0.477 0.477

Usage (from a finished pipeline run's folder):
    python experiments/attack_snapshots.py metrics/sweep/adaptive/masker.onnx --policy models/sweep/adaptive/model.pt \
        [--mode mixed] [--seconds 300] [--steps N] [--faces 128] [--every 40] [--from-step 300]
(--seconds, --steps and --faces replace the run's attack.seconds, attack.steps and attack.eval_faces.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fmix.attacks.identity import Evaluator, IdentityScorer
from fmix.attacks.reconstruction import AttackConfig, ReconstructionAttack, constituents_of, invert
from fmix.attacks.run import gallery_sources, masker_target, spread_subset
from fmix.data.faces import load_face_set
from fmix.params import AttackParams, load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("masker", type=Path)
    parser.add_argument(
        "--policy", type=Path, default=None, help="the adaptive model.pt, when the masker holds its policy"
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="the pipeline run's folder (data/, models/)")
    parser.add_argument("--mode", choices=("mixed", "check", "masked"), default="mixed")
    parser.add_argument("--seconds", type=float, default=None, help="default: the run's attack.seconds")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's attack.steps")
    parser.add_argument("--faces", type=int, default=None, help="default: the run's attack.eval_faces")
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--from-step", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root
    params = load_section(
        AttackParams, root / "params.yaml", "attack", seconds=args.seconds, steps=args.steps, eval_faces=args.faces
    )
    target = masker_target(args.masker, args.policy, mix=args.mode != "masked", black_box_k=params.black_box_k)
    protector = target.unmixed if args.mode == "check" else target.white
    public = load_face_set(root / "data/aligned", root / "data/splits/public.csv")
    gallery = load_face_set(root / "data/aligned", root / "data/splits/private_train.csv")
    private = spread_subset(gallery, params.eval_faces)
    scorer = IdentityScorer(
        params.judge,
        Evaluator(root / "models/evaluator/model.pt"),
        gallery,
        gallery_file=root / "models/judge/gallery.npz",
    )
    originals = private.float_images(torch.arange(len(private)))
    attacker, pairs = target.as_attackers_see(
        protector, protector(originals, private.labels, torch.Generator().manual_seed(params.seed + 1))
    )
    _, valid = constituents_of(originals, pairs)
    sources, labels = gallery_sources(gallery, private)[pairs.partners], private.labels[pairs.partners]

    def s4(network) -> float:
        return scorer.identified(invert(network, pairs.x), labels, valid, sources)["top1"]

    def report(step: int, attack: ReconstructionAttack) -> None:
        if step + 1 >= args.from_step and (step + 1) % args.every == 0:
            print(
                f"step {step + 1:4d}  snapshot S4 {s4(attack.generator):.3f}  moving average S4 {s4(attack.averaged):.3f}",
                flush=True,
            )

    public_images = public.images.permute(0, 3, 1, 2).contiguous()
    attack = ReconstructionAttack(AttackConfig.from_params(params)).fit(
        public_images, attacker, public.labels, steps=params.steps, seconds=params.seconds, on_step=report
    )
    print(
        f"last  {len(attack.history):4d}  snapshot S4 {s4(attack.generator):.3f}  moving average S4 {s4(attack.averaged):.3f}"
    )


if __name__ == "__main__":
    main()
