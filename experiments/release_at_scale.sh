#!/usr/bin/env bash
# The release at 1,511 private people (the cpu profile's split): its worst case and what a third party trains from it.
#
# Makes: the 1,511-people section of docs/results/2026-12-05-release-noise.md.
#
# From a finished default run (RUN: its aligned faces, align.min_images 2, and params.yaml), with the
# cpu profile's split (split.private_extra_min_images 2: 1,511 private people, 5,960 training faces) and
# its 6 epochs: fmix split -> export -> train adaptive (the in-loop model) -> evaluate -> export its
# policy -> the judge's gallery of the 5,960 faces; then experiments/release_noise.sh on that run: the
# release at the defaults attacked with the strong prior (PRIOR, a prior of the same masking, is reused
# when given) and trained on, cold and warm (PUBLIC: the warm start's folder, reused when given).
# Usage: bash experiments/release_at_scale.sh RUN WORK_DIR [PRIOR] [PUBLIC]   (from the repository root)
set -euo pipefail
run=$(cd "$1" && pwd)
work=$2
scale=$work/run
mkdir -p "$scale/data" "$scale/models/judge" "$work/noise"
ln -sfn "$run/data/aligned" "$scale/data/aligned"
python - "$run/params.yaml" "$scale/params.yaml" <<'EOF'
import sys

from ruamel.yaml import YAML

io = YAML()
params = io.load(open(sys.argv[1]))
params["split"]["private_extra_min_images"] = 2
params["train"]["epochs"] = 6
io.dump(params, open(sys.argv[2], "w"))
EOF
[ -n "${3:-}" ] && cp "$3" "$work/noise/prior.pt"
[ -n "${4:-}" ] && cp -r "$4/public" "$4/public_splits" "$4/public.json" "$work/noise/"
step() { echo "== $(date +%T) $*"; }
p=(-p "$scale/params.yaml")
step split; fmix split "$scale/data/aligned" "$scale/data/splits" "${p[@]}"
step export; fmix export "$scale/data/aligned" "$scale/data/splits/public.csv" "$scale/models/masker.onnx" "${p[@]}"
step "judge gallery (beside the training)"
fmix attack gallery "$scale/data/aligned" "$scale/data/splits" "$scale/models/judge/gallery.npz" "${p[@]}" > "$work/gallery.log" 2>&1 &
gallery=$!
step train adaptive
fmix train "$scale/data/aligned" "$scale/data/splits" "$scale/adaptive" --masker "$scale/models/masker.onnx" "${p[@]}" \
  --method adaptive -q --resume
fmix evaluate "$scale/adaptive/model.pt" "$scale/data/aligned" "$scale/data/splits" "$work/adaptive.json" "${p[@]}"
fmix export "$scale/data/aligned" "$scale/data/splits/public.csv" "$scale/models/masker_adaptive.onnx" \
  --policy "$scale/adaptive/model.pt" "${p[@]}"
wait $gallery
step release
bash experiments/release_noise.sh "$scale" "$work/noise" 1200 2.5/5
