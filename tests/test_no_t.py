"""No-t: the median clamp, the no_t denoiser against the eps objective, a network with no
conditioning input, sampling with the predictor, and a predictor that beats the constant baseline."""

import pytest
import torch

from diffexp.config import ConfigError, validate_train_config
from diffexp.models.alpha_bar_net import AlphaBarNet
from diffexp.models.unet import UNet
from diffexp.module import DiffusionModule, load_noise_level_net
from diffexp.no_t import clamp_to_median, no_t_denoiser
from diffexp.objectives import EpsObjective, make_denoiser
from diffexp.runs.train import train
from diffexp.schedules import CosineSchedule

from .helpers import TINY_MODEL, compose_train, run_cli


def test_clamp_to_median():
    abar = torch.tensor([0.01, 0.2, 0.25, 0.3, 0.9])  # median 0.25
    out = clamp_to_median(abar, 2.0)
    assert torch.all(out >= 0.125 - 1e-7) and torch.all(out <= 0.5 + 1e-7)
    assert torch.equal(out[1:4], abar[1:4])  # in-range estimates unchanged
    assert out[0] == pytest.approx(0.125) and out[-1] == pytest.approx(0.5)
    assert torch.equal(clamp_to_median(abar, 100.0), abar)
    with pytest.raises(ValueError, match="clamp_factor"):
        clamp_to_median(abar, 0.5)


def test_no_t_denoiser_matches_eps_objective_with_true_noise_level():
    torch.manual_seed(0)
    net = UNet(widths=(16, 32), blocks=1, attn_levels=(), cond_embedding=False)
    sigma = torch.full((6,), 1.7)
    x = torch.randn(6, 1, 32, 32) * 1.9

    class Oracle(torch.nn.Module):  # returns the schedule's alpha_bar for this sigma
        def alpha_bar(self, x_vp):
            return torch.full((x_vp.shape[0],), 1 / (1 + 1.7 ** 2))

    eps_den = make_denoiser(lambda inp, cond: net(inp, None),
                            EpsObjective(CosineSchedule()))
    ref = eps_den(x, sigma)
    torch.testing.assert_close(no_t_denoiser(net, None, use_predicted=False)(x, sigma), ref,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_t_denoiser(net, Oracle())(x, sigma), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="noise_level_ckpt"):
        no_t_denoiser(net, None, use_predicted=True)


def test_no_t_network_has_no_conditioning_input():
    c = validate_train_config(compose_train(
        ["objective=no_t", "objective.use_predicted_noise_level=false", "data=synthetic",
         "train.batch_size=16", *TINY_MODEL]))
    m = DiffusionModule.from_config(c)
    assert m.net.cond_embedding is False and not hasattr(m.net, "emb_mlp")
    assert not any("emb" in name for name, _ in m.net.named_parameters())
    with pytest.raises(ValueError, match="no conditioning"):
        m.net(torch.randn(2, 1, 32, 32), torch.rand(2))


def test_no_t_requires_predictor_checkpoint():
    with pytest.raises(ConfigError, match="objective.noise_level_ckpt"):
        validate_train_config(compose_train(["objective=no_t", "data=synthetic", "train.batch_size=16"]))
    with pytest.raises(ConfigError, match="no such checkpoint"):
        validate_train_config(compose_train(["objective=no_t", "data=synthetic", "train.batch_size=16",
                                             "objective.noise_level_ckpt=/nope.ckpt"]))


@pytest.fixture(scope="module")
def predictor_run(tmp_path_factory, data_root):
    """A short CPU training of the logit predictor on 6,000 real training images."""
    run = tmp_path_factory.mktemp("predictor")
    c = validate_train_config(compose_train(
        ["task=noise_level", "data.subset=6000", "data.val_size=1000", "train.epochs=2",
         "train.batch_size=64", "logger=none", "optim.lr=3e-3", "noise_level.n_scatter=64"]))
    s = train(c, run)
    return run, s


def test_predictor_beats_constant_baseline(predictor_run):
    run, s = predictor_run
    h = s["held_out"]
    assert h["n"] == 1000 and h["target"] == "logit"
    # logit(abar) for abar ~ U(0, 1) is logistic with variance pi^2 / 3 = 3.29: the baseline
    assert h["baseline_mse"] == pytest.approx(3.29, rel=0.2)
    assert h["mse"] < 0.25 * h["baseline_mse"], h
    assert (run / "samples" / "noise_level_final.png").is_file()
    net, cfg = load_noise_level_net(run / "checkpoints" / "last.ckpt")
    assert isinstance(net, AlphaBarNet) and cfg["task"] == "noise_level"


def test_no_t_sampling_with_predictor(predictor_run, tmp_path):
    run, _ = predictor_run
    ckpt = run / "checkpoints" / "last.ckpt"
    c = validate_train_config(compose_train(
        ["objective=no_t", f"objective.noise_level_ckpt={ckpt}", "data=synthetic",
         "train.batch_size=16", *TINY_MODEL]))
    m = DiffusionModule.from_config(c)
    for name in ["ddim", "euler", "heun"]:
        record = []
        den = m.denoiser(record=record)
        x0, u8, nfe = m.generate(6, seed=0, sampler_cfg={"name": name, "steps": 3}, batch_size=6)
        assert torch.isfinite(x0).all() and u8.shape == (6, 1, 28, 28)
        # the predicted alpha_bar was used, within the clamp of its batch median
        den(torch.randn(6, 1, 32, 32) * 3, torch.full((6,), 3.0))
        _, abar = record[-1]
        med = abar.median()
        assert torch.all(abar >= med / 2 - 1e-6) and torch.all(abar <= med * 2 + 1e-6)
    # the predictor is not saved inside the no_t model's checkpoint (it has its own)
    assert not any(k.startswith("_noise_level_net") for k in m.state_dict())
    # a diffusion checkpoint is not a predictor: one clear error
    with pytest.raises(ValueError, match="is a task=diffusion checkpoint; this needs a task=noise_l"):
        tc = validate_train_config(compose_train(["data=synthetic", "debug=fast", "logger=none",
                                                  "train.batch_size=16", *TINY_MODEL]))
        train(tc, tmp_path / "t")
        load_noise_level_net(tmp_path / "t" / "checkpoints" / "last.ckpt")


def test_no_t_denoiser_normalizes_like_the_objective():
    """A no_t model trained with objective.normalize_input sees its sampling input normalised the
    same way as in training (EpsObjective.net_input)."""
    from diffexp.objectives import NoTObjective

    seen = []

    def net(inp, cond):
        seen.append(inp)
        return torch.zeros_like(inp)

    sigma = torch.full((4,), 0.3)
    x = torch.randn(4, 1, 32, 32) * 0.5
    no_t_denoiser(net, None, use_predicted=False, normalize_input=True)(x, sigma)
    expect, _ = NoTObjective(CosineSchedule(), normalize_input=True).net_input(x, sigma)
    torch.testing.assert_close(seen[0], expect)
    assert not torch.allclose(seen[0], x / (1 + 0.3 ** 2) ** 0.5)


def test_a_predictor_of_another_input_scale_is_one_line_before_training(predictor_run, tmp_path):
    """objective.noise_level_ckpt trained at another data.scale: refused before any training
    step, one line naming the setting, exit 2, no run folder left (the command line's path)."""
    run, _ = predictor_run
    ckpt = run / "checkpoints" / "last.ckpt"
    out = run_cli("train.py", "objective=no_t", f"objective.noise_level_ckpt={ckpt}",
                  "data=synthetic", "data.scale=0.5", "train.batch_size=16", "logger=none",
                  *TINY_MODEL, f"hydra.run.dir={tmp_path / 'r'}", env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 2, out.stderr[-1500:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: objective.noise_level_ckpt={str(ckpt)!r} was trained with data.scale=1.0"), lines
    assert not (tmp_path / "r").exists()
