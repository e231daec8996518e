"""Shared test plumbing: the repository path, configs composed through the real Hydra config tree
(as the entry points do), the entry-point scripts run as a user would, and one torch thread."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from diffexp.config import CONF_DIR, validate_eval_config, validate_train_config

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = ["model.widths=[16,32]", "model.blocks=1", "model.attn_levels=[1]",
              "model.head_dim=16"]


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir  # here: tests/doc_commands.py stays light

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def compose_train(overrides: list[str]):
    return _compose("train", overrides)


def compose_eval(overrides: list[str]):
    return _compose("eval", overrides)


def train_config(*overrides: str) -> dict:
    """The validated training config of these overrides, as train.py builds it."""
    return validate_train_config(compose_train(list(overrides)))


def eval_config(*overrides: str) -> dict:
    """The validated evaluation config of these overrides, as eval.py builds it."""
    return validate_eval_config(compose_eval(list(overrides)))


def run_cli(script: str, *args: str, cwd: Path | str = REPO, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run REPO/script (train.py, eval.py, scripts/...) with this interpreter, output captured as
    text; ``env`` is added over this process's environment."""
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread inside the block: on a 2-core machine shared with other jobs, threads that
    wait for each other at every parallel region make small models many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
