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
qq() {  # qq NAME OVERRIDES...: experiment=quickstart as committed, 4,800 steps, scored as make run
    local name=$1; shift
    "$PY" train.py experiment=quickstart +trainer.max_steps=4800 logger=csv "hydra.run.dir=$OUT/$name" \
        "$@" > "$OUT/$name.log" 2>&1
}
case $STAGE in
  # bf16 autocast in training (the end-of-run evaluation samples as the run's precision says)
  bf16a) qs bf16_seed1 trainer.precision=bf16-mixed seed=1 &
         qs bf16_seed2 trainer.precision=bf16-mixed seed=2 & ;;
  # every training image (58,000 after the hold-out: one epoch of 3,625 steps), bf16, what a
  # machine with native bf16 could train in the 10 minutes
  full58) qs bf16_58k_seed0 trainer.precision=bf16-mixed data.subset=null seed=0 &
          qs bf16_58k_seed1 trainer.precision=bf16-mixed data.subset=null seed=1 & ;;
  # make run on the idle cores: the committed quickstart (bf16 where native, 380 s budget), and
  # the same in fp32 (what a CPU without bf16 instructions runs)
  makerun) unset OMP_NUM_THREADS; { time make run; } > "$OUT/makerun_r5.log" 2>&1
           cp -r "$(ls -td runs/train/*_quickstart/ | head -1)" "$OUT/makerun_r5" ;;
  makerun_fp32) unset OMP_NUM_THREADS
           { time make run ARGS=trainer.precision=32-true; } > "$OUT/makerun_r5_fp32.log" 2>&1
           cp -r "$(ls -td runs/train/*_quickstart/ | head -1)" "$OUT/makerun_r5_fp32" ;;
  # the quickstart's training noise at a fixed step count near make run's (4,800 steps, 1.32
  # epochs), one thread each, side by side, scored as make run scores
  seeds12) qq seed1_4800 seed=1 & qq seed2_4800 seed=2 & ;;
  seeds34) qq seed3_4800 seed=3 & qq seed4_4800 seed=4 & ;;
  seeds05) qq seed0_4800 seed=0 & qq seed5_4800 seed=5 & ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
wait
