"""Shared test setup: the real data folder, and caches kept out of the user's home and ../shared."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# torch, hydra and diffexp.config: none of them reads the variables set below at import
from .helpers import REPO, one_torch_thread

SHARED_DATA = Path(os.environ.get("DIFFEXP_DATA_ROOT", REPO.parent / "shared" / "data"))

# Set before any fixture runs (module-scoped ones included).
if (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
    os.environ.setdefault("DIFFEXP_DATA_ROOT", str(SHARED_DATA))
# one FID-reference cache per test session unless the caller (CI) chose one
os.environ.setdefault("DIFFEXP_CACHE_DIR", tempfile.mkdtemp(prefix="diffexp-test-cache-"))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="diffexp-test-wandb-"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {SHARED_DATA} (set DIFFEXP_DATA_ROOT)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One torch thread for the test (helpers.one_torch_thread)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_module():
    """One torch thread for a whole module, module-scoped fixtures included."""
    with one_torch_thread():
        yield


# ------------------------------------------------------------------------------ unit and e2e
# A test is `e2e` when it runs a training or evaluation entry point (train.py, eval.py, the
# scripts), a Lightning fit, or reads the real data set: every test of the modules below, each
# test that uses the data_root fixture (directly or through another fixture), each test marked
# `slow`, and each test marked `e2e` by hand. Every other test is `unit` (`make test-unit`:
# pytest -m unit), which needs neither the data set nor more than a few seconds a test.
E2E_MODULES = {
    "test_api": "runs the README's Python example, which trains a model",
    "test_bench": "runs scripts/bench.py, training steps included",
    "test_budget_kill": "train.py processes stopped by the time budget's watchdog",
    "test_conventions": "train.py and eval.py sweeps (submitit, Optuna) and a fit",
    "test_docs_commands": "runs the commands written in README.md, docs/ and conf/",
    "test_eval": "trains a tiny model, then eval.py and the evaluation on it",
    "test_eval_seeds": "trains a tiny model, then eval.py over several seeds",
    "test_gpu": "fits and samples on a CUDA GPU",
    "test_gpu_cpu_side": "fits with the GPU code paths on the CPU, and scripts/gpu_check.py",
    "test_gpu_rehearsal": "runs pytest and the GPU session scripts in subprocesses",
    "test_lightning_flags": "train.py with Lightning Trainer flags",
    "test_no_t": "trains the noise-level predictor and the no-t model",
    "test_precision": "fits and evaluates in bf16 and fp32",
    "test_preemption": "fits interrupted by signals, then resumed",
    "test_reliability": "a real training checkpoint, and train.py and eval.py on bad input",
    "test_scaleout": "multi-process train.py runs",
    "test_store": "train.py multiruns sharing the model store",
    "test_time_budget": "fits under a time budget",
    "test_train": "fits of every objective and schedule, with resume",
    "test_user_config": "train.py with a user's config folder",
    "test_user_components": "train.py and eval.py with a user's callbacks, loggers and network",
    "test_wandb": "train.py and eval.py logging to wandb (offline)",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        module = module.__name__.rsplit(".", 1)[-1] if module else ""
        if (module in E2E_MODULES or "data_root" in getattr(item, "fixturenames", ())
                or item.get_closest_marker("slow") or item.get_closest_marker("e2e")):
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.unit)
