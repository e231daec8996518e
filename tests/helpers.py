"""Composing configs through the real Hydra config tree, as the entry points do."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from diffexp.config import CONF_DIR

TINY_MODEL = ["model.widths=[16,32]", "model.blocks=1", "model.attn_levels=[1]",
              "model.head_dim=16"]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))
