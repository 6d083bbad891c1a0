#!/usr/bin/env bash
# Does a release train a useful model? The in-loop model against one trained on the release alone.
#
# Makes: docs/results/2026-12-05-training-on-a-release.md (and the closing note of the data-at-scale issue).
#
# On the LFW identities with at least MIN_IMAGES photos (default 5: 423 people; the quick
# profile's split then has 254 private people), the quick profile's recipe otherwise:
#   align -> split -> export -> train adaptive (the in-loop model) -> export its policy ->
#   fmix mask the private training faces (the release) -> fmix train --release (same train section)
#   -> fmix evaluate both on the same held-out pairs (and the raw-feature floor).
# Usage: bash experiments/train_on_release.sh [WORK_DIR] [MIN_IMAGES]   (from the repository root)
set -euo pipefail
work=${1:-/tmp/fmix-release-training}
min_images=${2:-5}
images=$(python -c "from fmix.data.root import data_root; print(data_root() / 'lfw' / 'images_deepfunneled')")
mkdir -p "$work"
params="$work/params.yaml"
cp params.yaml "$params"
python - "$params" "$min_images" <<'EOF'
import sys
from pathlib import Path

from ruamel.yaml import YAML

yaml = YAML()
path = Path(sys.argv[1])
params = yaml.load(path)
params["align"]["min_images"] = int(sys.argv[2])
yaml.dump(params, path)
EOF
step() { echo "== $(date +%T) $*"; }
timed() { local start=$SECONDS; "$@"; echo "   $(( SECONDS - start )) s"; }
step align; [ -f "$work/aligned/summary.json" ] || fmix align "$images" "$work/aligned" -p "$params" -q
step split; fmix split "$work/aligned" "$work/splits" -p "$params"
step export; fmix export "$work/aligned" "$work/splits/public.csv" "$work/masker.onnx" -p "$params"
step train adaptive
timed fmix train "$work/aligned" "$work/splits" "$work/adaptive" --masker "$work/masker.onnx" -p "$params" --method adaptive -q --resume
step export policy
fmix export "$work/aligned" "$work/splits/public.csv" "$work/masker_adaptive.onnx" --policy "$work/adaptive/model.pt" -p "$params"
step mask
fmix mask "$work/aligned" "$work/release" --masker "$work/masker_adaptive.onnx" --faces "$work/splits/private_train.csv" \
  --ledger "$work/ledger.jsonl" -p "$params" -q
step train on the release
timed fmix train --release "$work/release" "$work/on_release" --masker "$work/masker_adaptive.onnx" -p "$params" -q --resume
step evaluate
fmix evaluate "$work/adaptive/model.pt" "$work/aligned" "$work/splits" "$work/adaptive.json" -p "$params"
fmix evaluate "$work/on_release/model.pt" "$work/aligned" "$work/splits" "$work/on_release.json" -p "$params"
