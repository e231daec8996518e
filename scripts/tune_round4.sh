#!/usr/bin/env bash
# Fourth round of the quickstart search (docs/TUNING.md, "Fourth round"): neighbours of the p_std 1.0
# quickstart, two one-thread trainings side by side on a 2-core CPU, each scored at n = 512
# (DPM-Solver++(2M), 10 steps) by its end-of-run evaluation, so that every cell compares with the
# third round's lr3e-3_b099_pstd1.0 (the same training). Usage: scripts/tune_round4.sh STAGE [OUT]
# (default OUT runs/qs4)
set -euo pipefail
STAGE=$1
OUT=${2:-runs/qs4}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
# the quickstart as the third round left it (p_std 1.0, lr 3e-3, beta2 0.99), pinned so that the
# cells stay comparable if experiment=quickstart moves on, scored like the third round's cells
BASE=(experiment=quickstart schedule=karras schedule.p_mean=-1.2 schedule.p_std=1.0 objective=v
      optim.lr=3e-3 'optim.betas=[0.9,0.99]' data.subset=36000 data.scale=0.5 sampler.steps=10)
cell() {  # cell NAME OVERRIDES...: one training of BASE with the overrides, scored at n = 512
    local name=$1; shift
    "$PY" train.py "${BASE[@]}" logger=csv eval.n_samples=512 eval.diagnostics=false \
        "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
case $STAGE in
  # the log-normal's spread narrowed further (1.2 -> 1.0 was the third round's largest step)
  18) cell pstd0.8 schedule.p_std=0.8 &
      cell pstd0.6 schedule.p_std=0.6 & ;;
  # where the training noise levels sit at p_std 1.0: the log-normal's centre either side of -1.2
  19) cell pmean-1.0 schedule.p_mean=-1.0 &
      cell pmean-1.4 schedule.p_mean=-1.4 & ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
wait
