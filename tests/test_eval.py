"""eval.py end to end on a tiny trained checkpoint, an eval multirun with a failing job, and the
report over it; every sampler on a model of every objective."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from diffexp import sampling
from diffexp.config import validate_train_config
from diffexp.module import DiffusionModule
from diffexp.runs.report import collect, write_report
from diffexp.runs.train import train

from .helpers import TINY_MODEL, compose_train, run_cli


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("tinyrun")
    c = validate_train_config(compose_train(
        ["data=synthetic", "debug=fast", "train.batch_size=16", "sampler=euler", *TINY_MODEL]))
    train(c, run)
    return run / "checkpoints" / "last.ckpt"


def _eval(*args, cwd):
    return run_cli("eval.py", *args, cwd=cwd, timeout=600)


def test_eval_end_to_end(tiny_ckpt, tmp_path, data_root):
    r = _eval(f"ckpt={tiny_ckpt}", "logger=csv", "eval.n_samples=48", "eval.batch_size=16",
              "eval.per_step=true", "sampler.steps=3", "hydra.run.dir=out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    for k in ("fid", "kid_mean", "kid_std", "floor", "n", "nfe", "seed", "sampler", "wall_time_s",
              "images_per_s", "protocol"):
        assert k in m, k
    assert m["n"] == 48 and m["nfe"] == 3 and m["sampler_name"] == "euler"  # the ckpt's sampler
    assert m["fid"] > m["floor"]["fid"] > 0  # an untrained model is far from real data
    assert m["protocol"]["reference_n"] == 10_000
    assert (out / "samples.png").is_file() and (out / "per_step.png").is_file()
    rows = list(csv.DictReader(open(out / "per_step.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for name in ("denoise", "training_sigmas", "one_step_from_noise"):
        assert (out / "diagnostics" / f"{name}.png").is_file()


@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_eval_multirun_and_report(tiny_ckpt, tmp_path, data_root):
    r = _eval("-m", f"ckpt={tiny_ckpt}", "logger=none", "sampler=euler,heun",
              "sampler.steps=2,0", "eval.n_samples=32", "eval.batch_size=32", "eval.floor=false",
              "eval.diagnostics=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 1  # two of the four jobs fail (steps=0) ...
    assert "sampler.steps must be >= 1" in r.stderr
    rows, swept = collect(tmp_path / "sweep")
    assert len(rows) == 4 and set(swept) == {"sampler", "sampler.steps"}
    ok = [x for x in rows if x["status"] == "ok"]
    bad = [x for x in rows if x["status"] == "failed"]
    assert len(ok) == 2 and len(bad) == 2  # ... and the other two still ran
    assert all("sampler.steps" in x["error"] for x in bad)
    assert sorted(x["nfe"] for x in ok) == [2, 3]  # euler 2 steps, heun 2 steps = 2N - 1
    files = write_report(tmp_path / "sweep")
    md = files["md"].read_text()
    assert "failed" in md and "4 job(s), 2 ok, 2 failed" in md
    assert files["fid_vs_nfe"].is_file()
    r = subprocess.run([sys.executable, "-m", "diffexp.cli.report", str(tmp_path / "nowhere")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no such folder" in r.stderr


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "karras"])
def test_every_sampler_on_every_objective(objective):
    c = validate_train_config(compose_train(
        [f"objective={objective}", "data=synthetic", "train.batch_size=16", *TINY_MODEL]))
    if objective == "karras":
        c["objective"]["sigma_data"] = 0.5
    m = DiffusionModule.from_config(c)
    for name in sampling.SAMPLERS:
        cfg = {"name": name, "steps": 3}
        x0, u8, nfe = m.generate(4, seed=1, sampler_cfg=cfg, batch_size=4)
        assert x0.shape == (4, 1, 32, 32) and torch.isfinite(x0).all(), name
        assert u8.dtype == torch.uint8 and u8.shape == (4, 1, 28, 28)
        assert nfe == sampling.nfe(name, 3), name
        # the images are x0 decoded by hand: the padding cropped, [-scale, scale] -> 0..255
        p, scale = c["data"]["pad"], c["data"]["scale"]
        by_hand = ((x0[..., p:-p, p:-p].float() / scale).clamp(-1, 1) + 1) * 127.5
        assert torch.equal(u8, by_hand.round().to(torch.uint8)), name
        # and the seed fixes them
        assert torch.equal(m.generate(4, seed=1, sampler_cfg=cfg, batch_size=4)[1], u8), name


def test_clip_denoised_bounds_every_estimate():
    c = validate_train_config(compose_train(["data=synthetic", "data.scale=0.5", "train.batch_size=16",
                                                   *TINY_MODEL]))
    m = DiffusionModule.from_config(c)
    seen = []
    for name in ["euler", "heun", "dpmpp_2m"]:
        x0, _, _ = m.generate(3, seed=0, batch_size=3, callback=lambda i: seen.append(i["x0_hat"]),
                              sampler_cfg={"name": name, "steps": 3, "clip_denoised": True})
        assert float(x0.abs().max()) <= 0.5 + 1e-6
    assert seen and all(float(t.abs().max()) <= 0.5 + 1e-6 for t in seen)
    from diffexp.config import ConfigError
    with pytest.raises(ConfigError, match="sampler.clip_denoised"):
        validate_train_config(compose_train(["sampler.clip_denoised=maybe"]))
