"""Configs built in code go through the validator: ``config.derived_config`` (the no_t study's
runs are made with it)."""

import pytest

from diffexp.config import ConfigError, derived_config, option_yaml

from .helpers import train_config


def _study():
    return train_config("experiment=cpu_no_t", "objective.normalize_input=true")


def test_switching_an_option_takes_its_yaml_and_keeps_shared_keys():
    c = _study()
    eps = derived_config(c, {"task": "diffusion", "objective": "eps"})
    # every key of the eps option's yaml, nothing of no_t's
    assert set(eps["objective"]) == set(option_yaml("objective", "eps"))
    assert eps["objective"]["name"] == "eps"
    assert eps["objective"]["normalize_input"] is True  # shared with no_t: carried over
    assert eps["task"] == "diffusion"
    assert c["task"] == "no_t_study" and c["objective"]["name"] == "no_t"  # c itself unchanged


def test_dotted_changes_are_validated_like_a_users():
    c = _study()
    with pytest.raises(ConfigError, match=r"^train\.epochs"):
        derived_config(c, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="objective.noise_level_ckpt"):
        # a no_t model predicting its noise level needs a predictor checkpoint, as on the CLI
        derived_config(c, {"task": "diffusion", "objective.noise_level_ckpt": None})
    with pytest.raises(ConfigError, match="not an option"):
        derived_config(c, {"objective": "nonesuch"})


def test_the_studys_runs_are_valid_configs(tmp_path):
    from diffexp.runs.no_t_study import _sub

    c = _study()
    pred = _sub(c, {"task": "noise_level", "train.epochs": 1, "noise_level.target": "raw"})
    assert pred["task"] == "noise_level" and pred["noise_level"]["target"] == "raw"
    assert pred["train"]["eval_at_end"] is False and pred["ckpt_path"] is None
    ckpt = tmp_path / "p.ckpt"
    ckpt.write_bytes(b"")  # existence is what validation checks; reading it comes later
    no_t = _sub(c, {"task": "diffusion", "objective": "no_t",
                    "objective.noise_level_ckpt": str(ckpt)})
    assert set(no_t["objective"]) == set(option_yaml("objective", "no_t"))
    assert no_t["objective"]["normalize_input"] is True
