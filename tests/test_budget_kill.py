"""A time-budgeted run killed with SIGKILL at any moment and restarted by the same command ends at
the step count it planned, its LR schedule run out: killed after its plan (the checkpoint carries
it), and before it (the restarted run plans with the budget time already spent counted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from .helpers import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
PLAN_LINE = "The same run again: trainer.max_steps="


def _command(run: Path) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "data=synthetic", "data.subset=2000",
            "logger=none", *TINY_MODEL, "trainer.accelerator=cpu", "train.batch_size=16",
            "train.epochs=1", "train.eval_at_end=false", "train.n_sample_images=4",
            "sampler.steps=2", "train.time_budget_s=24", "train.checkpoint_every_n_steps=4",
            # the first steps try two threads and one, as a budgeted run's on a multi-core CPU
            "train.trial_threads=[2,1]", f"hydra.run.dir={run}"]


def _start(run: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(run), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, "the run ended before the moment of the kill"
        assert time.monotonic() - t0 < timeout, "the moment of the kill never came"
        time.sleep(0.05)


def _planned(log: Path) -> tuple[int, int] | None:
    for line in log.read_text().splitlines():
        if PLAN_LINE in line:
            tail = line.split(PLAN_LINE)[1].split()
            return int(tail[0]), int(tail[1].split("=")[1])
    return None


def _finish(run: Path, tmp_path: Path) -> tuple[dict, str]:
    log = tmp_path / "second.log"
    out = subprocess.run(_command(run), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, timeout=300)
    assert out.returncode == 0, log.read_text()[-2000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt, log.read_text()


def _assert_schedule_run_out(ckpt: dict, steps: int, hold: int) -> None:
    assert ckpt["global_step"] == steps
    sched = ckpt["lr_schedulers"][0]
    assert sched["total"] == steps and sched["hold"] == hold and sched["k"] == steps
    # the one-cycle schedule of the run's lr (4e-3, the default) over the steps after the held
    # ones, stepped to its end: the value an uninterrupted schedule of that length leaves
    n = steps - hold
    assert sched["inner"]["last_epoch"] == n
    opt = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=4e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=n,
                                              pct_start=max(0.25, 2.0 / n))
    for _ in range(n):
        opt.step()
        ref.step()
    lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)


@pytest.mark.slow
def test_killed_after_its_plan_ends_at_the_planned_step(tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = _start(run, log)
    try:
        _wait_for(lambda: _planned(log) is not None, proc)
        planned = _planned(log)
        last = run / "checkpoints" / "last.ckpt"
        t_plan = time.time()
        _wait_for(lambda: last.is_file() and last.stat().st_mtime > t_plan + 0.5, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    steps, hold = planned
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)["global_step"]
    assert hold < killed_at < steps  # killed between the plan and the end
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == steps and cfg["optim"]["hold_steps"] == hold
    ckpt, second = _finish(run, tmp_path)
    assert "trains to the planned step" in second or "is given" in second
    _assert_schedule_run_out(ckpt, steps, hold)
    cfg = yaml.safe_load((run / "config.yaml").read_text())  # rewritten by the restarted run
    assert cfg["trainer"]["max_steps"] == steps and cfg["optim"]["hold_steps"] == hold
    # the thread count the plan chose survives the kill
    plan = ckpt["callbacks"]["BudgetPlanner"]["plan"]
    assert plan["threads"] in (1, 2) and cfg["train"]["threads"] == plan["threads"]
    assert (f"train.threads={plan['threads']} train.trial_threads=[2,1] "
            f"train.trial_steps={plan['trial_steps']}") in log.read_text()


@pytest.mark.slow
def test_killed_before_its_plan_plans_with_the_time_already_spent(tmp_path):
    run, log = tmp_path / "run", tmp_path / "first.log"
    proc = _start(run, log)
    last = run / "checkpoints" / "last.ckpt"
    try:
        _wait_for(last.is_file, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    first = torch.load(last, map_location="cpu", weights_only=False)
    state = first["callbacks"]["BudgetPlanner"]
    if state["plan"] is not None:
        pytest.skip("the machine was so slow that the plan came before the first checkpoint")
    assert state["spent_s"] > 0
    ckpt, second = _finish(run, tmp_path)
    steps, hold = _planned(tmp_path / "second.log")
    assert hold > first["global_step"]  # planned in the restarted process, after the resumed step
    _assert_schedule_run_out(ckpt, steps, hold)
    # the time spent before the kill counts: the plan is made earlier into the second process
    plan = ckpt["callbacks"]["BudgetPlanner"]["plan"]
    assert plan["planned_at_s"] >= state["spent_s"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == steps and cfg["optim"]["hold_steps"] == hold
    assert cfg["train"]["threads"] == plan["threads"] and cfg["train"]["trial_threads"] == [2, 1]
    assert cfg["train"]["trial_steps"] == plan["trial_steps"]
