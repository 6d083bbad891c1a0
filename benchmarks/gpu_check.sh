#!/usr/bin/env bash
# GPU check of every heavy stage (see benchmarks/gpu_check.py): run from anywhere on a CUDA machine
# with the repository and ../shared/data; about 8 minutes. Without a GPU it says so and exits 0.
# Python: $FMIX_PYTHON, else the active environment's python (python3 when there is no python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${FMIX_PYTHON:-$(command -v python || command -v python3)}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
