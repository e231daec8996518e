#!/usr/bin/env bash
# Build, here, an environment made like the lent GPU machine's image, for the GPU-run rehearsal
# (scripts/gpu_rehearsal.py --python .cache/gpu_rehearsal/py312/bin/python; make gpu-rehearsal):
# Python 3.12 (pyenv's, else python3.12 on PATH), torch 2.11.0, torchvision 0.26.0,
# pytorch-lightning 2.6.6, torchmetrics 1.9.0, numpy, scipy, matplotlib, pytest, PyYAML -- and no
# hydra-core, omegaconf, antlr4 or wandb, which the GPU machine lacks (the session installs them
# from the carried wheels). PyPI's torch 2.11.0 for Linux is the CUDA 13.0 build: about 3.5 GB of
# downloads (torch 531 MB, the CUDA libraries, triton), 5.6 GB on disk, a few minutes here.
# Idempotent: an environment whose versions already match is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
ENV=${GPU_REHEARSAL_ENV:-.cache/gpu_rehearsal/py312}
PY312=${PY312:-}
if [ -z "$PY312" ]; then
    for c in "$(command -v python3.12)" "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        if [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null
        then PY312=$c; fi
    done
fi
[ -n "$PY312" ] || { echo "error: no Python 3.12 here (pyenv install 3.12, or PY312=...)" >&2; exit 2; }
PKGS=(torch==2.11.0 torchvision==0.26.0 pytorch-lightning==2.6.6 torchmetrics==1.9.0
      numpy scipy matplotlib pytest PyYAML)
want='2.11.0 0.26.0 2.6.6 1.9.0'
have=$("$ENV/bin/python" - 2>/dev/null <<'PY'
import importlib.metadata as m
print(*(m.version(p) for p in ("torch", "torchvision", "pytorch-lightning", "torchmetrics")))
PY
)
if [ "$have" = "$want" ]; then echo "$ENV: already torch/torchvision/lightning/torchmetrics $have"; exit 0; fi
t0=$SECONDS
rm -rf "$ENV"
"$PY312" -m venv "$ENV" || exit 1
"$ENV/bin/python" -m pip install --quiet --no-cache-dir "${PKGS[@]}" || exit 1
"$ENV/bin/python" -m pip uninstall --quiet -y hydra-core omegaconf antlr4-python3-runtime wandb \
    >/dev/null 2>&1
"$ENV/bin/python" -c "import sys, torch, torchvision, pytorch_lightning as pl, torchmetrics as tm; \
print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'lightning', pl.__version__, 'torchmetrics', tm.__version__)" || exit 1
echo "built $ENV in $((SECONDS - t0)) s, $(du -sh "$ENV" | cut -f1) on disk"
