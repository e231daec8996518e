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
qs() {  # qs NAME OVERRIDES...: one training of experiment=quickstart as committed, scored as make run
    local name=$1; shift
    "$PY" train.py experiment=quickstart logger=csv "hydra.run.dir=$OUT/qs_$name" "$@" \
        > "$OUT/qs_$name.log" 2>&1
}
case $STAGE in
  # the log-normal's spread narrowed further (1.2 -> 1.0 was the third round's largest step)
  18) cell pstd0.8 schedule.p_std=0.8 &
      cell pstd0.6 schedule.p_std=0.6 & ;;
  # where the training noise levels sit at p_std 1.0: the log-normal's centre either side of -1.2
  19) cell pmean-1.0 schedule.p_mean=-1.0 &
      cell pmean-1.4 schedule.p_mean=-1.4 & ;;
  # depth against width at about the same cost per image (two residual blocks down and three up
  # per level at 0.75x the widths: 5/3 x 0.5625 = 0.94x the convolutions' multiply-adds), and a
  # higher peak rate now that beta2 0.99 steadies Adam
  # (its blocks2_w12 stopped at the start: widths must be multiples of the attention's head_dim,
  # 16; stage 21 runs it with head_dim 12)
  20) cell blocks2_w12 model.blocks=2 'model.widths=[12,24,48]' &
      cell lr4e-3 optim.lr=4e-3 & ;;
  # the depth cell with 12-channel heads, and attention at 14x14 as well as at 7x7 (about 8% more
  # multiply-adds)
  21) cell blocks2_w12_hd12 model.blocks=2 'model.widths=[12,24,48]' model.head_dim=12 &
      cell attn12 'model.attn_levels=[1,2]' & ;;
  # the peak rate the other way (4e-3 lost), and cosine annealing from the peak with no warm-up
  # (and no beta1 cycling) in place of the one-cycle schedule
  22) cell lr2e-3 optim.lr=2e-3 &
      cell cosine optim.lr_schedule=cosine & ;;
  # stratified training noise levels (train.stratified_noise: one per sixteenth of the log-normal
  # in every batch), and the base itself with training seed 1, for the proxy's training noise
  23) cell stratified train.stratified_noise=true &
      cell base_seed1 seed=1 & ;;
  # scored as make run scores (n = 2,048, DPM++(2M) 14 steps), one thread each, side by side: the
  # quickstart's training noise with more seeds, and the proxy's best cell (p_mean -1.0) at full
  # size, both against the quickstart's three trainings (11.06, 12.38, 11.83)
  full1) qs seed3 seed=3 &
      qs pmean-1.0_seed0 schedule.p_mean=-1.0 & ;;
  full2) qs seed4 seed=4 &
      qs pmean-1.0_seed1 schedule.p_mean=-1.0 seed=1 & ;;
  # the quickstart as make run on the idle cores (after the floor and radii caches; full1 has
  # filled them for seed 0 at n = 2,048 in this cache directory)
  final4) unset OMP_NUM_THREADS; { time make run; } > "$OUT/makerun_r4.log" 2>&1
      cp -r "$(ls -td runs/train/*_quickstart/ | head -1)" "$OUT/makerun_r4" ;;
  # no training: the quickstart's make run model (seed 0, p_std 1.0) under other sampling grids and
  # with D clamped, scored as make run scores it (n = 2,048, DPM++(2M) 14 steps, sampling seed 0,
  # so every cell draws the same starting noise; make run's own grid scored 11.055)
  grid) CK=runs/qs3/makerun_34k_s14_pstd1.0/checkpoints/last.ckpt
      EV=(eval.py -m "ckpt=$CK" sampler=dpmpp_2m sampler.steps=14 eval.n_samples=2048 eval.floor=false
          eval.diagnostics=false eval.batch_size=64 logger=none)
      "$PY" "${EV[@]}" grid=karras grid.rho=5,10 "hydra.sweep.dir=$OUT/grid_rho" \
          > "$OUT/grid_rho.log" 2>&1 &
      "$PY" "${EV[@]}" grid=karras grid.sigma_max=20 sampler.clip_denoised=false,true \
          "hydra.sweep.dir=$OUT/grid_smax20_clip" > "$OUT/grid_smax20_clip.log" 2>&1 & ;;
  *) echo "unknown stage $STAGE" >&2; exit 2 ;;
esac
wait
