#!/usr/bin/env bash
# The release's own noise (mask.noise) against a strong attacker, and what a third party trains from it.
#
# Makes: docs/results/2026-12-05-release-noise.md (and the closing notes of the worst-case and
# data-at-scale issues).
#
# On a finished default run (RUN: its aligned faces, split, masker_adaptive.onnx and the judge's gallery):
#   prior:   the attackers' un-mixed inverter trained PRIOR_STEPS steps on the public faces (the
#            pipeline's is 300: its control names about 0.3 of the people; this one more than 0.5);
#   public:  a third party's warm start: fmix train (mixup, k 2: a network that reads |x| of un-mixed,
#            then mixed, masked faces) on the public faces under the release's masker, one face per
#            identity (of those with 3 or more) held out to validate;
# then per option NOISE[:BUDGET][/PHOTOS][@DRAW] (DRAW: another release of the same option): fmix mask of the private training faces at mask.noise NOISE (and
# mask.max_per_identity BUDGET, mask.noise_photos PHOTOS; the same masker, trained at mixing.noise 0.75: the in-loop model does
# not change), fmix attack aggregate with the strong prior, and (unless TRAIN=0) fmix train --release
# cold and warm (--init public), both --calibrate on the public faces, evaluated on RUN's held-out pairs.
# Usage: [TRAIN=0] bash experiments/release_noise.sh RUN WORK_DIR [PRIOR_STEPS] [NOISE[:BUDGET][/PHOTOS][@DRAW] ...]   (from the repository root)
set -euo pipefail
run=$(cd "$1" && pwd)
work=$2
prior_steps=${3:-1200}
shift $(( $# < 3 ? $# : 3 ))
options=("$@")
[ ${#options[@]} -gt 0 ] || options=(0.75 1.5 2.0 2.5)
epochs=16
masker=$run/models/masker_adaptive.onnx
mkdir -p "$work"
step() { echo "== $(date +%T) $*"; }
# params: RUN's, with the prior's budget in steps only, the release's noise and budget per identity.
with_params() {
  python - "$run/params.yaml" "$1" "$2" "$prior_steps" <<'EOF'
import sys

from ruamel.yaml import YAML

source, target, option, steps = sys.argv[1:]
option, _, photos = option.partition("/")
noise, _, budget = option.partition(":")
io = YAML()
params = io.load(open(source))
params["attack"].update(prior_steps=int(steps), prior_seconds=1.0e6)
params["mask"].update(
    noise=float(noise), max_per_identity=int(budget) if budget else None, noise_photos=int(photos) if photos else None
)
io.dump(params, open(target, "w"))
EOF
}
with_params "$work/params.yaml" 1.5
# The public faces as an aligned folder of their own (links), for --calibrate.
python - "$run/data/aligned" "$run/data/splits/public.csv" "$work/public_faces" <<'EOF'
import csv
import os
import sys
from pathlib import Path

aligned, public, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
for row in csv.DictReader(open(public)):
    link = out / row["path"]
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(aligned / row["path"], link)
EOF
step prior; [ -f "$work/prior.pt" ] || fmix attack prior "$masker" "$run/data/aligned" "$run/data/splits" "$work/prior.pt" -p "$work/params.yaml"
step public
# The public faces as a split of their own.
python - "$run/data/splits/public.csv" "$work/public_splits" <<'EOF'
import csv
import sys
from collections import defaultdict
from pathlib import Path

rows = list(csv.DictReader(open(sys.argv[1])))
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
by_identity = defaultdict(list)
for row in rows:
    by_identity[row["identity"]].append(row["path"])
labels = {name: label for label, name in enumerate(sorted(by_identity))}
train, val = [], []
for name, paths in sorted(by_identity.items()):
    held = paths[-1:] if len(paths) >= 3 else []
    train += [(path, name, labels[name]) for path in paths if path not in held]
    val += [(path, name, labels[name]) for path in held]
for file, part in (("private_train.csv", train), ("private_val.csv", val)):
    with open(out / file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "identity", "label"))
        writer.writerows(part)
print(f"public split: {len(train)} training and {len(val)} validation faces of {len(labels)} people")
EOF
fmix train "$run/data/aligned" "$work/public_splits" "$work/public" --masker "$masker" -p "$work/params.yaml" \
  --method mixup --k 2 --epochs "$epochs" -q --resume
fmix evaluate "$work/public/model.pt" "$run/data/aligned" "$run/data/splits" "$work/public.json" -p "$work/params.yaml"
public=$work/public/model.pt
for option in "${options[@]}"; do
  name=${option/:/-budget}
  name=${name/\//-photos}
  out="$work/noise${name/@/-draw}"
  option=${option%@*}
  noise=$option
  mkdir -p "$out"
  with_params "$out/params.yaml" "$option"
  step "noise $noise: release"
  if [ ! -f "$out/release/summary.json" ]; then
    rm -rf "$out/release" "$out/ledger.jsonl"
    fmix mask "$run/data/aligned" "$out/release" --masker "$masker" --faces "$run/data/splits/private_train.csv" \
      --ledger "$out/ledger.jsonl" -p "$out/params.yaml" -q
  fi
  step "noise $noise: attacks"
  fmix attack aggregate "$out/release" "$masker" "$run/data/aligned" "$run/data/splits" "$out/aggregate" \
    --ledger "$out/ledger.jsonl" --gallery "$run/models/judge/gallery.npz" --prior "$work/prior.pt" -p "$out/params.yaml"
  [ "${TRAIN:-1}" = 0 ] && continue
  for start in cold warm; do
    step "noise $noise: train on the release ($start)"
    init=()
    [ "$start" = warm ] && init=(--init "$public")
    fmix train --release "$out/release" "$out/$start" --masker "$masker" -p "$out/params.yaml" --epochs "$epochs" \
      --calibrate "$work/public_faces" "${init[@]}" -q --resume
    fmix evaluate "$out/$start/model.pt" "$run/data/aligned" "$run/data/splits" "$out/$start.json" -p "$out/params.yaml"
  done
done
python - "$work" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
verification = lambda path: json.loads(Path(path).read_text())["verification"]
public = verification(work / "public.json")
print(f"public faces alone (the warm start): {public['accuracy_mean']:.3f} ± {public['accuracy_std']:.3f}")
print("| release noise[-budget] | faces released | control | single | templates (heaviest) | weighted | worst stratum | trained on it: cold | warm |")
print("|---|---|---|---|---|---|---|---|---|")
for out in sorted(p for p in work.glob("noise*") if (p / "aggregate" / "aggregate.json").exists()):
    agg = json.loads((out / "aggregate" / "aggregate.json").read_text())
    attacks, head = agg["attacks"], agg["headline"]
    trained = [verification(out / f"{start}.json") for start in ("cold", "warm") if (out / f"{start}.json").exists()]
    print(
        f"| {out.name[5:]} | {json.loads((out / 'release' / 'summary.json').read_text())['faces_used']} | {agg['controls']['positive']['top1']:.2f} | {attacks['single']['top1']:.2f} | "
        f"{attacks['heaviest']['top1']:.2f} | {attacks['weighted']['top1']:.2f} | "
        f"{head['worst_stratum']} {head['worst_stratum_top1']:.3f} | "
        + " | ".join(f"{v['accuracy_mean']:.3f} ± {v['accuracy_std']:.3f}" for v in trained)
        + " |"
    )
EOF
