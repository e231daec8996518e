"""Shared test setup: the real data folder, and caches kept out of the user's home and ../shared."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
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
    """One torch thread for the test: on a 2-core machine shared with other jobs, threads that
    wait for each other at every parallel region make small models many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
