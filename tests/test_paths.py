"""The paths group and the optional local config: where runs, sweeps, the model store, the data
and the caches live, set once (conf/paths/default.yaml, or a machine's local/default.yaml kept
out of version control) instead of per command."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffexp.config import ConfigError, apply_paths, validate_paths

from .helpers import TINY_MODEL, compose_train, run_cli, train_config

RUN = ["data=synthetic", "data.subset=200", "data.val_size=40", *TINY_MODEL,
       "trainer.accelerator=cpu", "train.batch_size=16", "train.epochs=1",
       "train.eval_at_end=false", "train.n_sample_images=4", "sampler.steps=2", "logger=none"]


def test_the_defaults_are_the_folders_of_before():
    cfg = compose_train([])
    assert dict(cfg.paths) == {"runs": "runs", "sweeps": "runs", "models": "runs/models",
                               "data": None, "cache": None}
    c = train_config()
    assert c["train"]["model_store"] == "runs/models" and c["data"]["root"] is None


def test_one_setting_moves_the_model_store_and_the_data_root():
    c = train_config("paths.runs=/scratch/me", "paths.data=/datasets/fashion")
    assert c["train"]["model_store"] == "/scratch/me/models"
    assert c["data"]["root"] == "/datasets/fashion"
    # a root the data group gives wins; the synthetic data has no root
    assert train_config("paths.data=/d", "data.root=/mine")["data"]["root"] == "/mine"
    assert train_config("paths.data=/d", "data=synthetic",
                        "train.batch_size=16")["data"]["root"] is None


def test_bad_paths_name_the_setting():
    with pytest.raises(ConfigError) as e:
        train_config("paths.runs=''")
    assert str(e.value).startswith("paths.runs must be a folder")
    with pytest.raises(ConfigError) as e:
        train_config("+paths.logs=x")
    assert str(e.value).startswith("paths.logs: unknown setting; valid keys: runs, sweeps")
    assert validate_paths(None) is None  # an older run's config has none


def test_the_cache_folder_is_this_processs(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEXP_CACHE_DIR", "before")
    apply_paths({"cache": None})
    assert os.environ["DIFFEXP_CACHE_DIR"] == "before"
    apply_paths({"cache": str(tmp_path / "c")})
    assert os.environ["DIFFEXP_CACHE_DIR"] == str(tmp_path / "c")
    from diffexp.metrics.fid import default_cache_dir

    assert default_cache_dir() == tmp_path / "c"


def _local_folder(tmp_path: Path, runs: Path) -> Path:
    conf = tmp_path / "myconf"
    (conf / "local").mkdir(parents=True)
    (conf / "local" / "default.yaml").write_text(
        "# @package _global_\n"
        "# this machine's settings\n"
        f"paths:\n  runs: {runs}\n")
    return conf


def test_a_local_config_places_the_runs_and_a_sweep_follows(tmp_path):
    runs = tmp_path / "scratch"
    conf = _local_folder(tmp_path, runs)
    out = run_cli("train.py", "-cd", str(conf), *RUN, cwd=tmp_path,
                  env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = (runs / "train").iterdir()  # <runs>/train/<date>_<name>
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()  # nothing in the working directory's runs/
    out = run_cli("train.py", "-m", "-cd", str(conf), *RUN, "seed=0,1", cwd=tmp_path,
                  env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    (sweep,) = (runs / "multirun").iterdir()
    assert len([d for d in sweep.iterdir() if d.is_dir() and d.name[0].isdigit()]) == 2
    assert len(list((runs / "models").glob("*/DONE.json"))) == 2  # the store under paths.runs
    assert not (tmp_path / "runs").exists()
