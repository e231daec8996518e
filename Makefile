# diffexp: `make run` trains the quickstart recipe; `make test` runs the test suite.
# `make install` creates and uses .venv unless a virtual/conda environment is already active.
SHELL := /bin/bash
VENV ?= .venv
ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
  PY := python
  STAMP := .installed-$(notdir $(VIRTUAL_ENV)$(CONDA_PREFIX))
else
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.installed
endif
# what running needs (`make run`), and the dev tools on top of it (`make test`, `make lint`):
# separate stamps, so `make test` after `make run` installs only the extras
DEV_STAMP := $(STAMP)-dev
ARGS ?=

.PHONY: install install-dev run test test-unit test-slow test-all lint bench results clean help

help:
	@echo "make install | install-dev | run | test | test-unit | test-slow | test-all | lint | bench | results | gpu-check | gpu-prep | gpu-rehearsal | clean"

$(STAMP): pyproject.toml
	@if [ "$(PY)" = "$(VENV)/bin/python" ] && [ ! -x $(PY) ]; then python3 -m venv $(VENV); fi
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e .
	@touch $@

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[dev]"
	@touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

run: install
	$(PY) train.py experiment=quickstart $(ARGS)
	@echo "Samples: $$(ls -td runs/train/*/ | head -1)samples/final.png"

test: install-dev
	$(PY) -m pytest -q $(ARGS)

# the unit tests only (tests/conftest.py marks them): about a minute, no data set needed
test-unit: install-dev
	$(PY) -m pytest -q -m unit $(ARGS)

test-slow: install-dev
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: install-dev
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

# the experiments of docs/RESULTS.md (CPU-sized; see there for times and for running two at once)
results: install
	PYTHON=$(PY) scripts/results.sh runs/results $(ARGS)
	$(PY) scripts/results_tables.py runs/results

lint: install-dev
	$(PY) -m ruff check src tests scripts train.py eval.py

bench: install
	$(PY) scripts/bench.py $(ARGS)

# the GPU readiness check (docs/PERFORMANCE.md, "GPU readiness check"); `make gpu-check
# ARGS=--dry-run` runs its CPU-sized version anywhere. No `install` first: on a GPU machine without
# a package index it runs with whatever python has the packages (.venv's if there is one)
GPU_PY := $(if $(VIRTUAL_ENV)$(CONDA_PREFIX),python,$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3))
GPU_ENV ?= .cache/gpu_rehearsal/py312
.PHONY: gpu-check gpu-prep gpu-session gpu-rehearsal gpu-rehearsal-env
gpu-check:
	$(GPU_PY) scripts/gpu_check.py $(ARGS)

# before a GPU window: wheels and data into .gpu-carry/ (carry it; the device runs
# scripts/gpu_session.sh)
gpu-prep: install
	PYTHON=$(GPU_PY) scripts/gpu_prep.sh

# what the device runs (`make gpu-session ARGS="full"` for the second call)
gpu-session:
	PYTHON=$(GPU_PY) bash scripts/gpu_session.sh $(ARGS)

# an environment like the GPU machine's image (Python 3.12, torch 2.11.0, torchvision 0.26.0,
# Lightning 2.6.6, torchmetrics 1.9.0; no Hydra, OmegaConf, antlr4, wandb): 3.5 GB downloaded
gpu-rehearsal-env:
	GPU_REHEARSAL_ENV=$(GPU_ENV) bash scripts/gpu_rehearsal_env.sh

# the GPU run rehearsed on this CPU in that environment: both calls with --dry-run, limits checked
gpu-rehearsal: install gpu-rehearsal-env
	$(GPU_PY) scripts/gpu_rehearsal.py --python $(GPU_ENV)/bin/python $(ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache $(STAMP) $(DEV_STAMP)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
