"""Config validation: every bad setting stops before any work with a one-line error naming it."""


import pytest

from diffexp.config import (
    ConfigError,
    check_group_choices,
    check_moved_settings,
    validate_train_config,
)

from .helpers import compose_train, run_cli

BAD = [
    (["sampler.steps=0"], "sampler.steps"),
    (["train.batch_size=0"], "train.batch_size"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=abc"], "optim.lr"),
    (["data.scale=0"], "data.scale"),
    (["data.scale=-2"], "data.scale"),
    (["schedule=karras", "schedule.sigma_min=90"], "schedule.sigma_max"),
    (["schedule=cosine", "schedule.start=0.9", "schedule.end=0.1"], "schedule.start"),
    (["schedule=sigmoid", "schedule.tau=0"], "schedule.tau"),
    (["schedule=cosine", "schedule.tau=-1"], "schedule.tau"),
    (["schedule=cosine", "schedule.t_max=1.0"], "schedule.t_max"),
    (["schedule=linear", "+schedule.tau=1"], "schedule.tau"),
    (["objective=karras", "objective.sigma_data=-0.5"], "objective.sigma_data"),
    (["objective=karras", "objective.sigma_data=wrong"], "objective.sigma_data"),
    (["optim.name=sgd"], "optim.name"),
    (["optim.lr_schedule=step"], "optim.lr_schedule"),
    (["train.ema_decay=1.0"], "train.ema_decay"),
    (["train.epochs=0"], "train.epochs"),
    (["trainer.precision=8"], "trainer.precision"),
    (["model.blocks=0"], "model.blocks"),
    (["model.attn_levels=[5]"], "model.attn_levels"),
    (["model.patch=0"], "model.patch"),
    (["data.pad=0", "model=unet_course"], "model.patch"),           # 28 does not halve 3 times
    (["data.pad=0", "model.patch=2"], "model.patch"),               # 14 does not halve twice
    (["logger.mode=sometimes"], "logger.mode"),
    (["seed=-1"], "seed"),
    (["+foo=1"], "foo"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path"),
    (["grid.rho=3"], "grid.rho"),                      # rho on the schedule grid would not act
    (["grid=exponential", "grid.rho=3"], "grid.rho"),
    (["grid=karras", "grid.rho=0"], "grid.rho"),
    (["grid=karras", "grid.sigma_min=5", "grid.sigma_max=1"], "grid.sigma_min"),
    (["grid=ckpt"], "grid=ckpt"),
    (["+sampler.rho=3"], "sampler.rho"),               # the old flat spelling, from any source
    (["schedule=karras", "+schedule.rho=3"], "schedule.rho"),
    (["objective=karras", "objective.normalize_input=true"], "objective.normalize_input"),
    (["objective.normalize_input=maybe"], "objective.normalize_input"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_name_the_key(overrides, key):
    cfg = compose_train(overrides)
    with pytest.raises(ConfigError) as e:
        validate_train_config(cfg)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


@pytest.mark.parametrize("overrides", [
    [], ["schedule=karras", "objective=karras"], ["schedule=sigmoid", "schedule.tau=0.7",
                                                  "objective=v", "data.scale=0.5"],
    ["schedule=linear", "objective=x0", "sampler=euler"], ["experiment=course_karras"],
    ["grid=karras", "grid.rho=3", "grid.sigma_max=20"], ["grid=exponential", "sampler=heun"],
    ["objective=v", "objective.normalize_input=true", "data.scale=0.25"],
    ["objective=no_t", "objective.normalize_input=true", "objective.use_predicted_noise_level=false"],
    ["experiment=course_cosine"], ["experiment=quickstart"], ["debug=fast"],
    ["data.pad=0", "model.patch=2", "model.widths=[32,64]", "model.attn_levels=[1]"],
])
def test_good_configs_validate(overrides):
    c = validate_train_config(compose_train(overrides))
    assert c["train"]["batch_size"] >= 1 and isinstance(c["seed"], int)


def test_course_recipes_match_the_lesson():
    for name, lr in [("course_cosine", 4e-3), ("course_karras", 1e-2)]:
        c = validate_train_config(compose_train([f"experiment={name}"]))
        assert c["train"]["batch_size"] == 512 and c["train"]["epochs"] == 25
        assert c["optim"]["eps"] == 1e-5 and c["optim"]["lr"] == lr
        assert c["optim"]["lr_schedule"] == "onecycle" and c["model"]["name"] == "unet_course"


def test_unknown_group_option_one_line():
    with pytest.raises(ConfigError, match=r"schedule='quadratic'.*cosine.*karras"):
        check_group_choices(["schedule=quadratic"])
    with pytest.raises(ConfigError, match="sampler='eulr'"):
        check_group_choices(["-m", "sampler=euler,eulr"])
    check_group_choices(["schedule=cosine", "schedule.tau=2", "-m", "objective=eps,v"])


@pytest.mark.e2e  # train.py in a subprocess
def test_cli_bad_value_exits_cleanly(tmp_path):
    r = run_cli("train.py", "schedule.tau=-1", "logger=none", cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and "schedule.tau" in err[0], r.stderr
    # nothing half-written: no run folder is left behind
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    r = run_cli("train.py", "objective=score", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "objective='score'" in r.stderr and "karras" in r.stderr


@pytest.mark.e2e  # train.py in a subprocess
def test_cli_help_lists_groups(tmp_path):
    r = run_cli("train.py", "--help", cwd=tmp_path, timeout=120)
    assert r.returncode == 0
    assert "grid=karras grid.rho=3,5,7" in r.stdout and "sampler.rho" not in r.stdout
    for group, option in [("schedule", "sigmoid"), ("objective", "karras"), ("model", "unet_course"),
                          ("sampler", "heun"), ("experiment", "course_karras"), ("logger", "wandb"),
                          ("grid", "karras"), ("experiment", "study_scale")]:
        assert f"{group}:" in r.stdout and option in r.stdout, (group, option)


@pytest.mark.parametrize("arg,fix", [
    ("sampler.rho=3,5,7", "write grid=karras grid.rho=3,5,7"),
    ("sampler.grid=karras", "write grid=karras"),
    ("+sampler.sigma_min=0.01", "write grid.sigma_min=0.01"),
    ("schedule.rho=5", "write grid=karras grid.rho=5"),
])
def test_old_grid_spellings_say_what_to_write(arg, fix):
    with pytest.raises(ConfigError) as e:
        check_moved_settings(["-m", "data.scale=1,2", arg])
    assert str(e.value).endswith(fix) and "\n" not in str(e.value)
    check_moved_settings(["grid=karras", "grid.rho=3,5,7", "sampler.steps=10"])  # the new form


@pytest.mark.e2e  # train.py in a subprocess
def test_cli_old_rho_spelling_exits_cleanly(tmp_path):
    r = run_cli("train.py", "-m", "data.scale=0.5,1", "sampler.rho=3,5,7", cwd=tmp_path,
                timeout=120)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "sampler.rho" in err[0] and "grid=karras grid.rho=3,5,7" in err[0]
    assert not (tmp_path / "runs").exists()


def test_grid_group_reaches_the_config():
    c = validate_train_config(compose_train(["grid=karras", "grid.rho=3"]))
    assert c["grid"] == {"name": "karras", "rho": 3.0, "sigma_min": None, "sigma_max": None}
    assert "rho" not in c["sampler"] and "grid" not in c["sampler"]
    c = validate_train_config(compose_train([]))
    assert c["grid"]["name"] == "schedule" and c["grid"]["rho"] is None
    c = validate_train_config(compose_train(["sweep=scale_rho"]))
    assert c["grid"]["name"] == "karras"  # the named sweep's rho acts


def test_checkpoint_configs_from_before_the_grid_group_keep_their_meaning():
    from diffexp.build import upgrade_config

    old = {"schedule": {"name": "cosine"}, "sampler": {"name": "euler", "steps": 5,
                                                      "grid": "karras", "rho": 3.0,
                                                      "sigma_min": None, "sigma_max": None}}
    new = upgrade_config(old)
    assert new["sampler"] == {"name": "euler", "steps": 5}
    assert new["grid"] == {"name": "karras", "rho": 3.0, "sigma_min": None, "sigma_max": None}
    # rho without the karras grid never acted: it is dropped, not moved
    old = {"schedule": {"name": "cosine"}, "sampler": {"name": "ddim", "grid": "schedule",
                                                      "rho": 7.0}}
    assert upgrade_config(old)["grid"]["rho"] is None
    # a karras schedule's own grid used the schedule's rho: the same grid, written explicitly
    old = {"schedule": {"name": "karras", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 3.0},
           "sampler": {"name": "heun", "grid": "schedule", "rho": 7.0}}
    g = upgrade_config(old)["grid"]
    assert g == {"name": "karras", "rho": 3.0, "sigma_min": 0.002, "sigma_max": 80.0}
    old = {"schedule": {"name": "karras", "rho": 7.0}, "sampler": {"name": "heun"}}
    new = upgrade_config(old)
    assert "rho" not in new["schedule"] and new["grid"]["name"] == "schedule"
