#!/usr/bin/env bash
# The command a lent GPU machine runs (docs/PERFORMANCE.md, "GPU readiness check"), with
# .gpu-carry carried (scripts/gpu_prep.sh fills it here). Its image has torch, Lightning,
# torchmetrics, torchvision, numpy, scipy, matplotlib, pytest and PyYAML, but no Hydra, OmegaConf,
# antlr4 or wandb, no network and no package index. Nothing here installs from an index or
# installs this package: the carried pure-Python wheels go to a folder on PYTHONPATH, and so does
# src/. No `set -e`: a step that fails loses only itself.
#
#   bash scripts/gpu_session.sh [checks|full] [--dry-run] [more scripts/gpu_check.py arguments]
#
# checks (the default): env, train_step, fid, gpu_tests, train_course, flops, bench, within
#        GPU_DEADLINE seconds (default 330) of this script's start, for a 360-s call.
# full:  env and full_run (python train.py experiment=course_karras logger=csv, its FID included).
# Results go to $OUT (default runs/gpu_session), written as they come: session.log (everything
# printed), gpu_check.json or full_run.json, the card's markdown, and gpu_tests.xml (checks) or
# full_run_summary.json and full_run_final.png (full): at most 5 files, none in subfolders.
cd "$(dirname "$0")/.." || exit 2
t0=$SECONDS
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_session}
CARRY=${GPU_CARRY:-.gpu-carry}
SITE=${GPU_SITE:-/tmp/diffexp-gpu-site}
SCRATCH=${GPU_SCRATCH:-/tmp/diffexp-gpu-scratch}
what=checks
case "${1:-}" in checks|full) what=$1; shift ;; esac
mkdir -p "$OUT" "$SCRATCH" || exit 2
exec > >(tee -a "$OUT/session.log") 2>&1
echo "[gpu-session] $what on $(hostname) at $(date -Is); $("$PY" --version 2>&1) at $(command -v "$PY")"

# the carried wheels, without an index, their dependencies or an editable install of this package
[ -d "$CARRY/wheels" ] || echo "[gpu-session] warning: $CARRY/wheels is missing (run scripts/gpu_prep.sh here and carry $CARRY)"
rm -rf "$SITE" && mkdir -p "$SITE"
if ! PIP_NO_INDEX=1 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --target "$SITE" "$CARRY"/wheels/*.whl; then
    echo "[gpu-session] pip --target failed: unpacking the wheels instead"
    for w in "$CARRY"/wheels/*.whl; do
        "$PY" -m zipfile -e "$w" "$SITE" || echo "[gpu-session] could not unpack $w"
    done
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export DIFFEXP_DATA_ROOT="$PWD/$CARRY/data" DIFFEXP_CACHE_DIR="$SCRATCH/cache"
export WANDB_MODE=disabled MPLBACKEND=Agg PYTHONUNBUFFERED=1 PIP_NO_INDEX=1
echo "[gpu-session] wheels in $SITE after $((SECONDS - t0)) s: $(ls "$SITE" | tr '\n' ' ')"

deadline=${GPU_DEADLINE:-330}
case $what in
    checks) steps=env,train_step,fid,gpu_tests,train_course,flops,bench; json=gpu_check.json ;;
    full) steps=env,full_run; json=full_run.json ;;
esac
"$PY" scripts/gpu_check.py --only "$steps" --deadline "$((deadline - (SECONDS - t0)))" \
    --out "$OUT/$json" --md-dir "$OUT" --logs-dir "$SCRATCH/logs" "$@"
rc=$?
echo "[gpu-session] $what done in $((SECONDS - t0)) s, exit $rc; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
