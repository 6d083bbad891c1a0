#!/usr/bin/env bash
# A release that holds (issue 30, item 3): mixing options against the release attacks, and what they cost.
#
# Makes: docs/results/2026-12-05-release-options.md (and the closing note of the worst-case issue).
#
# On a finished default run (RUN: its data/aligned, data/splits, models/masker.onnx and the judge's
# models/judge/{gallery.npz,attack_prior.pt}), for each option: the in-loop `adaptive` model trained with
# the option's mixing (its utility: verification on the held-out pairs) -> its masker -> `fmix mask` of
# the private training faces (the release) -> `fmix attack aggregate` with the attackers' prior (single
# samples and per-label templates of the 100 most represented people, among all private people, with the
# un-mixed control). An option with a mask budget reuses the model and masker of the option it names.
# Usage: bash experiments/release_options.sh RUN [WORK_DIR] [OPTION ...]   (from the repository root)
set -euo pipefail
run=$(cd "$1" && pwd)
work=${2:-/tmp/fmix-release-options}
shift $(( $# < 2 ? $# : 2 ))
# name -> "mixing overrides (YAML flow) | mask overrides | the option whose model it reuses"
declare -A OPTIONS=(
  [default]="{} | {} |"
  [noise1.5]="{noise: 1.5} | {} |"
  [noise1.5-budget3]="{noise: 1.5} | {max_per_identity: 3} | noise1.5"
  [noise2]="{noise: 2.0} | {} |"
  [k3-cap0.4]="{k_values: [3, 4, 5, 6], cap: 0.4} | {} |"
  [k3-cap0.4-noise1.5]="{k_values: [3, 4, 5, 6], cap: 0.4, noise: 1.5} | {} |"
  [k3-cap0.4-noise1.5-budget3]="{k_values: [3, 4, 5, 6], cap: 0.4, noise: 1.5} | {max_per_identity: 3} | k3-cap0.4-noise1.5"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default noise1.5 noise1.5-budget3 noise2 k3-cap0.4 k3-cap0.4-noise1.5 k3-cap0.4-noise1.5-budget3)
step() { echo "== $(date +%T) $*"; }
for name in "${names[@]}"; do
  IFS='|' read -r mixing mask reuse <<<"${OPTIONS[$name]}"
  reuse=$(echo "$reuse" | xargs)
  out="$work/$name"
  mkdir -p "$out"
  python - "$run/params.yaml" "$out/params.yaml" "$mixing" "$mask" <<'EOF'
import sys

import yaml
from ruamel.yaml import YAML

source, target, mixing, mask = sys.argv[1:]
io = YAML()
params = io.load(open(source))
for section, text in (("mixing", mixing), ("mask", mask)):
    params[section].update(yaml.safe_load(text))
io.dump(params, open(target, "w"))
EOF
  model="$out/adaptive"
  masker="$out/masker_adaptive.onnx"
  if [ -n "$reuse" ]; then
    model="$work/$reuse/adaptive"
    masker="$work/$reuse/masker_adaptive.onnx"
    cp "$work/$reuse/verification.json" "$out/verification.json"  # the same in-loop model
  else
    step "$name: train adaptive"
    fmix train "$run/data/aligned" "$run/data/splits" "$model" --masker "$run/models/masker.onnx" -p "$out/params.yaml" \
      --method adaptive -q --resume
    fmix evaluate "$model/model.pt" "$run/data/aligned" "$run/data/splits" "$out/verification.json" -p "$out/params.yaml"
    fmix export "$run/data/aligned" "$run/data/splits/public.csv" "$masker" --policy "$model/model.pt" -p "$out/params.yaml"
  fi
  step "$name: release and attacks"
  rm -rf "$out/release" "$out/ledger.jsonl"
  fmix mask "$run/data/aligned" "$out/release" --masker "$masker" --faces "$run/data/splits/private_train.csv" \
    --ledger "$out/ledger.jsonl" -p "$out/params.yaml" -q
  fmix attack aggregate "$out/release" "$masker" "$run/data/aligned" "$run/data/splits" "$out/aggregate" \
    --ledger "$out/ledger.jsonl" --gallery "$run/models/judge/gallery.npz" --prior "$run/models/judge/attack_prior.pt" \
    -p "$out/params.yaml"
done
python - "$work" <<'EOF'
import csv
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
print("| option | faces released | verification ± fold std (floor) | control | single | templates (heaviest) | weighted | worst stratum |")
print("|---|---|---|---|---|---|---|---|")
for out in sorted(p for p in work.iterdir() if (p / "aggregate" / "aggregate.json").exists()):
    agg = json.loads((out / "aggregate" / "aggregate.json").read_text())
    ver = json.loads((out / "verification.json").read_text())
    with open(out / "release" / "index.csv", newline="") as handle:
        faces = sum(len(row["labels"].split()) for row in csv.DictReader(handle))
    attacks, head = agg["attacks"], agg["headline"]
    print(
        f"| {out.name} | {faces} | {ver['verification']['accuracy_mean']:.3f} ± {ver['verification']['accuracy_std']:.3f} "
        f"({ver['raw_feature_floor']['accuracy_mean']:.3f}) | {agg['controls']['positive']['top1']:.2f} | "
        f"{attacks['single']['top1']:.2f} | {attacks['heaviest']['top1']:.2f} | {attacks['weighted']['top1']:.2f} | "
        f"{head['worst_stratum']} {head['worst_stratum_top1']:.2f} |"
    )
EOF
