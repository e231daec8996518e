"""Shared test fixtures: the real data folder and a temporary run/caches location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFEXP_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (SHARED_DATA / "FashionMNIST" / "raw").is_dir():
        pytest.skip(f"Fashion-MNIST not found under {SHARED_DATA} (set DIFFEXP_DATA_ROOT)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("diffexp-cache")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch, session_cache):
    # one FID-reference cache for the session (never the user's, never ../shared)
    monkeypatch.setenv("DIFFEXP_CACHE_DIR", str(session_cache))
    if "DIFFEXP_DATA_ROOT" not in os.environ and SHARED_DATA.is_dir():
        monkeypatch.setenv("DIFFEXP_DATA_ROOT", str(SHARED_DATA))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
