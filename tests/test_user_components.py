"""A user's own components from config (``_target_`` entries, components.py): extra Lightning
callbacks and loggers, from a project folder outside the package (tests/external/myproject: its
own conf/ and module), and the one-line errors of a wrong entry."""

from __future__ import annotations

import pytest

from diffexp.components import build, check_entries
from diffexp.config import ConfigError

from .helpers import REPO, TINY_MODEL, compose_train, run_cli

PROJECT = REPO / "tests" / "external" / "myproject"
RUN = ["data=synthetic", "data.subset=200", "data.val_size=40", "trainer.accelerator=cpu",
       "train.batch_size=16", "train.epochs=1", "train.eval_at_end=false",
       "train.n_sample_images=4", "sampler.steps=2"]
TINY = [*RUN, *TINY_MODEL]


@pytest.mark.parametrize("entries,needle", [
    ({"x": {"_target_": "no_such_pkg.Thing"}}, "callbacks.extra.x._target_=no_such_pkg.Thing: "
                                               "cannot import no_such_pkg"),
    ({"x": {"_target_": "pytorch_lightning.callbacks.NoSuchCallback"}},
     "pytorch_lightning.callbacks has no 'NoSuchCallback'"),
    ({"x": {"_target_": "EarlyStopping"}}, "must be the dotted path of a class"),
    ({"x": {"monitor": "val/loss"}}, "callbacks.extra.x must be a mapping with a _target_"),
    ([1, 2], "callbacks.extra must be a mapping of names"),
])
def test_a_wrong_entry_is_one_line_naming_it(entries, needle):
    with pytest.raises(ConfigError) as e:
        check_entries(entries, "callbacks.extra")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_null_drops_an_entry_and_a_good_one_builds():
    import pytorch_lightning as pl

    kept = check_entries({"a": None, "b": {"_target_": "pytorch_lightning.callbacks.Timer",
                                           "duration": "00:00:01:00"}}, "callbacks.extra")
    assert list(kept) == ["b"]
    timer = build(kept["b"], "callbacks.extra.b", pl.Callback)
    assert type(timer).__name__ == "Timer" and timer._duration == 60.0


def test_building_the_wrong_kind_or_a_failing_constructor_is_one_line(tmp_path):
    import pytorch_lightning as pl

    with pytest.raises(ConfigError) as e:  # a logger where a callback belongs
        build({"_target_": "pytorch_lightning.loggers.CSVLogger"}, "callbacks.extra.c",
              pl.Callback, save_dir=str(tmp_path))
    assert "built a CSVLogger, not a pytorch_lightning.callbacks" in str(e.value)
    with pytest.raises(ConfigError) as e:  # the constructor refuses its argument
        build({"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": "val/loss",
               "mode": "sideways"}, "callbacks.extra.stop", pl.Callback)
    msg = str(e.value)
    assert msg.startswith("callbacks.extra.stop: pytorch_lightning.callbacks.EarlyStopping(...) "
                          "failed:") and "sideways" in msg and "\n" not in msg


def test_a_logger_gets_the_run_folder_unless_given_one(tmp_path):
    from pytorch_lightning.loggers import CSVLogger, Logger

    lg = build({"_target_": "pytorch_lightning.loggers.CSVLogger"}, "logger.extra.csv", Logger,
               save_dir=str(tmp_path / "run"))
    assert isinstance(lg, CSVLogger) and lg.save_dir == str(tmp_path / "run")
    lg = build({"_target_": "pytorch_lightning.loggers.CSVLogger", "save_dir": "elsewhere"},
               "logger.extra.csv", Logger, save_dir=str(tmp_path / "run"))
    assert lg.save_dir == "elsewhere"


def test_the_entries_are_validated_with_the_config():
    c = compose_train([*TINY, "+callbacks.extra.t._target_=pytorch_lightning.callbacks.Timer",
                       "+logger.extra.c._target_=pytorch_lightning.loggers.CSVLogger"])
    from diffexp.config import validate_train_config

    v = validate_train_config(c)
    assert v["callbacks"]["extra"]["t"]["_target_"] == "pytorch_lightning.callbacks.Timer"
    assert v["logger"]["extra"]["c"]["_target_"] == "pytorch_lightning.loggers.CSVLogger"
    with pytest.raises(ConfigError) as e:
        validate_train_config(compose_train([*TINY, "+callbacks.extra.t._target_=nope.Nope"]))
    assert str(e.value).startswith("callbacks.extra.t._target_=nope.Nope: cannot import nope")


def test_a_users_project_trains_with_its_own_callback_and_a_second_logger(tmp_path):
    """From the user's folder: their experiment (conf/experiment/mine.yaml) names their callback
    (mycomponents.StepCounter, imported from the folder the command runs in) and a CSV logger
    beside logger=none; diffexp is not edited."""
    run = tmp_path / "run"
    out = run_cli("train.py", "-cd", "conf", "experiment=mine", *TINY, f"hydra.run.dir={run}",
                  cwd=PROJECT, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    steps = (200 - 40) // 16
    assert (run / "steps.txt").read_text().strip() == str(steps)
    metrics = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in metrics[0] and len(metrics) > 1


def test_a_bad_target_on_the_command_line_is_one_line_and_leaves_no_folder(tmp_path):
    run = tmp_path / "run"
    out = run_cli("train.py", *TINY, "+callbacks.extra.x._target_=mycomponents.NoSuch",
                  f"hydra.run.dir={run}", cwd=PROJECT, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1] == ("error: callbacks.extra.x._target_=mycomponents.NoSuch: mycomponents "
                         "has no 'NoSuch'"), out.stderr
    assert not run.exists()


# ------------------------------------------------------------------------------ a user's network
@pytest.fixture(scope="module")
def tinynet_run(tmp_path_factory):
    """conf/model/tinynet.yaml names mycomponents.TinyNet: trained from the user's folder."""
    run = tmp_path_factory.mktemp("tinynet") / "run"
    out = run_cli("train.py", "-cd", "conf", *RUN, "model=tinynet", "logger=none",
                  f"hydra.run.dir={run}", cwd=PROJECT, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def _eval(ckpt, out_dir, *args):
    import json

    out = run_cli("eval.py", "-cd", "conf", f"ckpt={ckpt}", "eval.n_samples=64",
                  "eval.batch_size=64", "logger=none", "eval.floor=false",
                  "eval.diagnostics=false", f"hydra.run.dir={out_dir}", *args, cwd=PROJECT,
                  env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads((out_dir / "metrics.json").read_text())


def test_a_users_network_trains_and_evaluates_from_their_project(tinynet_run, tmp_path):
    """diffexp builds TinyNet (passing ``conditioned``, which its constructor names), trains it,
    and eval.py rebuilds it from the checkpoint, both run from the user's folder."""
    import torch

    ckpt = torch.load(tinynet_run / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["hyper_parameters"]["cfg"]["model"]["_target_"] == "mycomponents.TinyNet"
    assert any(k.startswith("net.emb.") for k in ckpt["state_dict"])  # built conditioned
    metrics = _eval(tinynet_run / "checkpoints" / "last.ckpt", tmp_path / "eval",
                    "sampler.steps=2")
    assert metrics["fid"] > 0 and metrics["n"] == 64 and metrics["model"]["name"] == "tinynet"


# ------------------------------------------------------------------------------ a user's sampler
def test_a_users_sampler_registers_from_its_yaml_and_equals_the_euler_it_implements(
        tinynet_run, tmp_path):
    """conf/sampler/plain_euler.yaml names mycomponents.sample_plain_euler (Euler steps written by
    the user): eval.py samples with it, and its images, hence every metric, equal the built-in
    euler sampler's on the same seeds and grid."""
    ckpt = tinynet_run / "checkpoints" / "last.ckpt"
    mine = _eval(ckpt, tmp_path / "mine", "sampler=plain_euler", "sampler.steps=4")
    ref = _eval(ckpt, tmp_path / "ref", "sampler=euler", "sampler.steps=4")
    assert mine["sampler_name"] == "plain_euler" and mine["nfe"] == ref["nfe"] == 4
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert mine[key] == ref[key], key
    other = _eval(ckpt, tmp_path / "scaled", "sampler=plain_euler", "sampler.steps=4",
                  "sampler.scale=0.5")  # its own option acts
    assert other["fid"] != ref["fid"]


def test_a_users_sampler_is_checked_like_a_shipped_one(monkeypatch):
    from diffexp import sampling

    monkeypatch.syspath_prepend(str(PROJECT))
    base = {"name": "plain_euler", "_target_": "mycomponents.sample_plain_euler", "steps": 3}
    sampling.validate_sampler_config(base)
    assert sampling.nfe("plain_euler", 5) == 5
    with pytest.raises(ValueError) as e:  # an option the function does not have
        sampling.validate_sampler_config({**base, "eta": 1.0})
    assert "sampler.eta is not an option of sampler 'plain_euler' (valid options: scale)" \
        in str(e.value)
    with pytest.raises(ValueError) as e:  # a built-in's name
        sampling.validate_sampler_config({**base, "name": "euler"})
    assert "sampler.name='euler' is a built-in sampler" in str(e.value)
    with pytest.raises(ValueError) as e:
        sampling.validate_sampler_config({**base, "_target_": "mycomponents.nothing"})
    assert "mycomponents has no 'nothing'" in str(e.value)


@pytest.mark.parametrize("extra,needle", [
    (["+model.bogus=1"], "model: mycomponents.TinyNet(...) failed: TypeError"),
    (["model._target_=torch.nn.Identity"], "the network failed on a batch of shape (2, 1, 32, 32)"),
    (["model._target_=mycomponents.StepCounter", "~model.channels"],
     "built a StepCounter, not a torch.nn"),
])
def test_a_network_that_breaks_the_contract_is_one_line_and_leaves_no_folder(tmp_path, extra,
                                                                             needle):
    run = tmp_path / "run"
    out = run_cli("train.py", "-cd", "conf", *RUN, "model=tinynet", "logger=none", *extra,
                  f"hydra.run.dir={run}", cwd=PROJECT, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert needle in lines[-1] and lines[-1].startswith("error: model"), out.stderr[-2000:]
    assert not run.exists()


def test_editing_a_users_module_changes_the_training_fingerprint(tmp_path, monkeypatch):
    from diffexp.runs.store import user_code_hash

    (tmp_path / "usernet_fp.py").write_text("import torch\nclass Net(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    c = {"model": {"name": "n", "_target_": "usernet_fp.Net"}, "callbacks": {"extra": {}}}
    before = user_code_hash(c)
    assert before is not None and user_code_hash(c) == before  # the same source, the same hash
    (tmp_path / "usernet_fp.py").write_text("import torch\nclass Net(torch.nn.Module):\n"
                                            "    width = 2\n")
    assert user_code_hash(c) != before
    assert user_code_hash({"model": {"name": "unet_tiny"}}) is None  # diffexp's own: no user code


# ----------------------------------------------------------------------------- a user's schedule
def test_a_users_schedule_is_checked_on_its_maps(monkeypatch):
    import math

    import torch

    from diffexp.config import validate_schedule
    from diffexp.schedules import build_schedule

    monkeypatch.syspath_prepend(str(PROJECT))
    cfg = {"name": "logsnr_linear", "_target_": "mycomponents.LogSNRLinear", "logsnr_max": 10.0,
           "logsnr_min": -10.0, "t_min": 0.0, "t_max": 1.0}
    assert validate_schedule(cfg) == cfg
    sched = build_schedule(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    # closed form: sigma = exp(-logsnr / 2), logsnr = 10 - 20 t
    assert torch.allclose(sched.sigma(t), torch.exp(-(10 - 20 * t) / 2), rtol=1e-12)
    assert sched.sigma_min == pytest.approx(math.exp(-5)) and sched.sigma_max == \
        pytest.approx(math.exp(5))
    with pytest.raises(ConfigError) as e:
        validate_schedule({**cfg, "_target_": "mycomponents.Backwards"})
    assert "needs sigma(t) increasing" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        validate_schedule({**cfg, "logsnr_max": 800.0})  # sigma_min = e^-400 = 0 in float64
    assert "needs sigma(t) increasing" in str(e.value) or "needs a noise range" in str(e.value)
    with pytest.raises(ValueError) as e:
        validate_schedule({**cfg, "_target_": "mycomponents.TinyNet"})
    assert "is not a subclass of diffexp.schedules.Schedule" in str(e.value)


def test_a_users_project_trains_and_samples_with_its_schedule_network_and_sampler(tmp_path):
    """All three of the user's parts at once, from their folder: schedule=logsnr_linear,
    model=tinynet, sampler=plain_euler, with the end-of-run evaluation."""
    import json

    run = tmp_path / "run"
    out = run_cli("train.py", "-cd", "conf", *RUN, "schedule=logsnr_linear", "model=tinynet",
                  "sampler=plain_euler", "sampler.steps=3", "logger=none",
                  "train.eval_at_end=true", "eval.n_samples=64", "eval.batch_size=64",
                  "eval.floor=false", "eval.diagnostics=false", f"hydra.run.dir={run}",
                  cwd=PROJECT, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["sampler_name"] == "plain_euler" and metrics["nfe"] == 3
    assert metrics["model"]["schedule"] == "logsnr_linear" and metrics["fid"] > 0
