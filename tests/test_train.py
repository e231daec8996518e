"""Training through the real config tree: every schedule x objective learns on a fixed batch, and
the train entry point writes a complete, resumable run folder."""

import json

import pytest
import torch

from diffexp.config import ConfigError, validate_train_config
from diffexp.data import build_data
from diffexp.module import DiffusionModule, load_module
from diffexp.runs.train import train

from .helpers import TINY_MODEL, compose_train, train_config

SCHEDULES = ["linear", "cosine", "sigmoid", "karras"]
OBJECTIVES = ["eps", "x0", "v", "karras"]


# every objective and every schedule in the default run (a diagonal of the cross), the other 12
# pairs with the slow tests
PAIRS = [pytest.param(o, s, marks=() if i == j else pytest.mark.slow, id=f"{o}-{s}")
         for i, o in enumerate(OBJECTIVES) for j, s in enumerate(SCHEDULES)]


@pytest.mark.parametrize(("objective", "schedule"), PAIRS)
def test_loss_decreases_on_fixed_batch(objective, schedule):
    c = validate_train_config(compose_train(
        [f"schedule={schedule}", f"objective={objective}", "data=synthetic", "train.batch_size=16",
         *TINY_MODEL]))
    if c["objective"]["name"] == "karras":
        c["objective"]["sigma_data"] = 0.5
    torch.manual_seed(0)
    m = DiffusionModule.from_config(c)
    data = build_data(c["data"])
    x0 = data.batch(data.train_index[:8])
    opt = torch.optim.Adam(m.net.parameters(), lr=2e-3)

    def loss_at(seed):
        return m.diffusion_loss(x0, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(float(loss_at(s)) for s in range(4)) / 4
    for step in range(30):
        opt.zero_grad()
        loss = loss_at(step % 4)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = sum(float(loss_at(s)) for s in range(4)) / 4
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("stratified", [True, False])
def test_stratified_noise_switch_reaches_the_training_loss(stratified, monkeypatch):
    """train.stratified_noise=true: a batch of 16 trains on one noise level in each sixteenth of
    the log-normal (its standard-normal CDF values fall one per stratum); independent draws cover
    all sixteen strata with probability 16!/16^16, about 1e-6."""
    c = validate_train_config(compose_train(
        ["schedule=karras", "objective=v", "data=synthetic", "train.batch_size=16", *TINY_MODEL,
         f"train.stratified_noise={str(stratified).lower()}"]))
    m = DiffusionModule.from_config(c)
    seen = []
    net_input = m.objective.net_input
    monkeypatch.setattr(m.objective, "net_input",
                        lambda x, sigma: seen.append(sigma.detach().clone()) or net_input(x, sigma))
    data = build_data(c["data"])
    m.diffusion_loss(data.batch(data.train_index[:16]), generator=torch.Generator().manual_seed(0))
    sched = c["schedule"]
    z = (seen[0].double().log() - sched["p_mean"]) / sched["p_std"]
    strata = (torch.special.ndtr(z) * 16).floor().long().clamp(0, 15)
    assert torch.equal(torch.sort(strata).values, torch.arange(16)) == stratified


QUICK = ["data=synthetic", "debug=fast", "logger=csv", "train.batch_size=16", *TINY_MODEL]


def test_train_writes_run_folder_and_resumes(tmp_path):
    import pytorch_lightning as pl

    class StopAfter(pl.Callback):  # an interruption after 2 of 4 epochs
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch + 1 >= 2:
                trainer.should_stop = True

    c = train_config(*QUICK, "objective=karras", "schedule=karras", "sampler=euler", "train.epochs=4",
                     "trainer.limit_train_batches=3", "callbacks.checkpoints.every_k_epochs=1")
    run = tmp_path / "run"
    s = train(c, run, callbacks=[StopAfter()])
    assert s["global_step"] == 6 and s["epochs"] == 2
    for f in ["config.yaml", "summary.json", "losses.csv", "loss.png", "samples/epoch_002.png",
              "samples/epoch_001.png", "checkpoints/last.ckpt", "checkpoints/epoch000.ckpt",
              "csv/metrics.csv"]:
        assert (run / f).is_file(), f
    # the resolved config carries the measured sigma_data, and so does the checkpoint
    sd = s["sigma_data"]
    assert isinstance(sd, float) and 0.1 < sd < 1.0
    m = load_module(run / "checkpoints" / "last.ckpt")
    assert m.objective.sigma_data == pytest.approx(sd)
    assert int(m.ema.num_updates) == 6
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_train_loss"] is not None and summary["parameters"] > 0
    # resume: the remaining two epochs continue from step 6 and finish the schedule
    c2 = train_config(*QUICK, "objective=karras", "schedule=karras", "sampler=euler", "train.epochs=4",
                      "trainer.limit_train_batches=3", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    s2 = train(c2, tmp_path / "run2")
    assert s2["global_step"] == 12 and s2["epochs"] == 4
    assert (tmp_path / "run2" / "samples" / "final.png").is_file()
    m2 = load_module(tmp_path / "run2" / "checkpoints" / "last.ckpt")
    assert int(m2.ema.num_updates) == 12
    # changing the schedule length on resume is refused with a one-line error
    c3 = train_config(*QUICK, "objective=karras", "schedule=karras", "train.epochs=9",
                      f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(ConfigError, match="train.epochs=9"):
        train(c3, tmp_path / "run3")


def test_seed_is_honoured(tmp_path):
    outs = []
    for k in range(2):
        c = train_config(*QUICK, "seed=0", "train.epochs=1", "trainer.limit_train_batches=3")
        train(c, tmp_path / f"r{k}")
        m = load_module(tmp_path / f"r{k}" / "checkpoints" / "last.ckpt")
        outs.append(torch.cat([p.flatten() for p in m.net.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_fid_proxy_logged(tmp_path, data_root):
    c = train_config(*QUICK, "train.fid_every_n_epochs=1", "train.fid_n_samples=16", "sampler=euler",
                     "sampler.steps=2")
    s = train(c, tmp_path / "run")
    assert len(s["fid_proxy"]) == 1 and s["fid_proxy"][0]["n"] == 16
    assert s["fid_proxy"][0]["fid"] > 0
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/fid" in header and "val/kid" in header


def test_compile_and_channels_last_keep_checkpoint_keys():
    base = validate_train_config(compose_train(["data=synthetic", "train.batch_size=16", *TINY_MODEL]))
    plain = DiffusionModule.from_config(base)
    fast = DiffusionModule.from_config(validate_train_config(compose_train(
        ["data=synthetic", "train.batch_size=16", *TINY_MODEL, "model.compile=true",
         "model.channels_last=true"])))
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert fast._train_forward is not fast.net  # the compiled view, outside the registry
    fast.load_state_dict(plain.state_dict())
    x0 = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = plain.denoiser(use_ema=False)(x0, torch.full((2,), 0.7))
        b = fast.denoiser(use_ema=False)(x0.contiguous(memory_format=torch.channels_last),
                                         torch.full((2,), 0.7))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_wandb_offline_one_run_per_job(tmp_path):
    ids = []
    for k in range(2):
        c = train_config(*QUICK, "logger=wandb", "train.epochs=1", "trainer.limit_train_batches=3")
        train(c, tmp_path / f"w{k}")
        ids.append((tmp_path / f"w{k}" / "wandb_id.txt").read_text().strip())
        assert list((tmp_path / f"w{k}" / "wandb").glob("offline-run-*")), "offline run written"
    assert all(ids) and ids[0] != ids[1]  # the second job did not reuse the first job's run


def test_onecycle_cycles_beta1_and_keeps_the_configured_beta2():
    """conf/optim/adam_onecycle.yaml's comment: under onecycle, Adam's beta1 follows the one-cycle
    momentum (0.95 at the start and end, 0.85 at the peak learning rate) whatever optim.betas[0]
    says, and beta2 is optim.betas[1]; the learning rate peaks at optim.lr after pct_start."""
    import types

    c = validate_train_config(compose_train(
        ["data=synthetic", "train.batch_size=16", *TINY_MODEL, "optim=adam_onecycle",
         "optim.lr=3e-3", "optim.betas=[0.5,0.99]", "optim.pct_start=0.25"]))
    m = DiffusionModule.from_config(c)
    m._trainer = types.SimpleNamespace(estimated_stepping_batches=100, fast_dev_run=False)
    conf = m.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(100):
        g = opt.param_groups[0]
        seen.append((g["lr"], *g["betas"]))
        opt.step()
        sched.step()
    lr, b1, b2 = zip(*seen)
    assert set(b2) == {0.99}
    assert b1[0] == pytest.approx(0.95) and min(b1) == pytest.approx(0.85, abs=1e-4)
    assert max(lr) == pytest.approx(3e-3, rel=1e-3) and lr.index(max(lr)) in (24, 25)
    assert b1[lr.index(max(lr))] == pytest.approx(0.85, abs=1e-4)
