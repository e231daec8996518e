#!/usr/bin/env bash
# The quickstart search of docs/TUNING.md, stage by stage, as it was run: two single-thread jobs
# side by side on a 2-core CPU (each stage's pair at once), then the winner as `make run` on both
# cores, then the second round's `make run` candidates. Every stage job trains one model (one
# epoch, or two in one cell) and scores it at n = 512; diffexp-report gathers them all.
# Usage: scripts/tune_quickstart.sh [OUT]   (default runs/tune)
set -euo pipefail
OUT=${1:-runs/tune}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
run() {  # run NAME OVERRIDES...: one multirun folder per stage cell
    local name=$1; shift
    "$PY" train.py -m experiment=tune_quickstart logger=csv "hydra.sweep.dir=$OUT/$name" "$@" \
        > "$OUT/$name.log" 2>&1
}
mkdir -p "$OUT"
# stage 1: the objective at batch 128, scale 0.5 (eps + cosine vs karras + its log-normal sigmas;
# v and the other scales were started and stopped to save time, see TUNING.md)
run s1_eps objective=eps data.scale=0.5 &
run s1_karras objective=karras schedule=karras data.scale=0.5 &
wait
# stage 2: batch size at equal images (karras, scale 0.5; 4x / 2x the optimizer steps)
run s2_bs32 objective=karras schedule=karras data.scale=0.5 train.batch_size=32 optim.lr=2e-3 &
run s2_bs64 objective=karras schedule=karras data.scale=0.5 train.batch_size=64 optim.lr=3e-3 &
wait
# EMA vs the raw weights of the batch-32 model (no retraining)
# (the model store's folder of the s2_bs32 model: its name is a hash of the training settings)
"$PY" eval.py "ckpt=runs/models/karras-karras-1ebba698dc5e/checkpoints/last.ckpt" \
    sampler=dpmpp_2m sampler.steps=10 eval.n_samples=512 eval.use_ema=false \
    eval.diagnostics=false logger=none "hydra.run.dir=$OUT/s2_bs32_raw_weights"
# stage 3: batch 16; unpadded 28x28 images at batch 32
run s3_bs16 objective=karras schedule=karras data.scale=0.5 train.batch_size=16 optim.lr=1.5e-3 &
run s3_bs32_pad0 objective=karras schedule=karras data.scale=0.5 train.batch_size=32 \
    optim.lr=2e-3 data.pad=0 &
wait
# stage 4: lr 4e-3; scale 1 (both at batch 32, 28x28)
run s4_bs32_pad0_lr4e-3 objective=karras schedule=karras data.scale=0.5 train.batch_size=32 \
    optim.lr=4e-3 data.pad=0 &
run s4_bs32_pad0_scale1 objective=karras schedule=karras data.scale=1.0 train.batch_size=32 \
    optim.lr=2e-3 data.pad=0 &
wait
# stage 5, after the recipe was fixed, on both threads: batch 16 on 28x28
OMP_NUM_THREADS=2 run s5_bs16_pad0 objective=karras schedule=karras data.scale=0.5 \
    train.batch_size=16 optim.lr=1.5e-3 data.pad=0 '~eval.samplers.dpmpp_2m_20'
# stage 6, after the first quickstart: networks at equal wall time (batch 16, 28x28). model.patch=2
# runs level 0 on 2x2 patches (14x14x4): 1.4x the training and 2x the sampling images per second
# of unet_tiny at [32,64], so it trains all 58,000 images in about the time unet_tiny trains 38,000;
# at [48,96] it is about as fast as unet_tiny with 2.4x the weights
K6=(objective=karras schedule=karras data.scale=0.5 data.pad=0 train.batch_size=16 optim.lr=1.5e-3
    model.patch=2 'model.attn_levels=[1]' '~eval.samplers.dpmpp_2m_20')
run s6_p2_w32_58k "${K6[@]}" 'model.widths=[32,64]' data.subset=60000 &
run s6_p2_w48_38k "${K6[@]}" 'model.widths=[48,96]' &
wait
# stage 7: at [32,64] on all 58,000 images, lr 3e-3; and a narrower [24,48] net at about the same
# time, trading width for two epochs over 43,000 images
run s7_p2_w32_58k_lr3e-3 "${K6[@]}" 'model.widths=[32,64]' data.subset=60000 optim.lr=3e-3 &
run s7_p2_w24_2x43k "${K6[@]}" 'model.widths=[24,48]' model.head_dim=12 data.subset=45000 \
    train.epochs=2 &
wait
# stage 8, no training: the sampling grid of the best stage-6 model (Karras grid, rho x sigma_max),
# DPM++(2M) 10 steps, n = 512 (eval.py multiruns on its checkpoint in the model store)
CKPT6=$("$PY" -c "import glob, json; print(json.load(open(glob.glob('$OUT/s6_p2_w32_58k/*/summary.json')[0]))['checkpoint'])")
for smax in 10 80; do
    "$PY" eval.py -m "ckpt=$CKPT6" sampler=dpmpp_2m sampler.steps=10 grid=karras grid.rho=5,7,10 \
        grid.sigma_max=$smax eval.n_samples=512 eval.diagnostics=false logger=none \
        "hydra.sweep.dir=$OUT/s8_grid_p2_w32_58k_smax$smax" > "$OUT/s8_grid_smax$smax.log" 2>&1 &
done
wait
# stage 9: where the training noise levels sit, at [32,64] on 58,000 images: input scale 0.35
# (relative to the data, every noise level 1.4x larger) and p_mean -0.6 (the log-normal's centre
# 1.8x larger)
run s9_p2_w32_58k_scale0.35 "${K6[@]}" 'model.widths=[32,64]' data.subset=60000 data.scale=0.35 &
run s9_p2_w32_58k_pmean-0.6 "${K6[@]}" 'model.widths=[32,64]' data.subset=60000 \
    schedule.p_mean=-0.6 &
wait
diffexp-report "$OUT" --out "$OUT/report"
# the winner as the quickstart (both cores, n = 2,048), then Optuna over heun's rho and churn on it
unset OMP_NUM_THREADS
"$PY" train.py experiment=quickstart
CKPT=$(ls -td runs/train/*_quickstart/ | head -1)checkpoints/last.ckpt
OMP_NUM_THREADS=1 "$PY" eval.py hparams_search=sampler_optuna "ckpt=$CKPT" hydra.sweeper.n_trials=10 \
    logger=none "hydra.sweep.dir=$OUT/optuna_sampler_quickstart"
# second round's `make run` candidates, each on the idle cores (both threads), timed with `time`.
# They were run as `make run` with conf/experiment/quickstart.yaml edited to these settings; the
# overrides below compose the same configs. Table: python scripts/tuning_table.py runs/qs2
unset OMP_NUM_THREADS
# experiment=quickstart was then the first round's karras recipe (38,000 images, eval batches of
# 512); it is pinned here so that the commands reproduce those runs after the quickstart moved on
Q=(experiment=quickstart objective=karras data.subset=40000 eval.batch_size=512
   train.batch_size=16 optim.lr=1.5e-3)
time "$PY" train.py "${Q[@]}" hydra.run.dir=runs/qs2/bs16_38k
time "$PY" train.py "${Q[@]}" model.patch=2 'model.widths=[32,64]' 'model.attn_levels=[1]' \
    data.subset=54000 hydra.run.dir=runs/qs2/p2_w32_52k
time "$PY" train.py "${Q[@]}" data.subset=36000 eval.batch_size=64 hydra.run.dir=runs/qs2/bs16_34k_eval64
# the last recipe's training noise: seeds 1 and 2, one thread each, side by side
for s in 1 2; do
    OMP_NUM_THREADS=1 "$PY" train.py "${Q[@]}" data.subset=36000 eval.batch_size=64 seed=$s \
        logger=csv "hydra.run.dir=runs/qs2/bs16_34k_seed$s" > "runs/qs2/bs16_34k_seed$s.log" 2>&1 &
done
wait
# stage 10: batch 16 on 38,000 images, n = 2,048, one thread each, side by side: training seed 1,
# and the v objective on the same log-normal training sigmas
for cell in "seed=1 hydra.run.dir=runs/qs2/bs16_38k_seed1" "objective=v hydra.run.dir=runs/qs2/bs16_38k_v"; do
    # shellcheck disable=SC2086  # $cell is two overrides
    OMP_NUM_THREADS=1 "$PY" train.py "${Q[@]}" logger=csv $cell > "runs/qs2/$(basename "${cell##*=}").log" 2>&1 &
done
wait
# the new quickstart (experiment=quickstart since the second round), timed on the idle cores
time "$PY" train.py "${Q[@]}" objective=v data.subset=36000 eval.batch_size=64 \
    hydra.run.dir=runs/qs2/v_bs16_34k_eval64
