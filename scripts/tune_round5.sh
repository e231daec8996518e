#!/usr/bin/env bash
# Fifth round of the quickstart search (docs/TUNING.md, "Fifth round"): bf16 autocast on the CPU
# and what its saved time buys, every cell scored as make run scores it (n = 2,048,
# DPM-Solver++(2M) 14 steps), two one-thread trainings side by side on a 2-core CPU.
# Usage: scripts/tune_round5.sh STAGE [OUT] (default OUT runs/qs5)
set -euo pipefail
STAGE=$1
OUT=${2:-runs/qs5}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
# the fourth round's quickstart (fp32), pinned so that the cells stay comparable if
# experiment=quickstart moves on
BASE=(experiment=quickstart trainer.precision=32-true schedule.p_mean=-1.2 schedule.p_std=1.0
      data.subset=36000 optim.lr=3e-3 'optim.betas=[0.9,0.99]' sampler.steps=14)
qs() {  # qs NAME OVERRIDES...: one training of BASE with the overrides, scored as make run
    local name=$1; shift
    "$PY" train.py "${BASE[@]}" logger=csv "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
case $STAGE in
  # bf16 autocast in training (the end-of-run evaluation samples as the run's precision says)
  bf16a) qs bf16_seed1 trainer.precision=bf16-mixed seed=1 &
         qs bf16_seed2 trainer.precision=bf16-mixed seed=2 & ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
wait
