#!/usr/bin/env bash
# Here, before a GPU window: fill .gpu-carry/ (git-ignored; GPU_CARRY=DIR for another folder) with
# what a lent GPU machine lacks and cannot fetch (no network, no package index):
#   wheels/  pure-Python wheels of hydra-core, omegaconf and antlr4-python3-runtime at this
#            environment's versions (PyPI's wheels; antlr4 4.9.3 has only a source archive, built
#            here into a py3-none-any wheel); torch, Lightning, torchmetrics, torchvision, PyYAML
#            are in the machine's image;
#   data/    Fashion-MNIST's four IDX files gzipped (the loader reads .gz directly), from
#            DIFFEXP_DATA_ROOT (default ../shared/data).
# About 31 MiB in all. Wheels and gzipped files are kept in GPU_PREP_CACHE (default
# .cache/gpu_prep), so a second run is a copy. Then, on the device: bash scripts/gpu_session.sh,
# with .gpu-carry carried (docs/PERFORMANCE.md, "GPU readiness check").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
src=${DIFFEXP_DATA_ROOT:-../shared/data}/FashionMNIST/raw
out=${GPU_CARRY:-.gpu-carry}
cache=${GPU_PREP_CACHE:-.cache/gpu_prep}
mkdir -p "$cache/wheels" "$cache/data" || exit 2
rm -rf "$out"
mkdir -p "$out/wheels" "$out/data/FashionMNIST/raw" || exit 2
rc=0
for pkg in hydra-core omegaconf antlr4-python3-runtime; do
    ver=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))") || {
        echo "error: $pkg is not installed in $PY" >&2; rc=1; continue; }
    stem=$(echo "$pkg" | tr '-' '_')
    whl=$(ls "$cache/wheels/${stem}-${ver}-"*.whl 2>/dev/null | head -1)
    if [ -z "$whl" ]; then
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" "$pkg==$ver" 2>/dev/null \
        || "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$cache/wheels" "$pkg==$ver" 2>/dev/null \
        || "$PY" -m pip wheel --quiet --no-deps -w "$cache/wheels" "$pkg==$ver"
        whl=$(ls "$cache/wheels/${stem}-${ver}-"*.whl 2>/dev/null | head -1)
    fi
    case "$whl" in
        *-py3-none-any.whl|*-py2.py3-none-any.whl) cp "$whl" "$out/wheels/" ;;
        "") echo "error: no wheel of $pkg==$ver" >&2; rc=1 ;;
        *) echo "error: $whl is not a pure-Python wheel" >&2; rc=1 ;;
    esac
done
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$src/$f.gz" ]; then cp "$src/$f.gz" "$out/data/FashionMNIST/raw/"; continue; fi
    if [ ! -f "$src/$f" ]; then echo "error: $src/$f(.gz) not found (set DIFFEXP_DATA_ROOT)" >&2; rc=1; continue; fi
    if [ ! -s "$cache/data/$f.gz" ] || [ "$src/$f" -nt "$cache/data/$f.gz" ]; then
        gzip -c "$src/$f" > "$cache/data/$f.gz.tmp" && mv "$cache/data/$f.gz.tmp" "$cache/data/$f.gz"
    fi
    cp "$cache/data/$f.gz" "$out/data/FashionMNIST/raw/"
done
ls "$out/wheels"
du -sh "$out"
exit $rc
