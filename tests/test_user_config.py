"""A user's own config folder on the command line (``-cd DIR``, ``--config-dir=DIR``,
``hydra.searchpath=[file://DIR]``): its experiments and its options of known groups are chosen
like shipped ones and validated like them, and a misspelled choice still gets one line listing
every option the search path holds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from diffexp.config import ConfigError, check_group_choices, user_config_dirs

from .helpers import REPO, TINY_MODEL, run_cli


@pytest.fixture
def myconf(tmp_path) -> Path:
    d = tmp_path / "myconf"
    (d / "experiment").mkdir(parents=True)
    (d / "sampler").mkdir()
    (d / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /sampler: heun_short\n"
        "name: mine\n"
        "data:\n  scale: 0.5\n")
    heun = (REPO / "conf" / "sampler" / "heun.yaml").read_text()
    (d / "sampler" / "heun_short.yaml").write_text(heun.replace("steps: 20", "steps: 3"))
    return d


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *args, env={"OMP_NUM_THREADS": "1"})


def test_the_folders_a_command_line_adds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert user_config_dirs(["-cd", str(a), "x=1"]) == [a]
    assert user_config_dirs([f"--config-dir={a}", f"hydra.searchpath=[file://{b},pkg://m]"]) \
        == [a, b]
    assert user_config_dirs(["schedule=cosine"]) == []


def test_a_users_options_count_and_a_typo_lists_them(myconf):
    check_group_choices(["-cd", str(myconf), "experiment=mine", "sampler=heun_short"])
    with pytest.raises(ConfigError) as e:
        check_group_choices(["experiment=mine"])  # without the folder: not an option
    assert "experiment='mine' is not an option" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_group_choices(["-cd", str(myconf), "experiment=mien"])
    msg = str(e.value)
    assert "mine" in msg and "quickstart" in msg and "\n" not in msg


@pytest.mark.parametrize("how", ["-cd", "--config-dir=", "hydra.searchpath="])
def test_a_users_experiment_composes_through_the_command_line(myconf, how):
    where = {"-cd": ["-cd", str(myconf)], "--config-dir=": [f"--config-dir={myconf}"],
             "hydra.searchpath=": [f"hydra.searchpath=[file://{myconf}]"]}[how]
    out = _cli(*where, "experiment=mine", "--cfg", "job")
    assert out.returncode == 0, out.stderr[-1500:]
    assert "name: mine" in out.stdout and "scale: 0.5" in out.stdout and "steps: 3" in out.stdout
    bad = _cli(*where, "experiment=mien", "--cfg", "job")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "mine" in bad.stderr


def test_a_users_option_is_validated_like_a_shipped_one(myconf, tmp_path):
    (myconf / "sampler" / "heun_bad.yaml").write_text(
        (myconf / "sampler" / "heun_short.yaml").read_text().replace("steps: 3", "steps: -3"))
    out = _cli("-cd", str(myconf), "sampler=heun_bad", f"hydra.run.dir={tmp_path / 'r'}")
    assert out.returncode == 2 and out.stderr.startswith("error: sampler.steps"), out.stderr
    assert not (tmp_path / "r").exists()


def test_a_users_experiment_trains_and_samples(myconf, tmp_path):
    run = tmp_path / "run"
    out = _cli("-cd", str(myconf), "experiment=mine", "debug=fast", "data=synthetic",
               "train.batch_size=16", *TINY_MODEL, "trainer.accelerator=cpu",
               "train.n_sample_images=4", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / "samples" / "final.png").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "name: mine" in cfg and "scale: 0.5" in cfg  # (debug=fast sets its own steps)
