"""train.time_budget_s: the step count a budget fits (arithmetic), a budgeted run end to end (the
probe leaves the run's random streams alone: trainer.max_steps=N trains the same weights), resume,
the settings' checks; and trainer.precision=bf16-if-native."""

import json

import pytest
import torch

from diffexp.config import ConfigError, validate_train_config
from diffexp.runs import budget as budget_mod
from diffexp.runs import train as train_mod
from diffexp.runs.budget import ROUND_TO, steps_for_budget
from diffexp.runs.train import time_budget, train

from .helpers import TINY_MODEL, compose_train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _cfg(*extra):
    return validate_train_config(compose_train(
        ["data=synthetic", "data.subset=1000", "logger=none", *TINY_MODEL,
         "trainer.accelerator=cpu", "train.batch_size=16", "train.epochs=2",
         "train.eval_at_end=false", "train.n_sample_images=4", "sampler.steps=2", *extra]))


# ------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("budget,pace,per_epoch,epochs,want", [
    (400, 0.1, 10_000, 1, 4000),      # exactly 4,000 steps fit
    (405, 0.1, 10_000, 1, 4000),      # 4,050 fit: rounded down to a multiple of 100
    (399.9, 0.1, 10_000, 1, 3900),    # 3,999 fit
    (400, 0.1, 3625, 1, 3625),        # the epochs cap
    (400, 0.1, 3625, 2, 4000),        # a second epoch allowed: the budget decides
    (5, 0.1, 3625, 1, 50),            # under one rounding unit: the steps that fit
])
def test_steps_for_budget(budget, pace, per_epoch, epochs, want):
    assert steps_for_budget(budget, pace, per_epoch, epochs, onecycle=True) == want
    assert want * pace <= budget  # never more steps than fit


def test_a_budget_too_small_for_onecycle_names_the_setting():
    with pytest.raises(ConfigError) as e:
        steps_for_budget(0.25, 0.1, 100, 1, onecycle=True)
    msg = str(e.value)
    assert msg.startswith("train.time_budget_s=0.25 fits 2 optimizer step(s)") and "at least 3" in msg
    assert steps_for_budget(0.25, 0.1, 100, 1, onecycle=False) == 2
    assert ROUND_TO == 100


# ------------------------------------------------------------------------------------- end to end
BUDGET = 40.0  # seconds: the probe (several, mostly Lightning's setup), then up to two epochs


@pytest.fixture(scope="module")
def budgeted_run(tmp_path_factory):
    """A run with a budget of some tens of steps (pace from a probe of the same run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("budget") / "run"
        s = train(_cfg(f"train.time_budget_s={BUDGET}"), run)
    finally:
        torch.set_num_threads(threads)
    return run, s


@pytest.mark.slow  # about 40 s on 2 cores: with make test-slow
def test_a_budgeted_run_trains_the_steps_its_probe_chose(budgeted_run):
    run, s = budgeted_run
    tb = s["time_budget"]
    assert tb["source"] == "probe" and tb["budget_s"] == BUDGET and tb["pace_s_per_step"] > 0
    steps, pace, left = tb["steps"], tb["pace_s_per_step"], BUDGET - tb["probe_s"]
    # the steps that fit in what the probe left of the budget, rounded as steps_for_budget rounds
    # (down to a multiple of 100 from 100 on), or the two epochs' cap (62 steps each); the summary
    # rounds the pace and the probe's time, hence the two ends
    assert 3 <= steps <= 124 and steps * pace <= left + 0.01
    assert steps in {steps_for_budget(left + d, pace, 62, 2, onecycle=True) for d in (-0.01, 0.01)}
    assert s["global_step"] == steps
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_budget"]["steps"] == steps
    cfg = (run / "config.yaml").read_text()
    assert f"max_steps: {steps}" in cfg and f"time_budget_s: {BUDGET}" in cfg
    assert (run / "samples" / "final.png").is_file()  # the step count's end is the run's end


@pytest.mark.slow  # about 20 s more: with make test-slow
def test_max_steps_n_trains_the_same_weights_as_the_budget_that_chose_n(budgeted_run, tmp_path):
    """The probe saves and restores the random streams: a run told trainer.max_steps=N from the
    start draws the same initial weights, batches and noise, so its weights are bitwise equal."""
    run, s = budgeted_run
    steps = s["time_budget"]["steps"]
    train(_cfg(f"+trainer.max_steps={steps}"), tmp_path / "fixed")
    a = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "fixed" / "checkpoints" / "last.ckpt", map_location="cpu",
                   weights_only=False)
    assert a["global_step"] == b["global_step"] == steps
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


@pytest.mark.slow  # needs the budgeted run
def test_a_resumed_budgeted_run_keeps_its_step_count(budgeted_run, monkeypatch):
    run, s = budgeted_run
    monkeypatch.setattr(budget_mod, "measure_pace", lambda *a, **k: pytest.fail("probed again"))
    c = _cfg(f"train.time_budget_s={BUDGET}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    got = time_budget(c, None, None, "cpu", "32-true")
    assert got["source"] == "resumed" and got["steps"] == s["time_budget"]["steps"]


def test_given_max_steps_wins_over_the_budget(monkeypatch):
    monkeypatch.setattr(budget_mod, "measure_pace", lambda *a, **k: pytest.fail("probed"))
    got = time_budget(_cfg("train.time_budget_s=4", "+trainer.max_steps=7"), None, None, "cpu",
                      "32-true")
    assert got["source"] == "given" and got["steps"] == 7
    assert time_budget(_cfg(), None, None, "cpu", "32-true") is None


@pytest.mark.parametrize("override,needle", [
    ("train.time_budget_s=-1", "train.time_budget_s must be a number of seconds > 0"),
    ("train.time_budget_s=0", "train.time_budget_s must be a number of seconds > 0"),
    ("train.time_budget_s=abc", "train.time_budget_s"),
    ("trainer.devices=2", "applies to one-process diffusion training"),
    ("task=noise_level", "applies to one-process diffusion training"),
])
def test_bad_budgets_name_the_setting(override, needle):
    extra = [override] if override.startswith("train.time") else [override,
                                                                    "train.time_budget_s=60"]
    with pytest.raises(ConfigError) as e:
        _cfg(*extra)
    assert needle in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ bf16-if-native
@pytest.mark.parametrize("native,accelerator,want", [
    (True, "cpu", "bf16-mixed"), (False, "cpu", "32-true"),
    (False, "gpu", "bf16-mixed"), (True, "gpu", "bf16-mixed")])
def test_bf16_if_native(monkeypatch, native, accelerator, want):
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: native)
    assert train_mod._precision({"precision": "bf16-if-native"}, accelerator) == want
    assert train_mod._precision({"precision": "auto"}, "cpu") == "32-true"  # unchanged
    assert _cfg("trainer.precision=bf16-if-native")["trainer"]["precision"] == "bf16-if-native"
