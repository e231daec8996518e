"""Scale-out: per-rank data shares, DDP over two CPU processes (gloo), kill -9 then resume,
named sweeps with the joblib launcher, the submitit launcher (local), the sweep report."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from diffexp.module import IndexBatches, load_module
from diffexp.runs.report import collect, write_report

from .helpers import REPO, run_cli

TINY = ["data=synthetic", "model.widths=[16,32]", "model.blocks=1", "model.attn_levels=[1]",
        "model.head_dim=16", "train.batch_size=16", "train.n_sample_images=16",
        "sampler.steps=3", "trainer.log_every_n_steps=1"]


def _train(*args, cwd, **kw):
    return run_cli("train.py", *args, cwd=cwd, timeout=kw.get("timeout", 600))


def test_index_batches_split_per_rank():
    idx = torch.arange(100)
    shares = [list(IndexBatches(idx, 8, seed=3, rank=r, world_size=2)) for r in range(2)]
    a, b = (torch.cat(s).tolist() for s in shares)
    assert len(a) == len(b) == 48 and not set(a) & set(b)  # disjoint, equal, 6 batches of 8
    again = torch.cat(list(IndexBatches(idx, 8, seed=3, rank=0, world_size=2))).tolist()
    assert again == a  # the epoch's order is fixed by the seed


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    r = _train(*TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "train.epochs=2", "trainer.limit_train_batches=3", "logger=csv",
               "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 6 and s["epochs"] == 2
    m = load_module(run / "checkpoints" / "last.ckpt")
    assert int(m.ema.num_updates) == 6
    assert (run / "samples" / "final.png").is_file()
    assert r.stdout.count("[diffexp] done in") == 1  # summary and grids written once (rank 0)
    assert "val/loss" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    args = [*TINY, "data.subset=2000", "data.val_size=64", "train.epochs=6",
            "trainer.limit_train_batches=25", "train.sample_every_n_epochs=0", "logger=csv",
            "callbacks.checkpoints.every_k_epochs=1",
            "hydra.run.dir=run"]
    p = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "run"
    deadline = time.time() + 300
    epoch1, last = run / "checkpoints" / "epoch001.ckpt", run / "checkpoints" / "last.ckpt"
    # the epoch's checkpoint is written first, then last.ckpt: wait for both (a kill in between
    # leaves last.ckpt at the previous epoch)
    while not (epoch1.exists() and last.stat().st_mtime_ns >= epoch1.stat().st_mtime_ns):
        assert p.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    step_at_kill = ck["global_step"]
    assert 50 <= step_at_kill < 150  # loadable, and mid-run
    assert not (run / "summary.json").exists()
    r = _train(f"resume={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["global_step"] == 150 and s["epochs"] == 6
    steps = [int(line.split(",")[1]) for line in (run / "losses.csv").read_text().splitlines()[1:]
             if line.startswith("train")]
    assert steps[0] == step_at_kill and steps[-1] == 149  # the count continued from the checkpoint


@pytest.mark.slow
def test_named_sweep_with_joblib_and_report(tmp_path):
    r = _train("-m", "sweep=scale_rho", *TINY, "debug=fast", "logger=csv",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data.scale=0.5,2",
               "grid.rho=3,7", "eval.n_samples=32", "eval.batch_size=32",
               "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, swept = collect(tmp_path / "sweep")
    assert len(rows) == 4 and set(swept) == {"data.scale", "grid.rho"}
    assert all(x["status"] == "ok" and x["fid"] > 0 and x["floor_fid"] > 0 for x in rows)
    names = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert any("data.scale=0.5" in n and "grid.rho=3" in n for n in names)  # readable
    files = write_report(tmp_path / "sweep")
    assert files["fid_vs_data.scale"].is_file() and files["fid_vs_grid.rho"].is_file()
    cells = [n for n in names if "grid.rho=" in n]
    assert len(cells) == 4
    for name in cells:  # each cell samples on the Karras grid with its own rho
        cfg = OmegaConf.load(tmp_path / "sweep" / name / "config.yaml")
        assert cfg["grid"]["name"] == "karras"
        assert f"grid.rho={cfg['grid']['rho']:g}" in name


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    """submitit runs the jobs as parallel processes: the two rho cells of each seed's model meet
    at its lock, and each model is trained once."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    r = _train("-m", *TINY, "debug=fast", "logger=none", "hydra/launcher=submitit_local",
               "hydra.launcher.timeout_min=10", "seed=0,1", "grid=karras", "grid.rho=3,7",
               "eval.n_samples=32", "eval.batch_size=32", "eval.diagnostics=false",
               "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, _ = collect(tmp_path / "sweep")
    assert len(rows) == 4 and all(x["status"] == "ok" and x["fid"] > 0 for x in rows)
    assert sorted(x["model"] for x in rows) == ["reused", "reused", "trained", "trained"]
