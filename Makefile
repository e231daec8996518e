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
ARGS ?=

.PHONY: install run test test-slow test-all lint bench results clean help

help:
	@echo "make install | run | test | test-slow | test-all | lint | bench | results | gpu-check | gpu-prep | clean"

$(STAMP): pyproject.toml
	@if [ "$(PY)" = "$(VENV)/bin/python" ] && [ ! -x $(PY) ]; then python3 -m venv $(VENV); fi
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[dev]"
	@touch $@

install: $(STAMP)

run: install
	$(PY) train.py experiment=quickstart $(ARGS)
	@echo "Samples: $$(ls -td runs/train/*/ | head -1)samples/final.png"

test: install
	$(PY) -m pytest -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: install
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

# the experiments of docs/RESULTS.md (CPU-sized; see there for times and for running two at once)
results: install
	PYTHON=$(PY) scripts/results.sh runs/results $(ARGS)
	$(PY) scripts/results_tables.py runs/results

lint: install
	$(PY) -m ruff check src tests scripts train.py eval.py

bench: install
	$(PY) scripts/bench.py $(ARGS)

# the GPU readiness check, one command for a short GPU window (docs/PERFORMANCE.md, "GPU
# readiness check"); `make gpu-check ARGS=--dry-run` runs its CPU-sized version anywhere
.PHONY: gpu-check gpu-prep
gpu-check: install
	$(PY) scripts/gpu_check.py $(ARGS)

# before a GPU window on a machine without network: wheels and data into .gpu-carry/ (carry it,
# then run scripts/gpu_session.sh there)
gpu-prep: install
	PYTHON=$(PY) scripts/gpu_prep.sh

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache $(STAMP)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
