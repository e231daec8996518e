"""Hydra and Lightning conventions: Trainer arguments passed through, checkpoint retention, the
logged training diagnostics, a job's return value for sweepers, failed jobs under every
launcher, Optuna."""

from __future__ import annotations

import csv

import pytest
import yaml

from diffexp.cli.common import job_return
from diffexp.config import ConfigError, validate_train_config
from diffexp.runs.train import train, trainer_arguments

from .helpers import TINY_MODEL, compose_train, run_cli

TINY = ["data=synthetic", "train.batch_size=16", "train.n_sample_images=4", "sampler.steps=2",
        *TINY_MODEL]


# ----------------------------------------------------------------------------- trainer.*
def test_trainer_arguments_pass_through_and_typos_are_named():
    c = validate_train_config(compose_train([*TINY, "+trainer.max_steps=5",
                                             "+trainer.accumulate_grad_batches=2"]))
    assert trainer_arguments(c["trainer"]) == {"max_steps": 5, "accumulate_grad_batches": 2}
    c = validate_train_config(compose_train([*TINY, "+trainer.max_step=5"]))
    with pytest.raises(ConfigError, match=r"^trainer.max_step is not an argument of Lightning's "
                                          r"Trainer; did you mean trainer.max_steps"):
        trainer_arguments(c["trainer"])
    for key, use in (("max_epochs", "train.epochs"), ("gradient_clip_val", "train.grad_clip"),
                     ("enable_progress_bar", "callbacks.progress_bar")):
        with pytest.raises(ConfigError, match=f"trainer.{key} is set by diffexp from {use}"):
            validate_train_config(compose_train([*TINY, f"+trainer.{key}=1"]))


@pytest.mark.parametrize("given,meant", [("16", "16-mixed"), ("bf16", "bf16-mixed"),
                                         ("32", "32-true"), ("bf16-mixed", "bf16-mixed")])
def test_precision_spellings(given, meant):
    c = validate_train_config(compose_train([*TINY, f"trainer.precision={given}"]))
    assert c["trainer"]["precision"] == meant


def test_max_steps_acts_and_checkpoints_are_kept_every_k_epochs(tmp_path):
    """trainer.max_steps stops training (passthrough reaches the Trainer); with
    callbacks.checkpoints.every_k_epochs=2 over 3 epochs the run keeps the epoch-2 and final
    checkpoints and last.ckpt, and logs lr, grad norm and EMA decay."""
    c = validate_train_config(compose_train(
        [*TINY, "debug=fast", "logger=csv", "train.epochs=3", "trainer.limit_train_batches=3",
         "callbacks.checkpoints.every_k_epochs=2", "optim.lr_schedule=constant"]))
    s = train(c, tmp_path / "run")
    assert s["global_step"] == 9
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch001.ckpt", "epoch002.ckpt", "last.ckpt"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    keys = set().union(*(r.keys() for r in rows))
    assert {"train/lr", "train/grad_norm", "train/ema_decay"} <= keys
    decays = [float(r["train/ema_decay"]) for r in rows if r.get("train/ema_decay")]
    assert decays[0] < decays[-1] <= c["train"]["ema_decay"]  # the EMA's warm-up, then the decay
    assert all(float(r["train/grad_norm"]) > 0 for r in rows if r.get("train/grad_norm"))
    hp = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hp["parameters"] == s["parameters"] > 0

    c2 = validate_train_config(compose_train(
        [*TINY, "debug=fast", "logger=none", "train.epochs=3", "+trainer.max_steps=4",
         "optim.lr_schedule=constant"]))
    assert train(c2, tmp_path / "run2")["global_step"] == 4


# ----------------------------------------------------------------------------- sweepers
def test_job_return_gives_the_optimized_metric_as_a_float():
    summary = {"eval": {"fid": 12.5, "kid_mean": 0.01}, "final_train_loss": 0.3}
    assert job_return(summary, None) is summary
    assert job_return({"fid": 7.0, "kid_mean": 0.2}, "fid") == 7.0  # an eval.py job's metrics
    assert job_return(summary, "fid") == 12.5 and job_return(summary, "final_train_loss") == 0.3
    labelled = {"eval": {"heun": {"fid": 3.0, "kid_mean": 0.1}, "euler": {"fid": 4.0}}}
    assert job_return(labelled, "fid") == 3.0  # the first end sampler's
    assert job_return({"status": "failed", "error": "x"}, "fid") == float("inf")
    with pytest.raises(ConfigError, match="produced no fid"):
        job_return({"final_train_loss": 1.0}, "fid")
    with pytest.raises(ConfigError, match="optimized_metric=fid is a number of the end-of-run"):
        validate_train_config(compose_train([*TINY, "optimized_metric=fid",
                                             "train.eval_at_end=false"]))


@pytest.mark.slow
def test_failed_jobs_of_submitit_local_exit_1(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = run_cli("train.py", "-m", "data.scale=-1,-2", "logger=none",
                "hydra/launcher=submitit_local", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=400)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "2 job(s) failed" in r.stderr and "data.scale must be > 0" in r.stderr


@pytest.mark.slow
def test_optuna_search_runs_three_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    r = run_cli("train.py", "hparams_search=train_optuna", "hydra.sweeper.n_trials=3", *TINY,
                "debug=fast", "logger=none", "train.eval_at_end=true", "eval.n_samples=16",
                "eval.batch_size=16", "eval.floor=false", "eval.diagnostics=false",
                "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert isinstance(best["best_value"], float) and best["best_value"] > 0
    fids = []
    for job in sorted((tmp_path / "sweep").glob("*/summary.json")):
        import json

        fids.append(json.loads(job.read_text())["eval"]["fid"])
    assert len(fids) == 3 and best["best_value"] == pytest.approx(min(fids))
    assert set(best["best_params"]) == {"optim.lr", "data.scale", "train.ema_decay"}


@pytest.mark.slow
def test_sampler_optuna_search_on_one_checkpoint(tmp_path):
    """eval.py hparams_search=sampler_optuna: three trials of grid rho and churn on one trained
    checkpoint, no retraining; each trial returns its FID and the best is the smallest."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    c = validate_train_config(compose_train([*TINY, "debug=fast", "logger=none",
                                             "schedule=karras", "objective=karras"]))
    train(c, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    r = run_cli("eval.py", "hparams_search=sampler_optuna", f"ckpt={ckpt}",
                "hydra.sweeper.n_trials=3", "sampler.steps=3", "eval.n_samples=16",
                "eval.batch_size=16", "logger=none", "hydra.sweep.dir=esweep", cwd=tmp_path,
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "esweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"grid.rho", "sampler.s_churn", "sampler.s_tmin"}
    import json

    fids = [json.loads(m.read_text())["fid"] for m in (tmp_path / "esweep").glob("*/metrics.json")]
    assert len(fids) == 3 and best["best_value"] == pytest.approx(min(fids))
