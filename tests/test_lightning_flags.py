"""The Trainer flags a Lightning user reaches for, through the command line: each works (a short
run) or stops before any work with one line naming it, exit status 2 and no run folder; and every
line diffexp prints reaches the run folder's train.log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from diffexp.config import ConfigError, validate_train_config

from .helpers import TINY_MODEL, compose_train, run_cli

TINY = ["data=synthetic", "data.subset=400", "data.val_size=64", "logger=none", *TINY_MODEL,
        "trainer.accelerator=cpu", "train.batch_size=16", "train.epochs=1",
        "train.n_sample_images=4", "sampler.steps=2", "eval.n_samples=32", "eval.batch_size=32",
        "eval.floor=false", "eval.diagnostics=false"]


def _cli(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train.py", *TINY, *extra, f"hydra.run.dir={run}",
                   env={"OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("flag,needle", [
    ("+trainer.fast_dev_run=-1", "trainer.fast_dev_run must be true, false or a number"),
    ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be an int >= 1"),
    ("+trainer.overfit_batches=2", "trainer.overfit_batches: the run makes 2 optimizer step(s)"),
    ("+trainer.accumulate_grad_batches=16",
     "trainer.accumulate_grad_batches: the run makes 2 optimizer step(s)"),
    ("+trainer.barebones=true", "trainer.barebones is not supported"),
    ("+trainer.max_epochs=3", "trainer.max_epochs is set by diffexp from train.epochs"),
    ("+trainer.max_steps=-2", "trainer.max_steps must be an int >= -1"),
])
def test_a_flag_that_cannot_work_is_refused_before_work(flag, needle):
    with pytest.raises(ConfigError) as e:
        validate_train_config(compose_train([*TINY, flag]))
    assert str(e.value).startswith(needle) and "\n" not in str(e.value)


def test_a_refused_flag_leaves_one_line_exit_2_and_no_run_folder(tmp_path):
    out = _cli(tmp_path / "run", "+trainer.overfit_batches=2")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: trainer.overfit_batches: the run makes 2 optimizer step(s) and "
        "optim.lr_schedule=onecycle needs at least 3; train longer or use "
        "optim.lr_schedule=constant"]
    assert not (tmp_path / "run").exists()


def test_fast_dev_run_is_a_smoke_run_and_its_log_has_every_line(tmp_path):
    run = tmp_path / "run"
    out = _cli(run, "+trainer.fast_dev_run=true", "train.time_budget_s=60")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trainer.fast_dev_run: a smoke run" in out.stdout
    assert "not planned in a fast_dev_run" in out.stdout  # the budget does not apply
    assert not (run / "samples").exists() and not (run / "eval").exists()
    assert not list(run.glob("checkpoints/*.ckpt"))  # Lightning saves none in a fast_dev_run
    log = (run / "train.log").read_text()
    ours = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("[diffexp]")]
    assert len(ours) >= 3
    for line in ours:
        assert line in log, line


@pytest.mark.slow  # about 10 s a flag
@pytest.mark.parametrize("flags", [
    ["+trainer.fast_dev_run=5"],
    ["+trainer.overfit_batches=0.5"],
    ["+trainer.max_steps=2000", "+trainer.accumulate_grad_batches=2"],  # the README's line
    ["+trainer.max_time=00:00:00:04"],
    ["+trainer.val_check_interval=5"],
    ["+trainer.profiler=simple"],
    ["+trainer.detect_anomaly=true"],
    ["+trainer.min_steps=10"],
    ["+trainer.benchmark=true"],
    ["+trainer.gradient_clip_algorithm=value"],
    ["+trainer.limit_test_batches=2"],
    ["+trainer.reload_dataloaders_every_n_epochs=1"],
    ["+trainer.inference_mode=false"],
])
def test_a_lightning_flag_runs(tmp_path, flags):
    out = _cli(tmp_path / "run", "train.eval_at_end=false", *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[diffexp] done in" in out.stdout
