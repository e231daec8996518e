#!/usr/bin/env bash
# Here, before a GPU window: fill .gpu-carry/ (git-ignored) with what a lent GPU machine lacks and
# cannot fetch (it has no internet): wheels of the pure-Python dependencies its image does not hold
# (hydra-core, omegaconf, antlr4-python3-runtime; torch, Lightning, torchmetrics, PyYAML are there)
# and Fashion-MNIST, gzipped (about 30 MB, so the tree stays under the 64 MiB that travels).
# Then, on the device: bash scripts/gpu_session.sh, with .gpu-carry carried (docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
src=${DIFFEXP_DATA_ROOT:-../shared/data}/FashionMNIST/raw
out=.gpu-carry
rm -rf "$out"
mkdir -p "$out/wheels" "$out/data/FashionMNIST/raw"
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip wheel --quiet --no-deps -w "$out/wheels" "hydra-core==$(ver hydra-core)" \
    "omegaconf==$(ver omegaconf)" "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$src/$f.gz" ]; then cp "$src/$f.gz" "$out/data/FashionMNIST/raw/"
    else gzip -c "$src/$f" > "$out/data/FashionMNIST/raw/$f.gz"; fi
done
ls "$out/wheels"
du -sh "$out"
