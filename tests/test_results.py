"""The RESULTS.md machinery: the results_* recipes, several end-of-run samplers per training job
(``eval.samplers``), ``objective.sigma_data_factor``, sweeps named from experiment configs, and
reports with one row per job and sampler."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from diffexp.build import build_objective, build_schedule, upgrade_config
from diffexp.cli.common import swept_keys
from diffexp.config import CONF_DIR, ConfigError, validate_eval_samplers, validate_train_config
from diffexp.runs.report import collect, write_report
from diffexp.runs.train import train
from diffexp.sampling import nfe

from .helpers import TINY_MODEL, compose_train

RESULTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("results_*.yaml"))


def test_six_results_recipes_exist():
    assert RESULTS == ["results_karras_samplers", "results_no_t", "results_scale_cosine",
                       "results_scale_karras", "results_schedule", "results_sigma_data"]


@pytest.mark.parametrize("name", RESULTS)
def test_results_recipe_validates_and_names_its_sweep(name):
    c = validate_train_config(compose_train([f"experiment={name}"]))
    assert c["name"] == name and c["model"]["name"] == "unet_tiny"
    raw = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())
    params = raw.get("hydra", {}).get("sweeper", {}).get("params", {})
    # job folders of `train.py -m experiment=NAME` are named from the recipe's swept keys
    assert swept_keys([f"experiment={name}"]) == list(params)
    for label, s in c["eval"]["samplers"].items():
        assert s["name"] in label and s["steps"] >= 1


def test_karras_samplers_recipe_resolves_each_sampler_from_its_own_yaml():
    c = validate_train_config(compose_train(["experiment=results_karras_samplers"]))
    s = c["eval"]["samplers"]
    assert s["euler_ancestral_20_eta0.5"]["eta"] == 0.5
    assert s["heun_20"]["s_churn"] == 0.0 and s["heun_20"]["steps"] == 20
    assert "eta" not in s["heun_10"] and s["lms_20"]["order"] == 4
    assert {nfe(v["name"], v["steps"]) for k, v in s.items() if k != "euler_100"} == {19, 20, 39}


def test_eval_sampler_without_name_starts_from_the_run_sampler():
    c = validate_train_config(compose_train(
        ["sampler=heun", "sampler.s_churn=5", "+eval.samplers={short:{steps:3}}"]))
    assert c["eval"]["samplers"]["short"] == {**c["sampler"], "steps": 3}


@pytest.mark.parametrize("override,needle", [
    ("+eval.samplers={x:{name:nope}}", "eval.samplers.x.name"),
    ("+eval.samplers={x:{name:euler,eta:0.5}}", "eval.samplers.x"),
    ("+eval.samplers={x:{name:heun,steps:0}}", "eval.samplers.x"),
    ("+eval.samplers={x:3}", "eval.samplers.x"),
    ("+eval.samplers={x:{name:euler,grid:{rho:3}}}", "eval.samplers.x: grid.rho acts only on"),
    ("+eval.samplers={x:{name:euler,grid:{name:cosine}}}", "eval.samplers.x: grid.name"),
    ("+eval.samplers={x:{name:euler,rho:3}}", "eval.samplers.x: sampler.rho is no longer"),
])
def test_bad_eval_samplers_name_the_entry(override, needle):
    with pytest.raises(ConfigError) as e:
        validate_train_config(compose_train([override]))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg
    if "nope" in override:
        assert "heun" in msg and "dpmpp_2m" in msg and "ckpt" not in msg


def test_eval_sampler_entries_may_carry_their_own_grid():
    c = validate_train_config(compose_train(
        ["grid=karras", "grid.rho=5", "+eval.samplers={a:{name:euler,grid:{rho:3}},"
         "b:{name:heun,grid:{name:exponential}},c:{name:lms}}"]))
    s = c["eval"]["samplers"]
    assert s["a"]["grid"] == {"name": "karras", "rho": 3.0, "sigma_min": None, "sigma_max": None}
    assert s["b"]["grid"]["name"] == "exponential" and s["b"]["grid"]["rho"] is None
    assert "grid" not in s["c"]  # the run's own grid (karras, rho 5)


def test_eval_sampler_labels_must_be_folder_names():
    for label in ("../up", "..", "a b"):
        with pytest.raises(ConfigError, match="eval.samplers labels must be folder-safe"):
            validate_eval_samplers({label: {"steps": 3}}, {"name": "euler", "steps": 5})
    assert list(validate_eval_samplers({"ok_1.5": {"steps": 3}}, {"name": "euler", "steps": 5}))


@pytest.mark.parametrize("overrides,key", [
    (["objective=eps", "+objective.sigma_data_factor=0.5"], "objective.sigma_data_factor"),
    (["objective=karras", "objective.sigma_data_factor=0"], "objective.sigma_data_factor"),
    (["objective=karras", "objective.sigma_data_factor=-1"], "objective.sigma_data_factor"),
])
def test_bad_sigma_data_factor(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate_train_config(compose_train(overrides))
    assert key in str(e.value)


def test_sigma_data_factor_scales_the_preconditioning():
    sched = build_schedule({"name": "karras", "sigma_min": 0.002, "sigma_max": 80.0,
                            "rho": 7.0, "p_mean": -1.2, "p_std": 1.2})
    full = build_objective({"name": "karras", "sigma_data": 0.6, "sigma_data_factor": 1.0,
                            "normalize_input": False, "c_noise": "log"}, sched)
    half = build_objective({"name": "karras", "sigma_data": 0.6, "sigma_data_factor": 0.5,
                            "normalize_input": False, "c_noise": "log"}, sched)
    assert half.sigma_data == pytest.approx(0.3) and full.sigma_data == pytest.approx(0.6)
    # c_skip = sd^2 / (sigma^2 + sd^2) is exactly 1/2 where sigma equals the effective sigma_data
    for obj, sd in ((full, 0.6), (half, 0.3)):
        c_skip, c_out, c_in = obj.scalings(torch.tensor([sd], dtype=torch.float64))
        assert c_skip.item() == pytest.approx(0.5)
        assert c_out.item() == pytest.approx(sd / 2 ** 0.5)
        assert c_in.item() == pytest.approx(1 / (sd * 2 ** 0.5))
    # checkpoints written before the factor existed build the measured value unchanged
    old = build_objective(upgrade_config({"objective": {"name": "karras", "sigma_data": 0.6}})
                          ["objective"], sched)
    assert old.sigma_data == pytest.approx(0.6)


@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_train_evaluates_each_end_sampler(tmp_path):
    c = validate_train_config(compose_train(
        ["data=synthetic", "debug=fast", "logger=csv", "train.batch_size=16", *TINY_MODEL,
         "schedule=karras", "objective=karras", "objective.sigma_data_factor=0.5",
         "train.eval_at_end=true", "eval.n_samples=8", "eval.batch_size=8", "eval.floor=false",
         "+eval.samplers={heun_3:{name:heun,steps:3},euler_2:{name:euler,steps:2}}"]))
    s = train(c, tmp_path / "run")
    assert c["objective"]["sigma_data"] == "auto"  # the caller's config is not changed
    measured = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["objective"][
        "sigma_data"]
    assert isinstance(measured, float) and 0.3 < measured < 1.0
    assert set(s["eval"]) == {"heun_3", "euler_2"}
    for label, want_nfe in (("heun_3", 5), ("euler_2", 2)):
        m = json.loads((tmp_path / "run" / "eval" / label / "metrics.json").read_text())
        assert m["nfe"] == want_nfe == s["eval"][label]["nfe"] and m["n"] == 8
        assert m["fid"] == s["eval"][label]["fid"]
        # one name, one number: the summary and every metrics.json give the sigma_data the
        # objective used (measured x factor) and what was measured
        assert m["model"]["sigma_data"] == pytest.approx(0.5 * measured) == s["sigma_data"]
        assert m["model"]["sigma_data_measured"] == measured == s["sigma_data_measured"]
        assert m["model"]["sigma_data_factor"] == 0.5
        assert m["host"]["cores"] == os.cpu_count() and m["host"]["torch_threads"] >= 1
    # diagnostics once per run, with the first sampler
    assert (tmp_path / "run" / "eval" / "heun_3" / "diagnostics").is_dir()
    assert not (tmp_path / "run" / "eval" / "euler_2" / "diagnostics").exists()
    rows, swept = collect(tmp_path / "run")
    assert [r["overrides"]["eval"] for r in rows] == ["euler_2", "heun_3"] and "eval" in swept


def _fake_job(root: Path, name: str, overrides: list[str], evals: dict[str, float] | None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "summary.json").write_text(json.dumps(
        {"wall_time_s": 100.0, "final_train_loss": 0.1, "final_val_loss": 0.2,
         "parameters": 1234, "epochs": 1}))
    for label, fid in (evals or {}).items():
        d = job / "eval" / label
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(
            {"fid": fid, "kid_mean": fid / 100, "kid_std": 0.01, "n": 512, "nfe": 20,
             "sampler_name": label.split("_")[0], "steps": 20, "wall_time_s": 10.0,
             "device": "cpu", "floor": {"fid": 1.3, "kid_mean": 0.0},
             "model": {"parameters": 1234, "epochs": 1}}))


def test_report_has_one_row_per_job_and_end_sampler(tmp_path):
    _fake_job(tmp_path, "0_x=1", ["x=1"], {"euler_20": 30.0, "lms_20": 25.0})
    _fake_job(tmp_path, "1_x=2", ["x=2"], {"euler_20": 40.0, "lms_20": 35.0})
    _fake_job(tmp_path, "2_x=3", ["x=3"], None)  # trained, never evaluated
    rows, swept = collect(tmp_path)
    assert swept == ["eval", "x"]
    got = {(r["overrides"]["x"], r["overrides"].get("eval")): r.get("fid") for r in rows}
    assert got == {("1", "euler_20"): 30.0, ("1", "lms_20"): 25.0, ("2", "euler_20"): 40.0,
                   ("2", "lms_20"): 35.0, ("3", None): None}
    r = next(r for r in rows if r["overrides"].get("eval") == "lms_20")
    assert (r["train_s"], r["eval_s"], r["wall_time_s"]) == (100.0, 10.0, 110.0)
    assert r["parameters"] == 1234 and r["epochs"] == 1 and r["device"] == "cpu"
    md = write_report(tmp_path)["md"].read_text()
    assert "| eval | x |" in md and "Lowest FID: 25" in md


def test_resume_accepts_checkpoints_from_before_sigma_data_factor(tmp_path):
    from diffexp.runs.train import check_resume

    c = validate_train_config(compose_train(["objective=karras", "schedule=karras"]))
    old = {**c, "objective": {"name": "karras", "sigma_data": 0.66}}  # no factor recorded
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": old}}, tmp_path / "old.ckpt")
    c["ckpt_path"] = str(tmp_path / "old.ckpt")
    check_resume(c)  # factor 1 == the measured value used as is: same objective
    c["objective"]["sigma_data_factor"] = 0.5
    with pytest.raises(ConfigError, match="objective.sigma_data_factor=0.5 differs"):
        check_resume(c)


def test_resume_accepts_checkpoints_from_before_the_grid_group_and_normalize_input(tmp_path):
    """A checkpoint config with a karras schedule rho of 7, the flat sampler grid keys and no
    normalize_input is the same training as today's config (resume accepts it)."""
    from diffexp.runs.train import check_resume

    c = validate_train_config(compose_train(["objective=eps", "schedule=karras"]))
    old = {**c, "schedule": {**c["schedule"], "rho": 7.0},
           "objective": {"name": "eps", "sigma_data": None, "sigma_data_factor": None},
           "sampler": {**c["sampler"], "grid": "schedule", "rho": 7.0, "sigma_min": None,
                       "sigma_max": None}}
    del old["grid"]
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": old}}, tmp_path / "old.ckpt")
    c["ckpt_path"] = str(tmp_path / "old.ckpt")
    check_resume(c)
    c["objective"]["normalize_input"] = True
    with pytest.raises(ConfigError, match="objective.normalize_input=True differs"):
        check_resume(c)
