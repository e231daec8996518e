#!/usr/bin/env bash
# On a lent GPU machine (its image has torch, Lightning and torchmetrics but no internet): install
# the wheels and data that scripts/gpu_prep.sh put in .gpu-carry/, install this package without
# touching its dependencies, run the GPU check, and copy its JSON and markdown into $OUT (the
# folder the device tool brings back). Extra arguments go to scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .gpu-carry/wheels ] || { echo "error: .gpu-carry/ is missing: run scripts/gpu_prep.sh here and carry .gpu-carry" >&2; exit 2; }
"$PY" -m pip install --quiet --no-index --find-links .gpu-carry/wheels hydra-core omegaconf
"$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
export DIFFEXP_DATA_ROOT="$PWD/.gpu-carry/data" DIFFEXP_CACHE_DIR="$PWD/.gpu-carry/cache"
export WANDB_MODE=disabled MPLBACKEND=Agg
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
rc=0
"$PY" scripts/gpu_check.py --out "$out/gpu_check.json" "$@" || rc=$?
cp docs/gpu_check/*.md "$out"/ 2>/dev/null || true
exit $rc
