#!/usr/bin/env bash
# Third round of the quickstart search (docs/TUNING.md, "Third round"): neighbours of the v
# quickstart, two one-thread trainings side by side on a 2-core CPU, each scored at n = 512
# (DPM-Solver++(2M), 10 steps) by its end-of-run evaluation; diffexp-report / tuning_table gather
# them. Usage: scripts/tune_round3.sh STAGE [OUT]   (default OUT runs/qs3)
set -euo pipefail
STAGE=$1
OUT=${2:-runs/qs3}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
cell() {  # cell NAME OVERRIDES...: one training of experiment=quickstart with the overrides
    local name=$1; shift
    "$PY" train.py experiment=quickstart logger=csv eval.n_samples=512 eval.diagnostics=false \
        "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
case $STAGE in
  11) cell betas099 'optim.betas=[0.9,0.99]' &
      cell lr3e-3 optim.lr=3e-3 & ;;
  12) cell lr6e-3 optim.lr=6e-3 &
      cell lr3e-3_b099 optim.lr=3e-3 'optim.betas=[0.9,0.99]' & ;;
  13) cell lr3e-3_b095 optim.lr=3e-3 'optim.betas=[0.9,0.95]' &
      cell lr3e-3_b099_pct01 optim.lr=3e-3 'optim.betas=[0.9,0.99]' optim.pct_start=0.1 & ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
wait
