"""Objectives: exact targets round-trip to x0; Karras scalings; the denoiser interface."""

import pytest
import torch

from diffexp.objectives import KarrasObjective, build_objective, make_denoiser
from diffexp.schedules import CosineSchedule, KarrasSchedule

SIGMAS = torch.tensor([0.002, 0.05, 0.5, 1.0, 4.0, 80.0])


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(SIGMAS), 1, 8, 8, generator=g) * 0.6
    n = torch.randn(len(SIGMAS), 1, 8, 8, generator=g)
    return x0, n


@pytest.mark.parametrize("name", ["eps", "x0", "v", "karras", "no_t"])
def test_exact_target_gives_x0(name):
    sched = KarrasSchedule() if name == "karras" else CosineSchedule()
    obj = build_objective(name, sched, sigma_data=0.6)
    x0, n = _batch()
    x = x0 + SIGMAS.view(-1, 1, 1, 1) * n
    target = obj.target(x0, n, SIGMAS)
    torch.testing.assert_close(obj.to_x0(x, target, SIGMAS), x0, atol=2e-5, rtol=1e-5)


def test_v_target_closed_form():
    obj = build_objective("v", CosineSchedule())
    x0, n = (t.double() for t in _batch(1))  # float64: 1 - abar at sigma = 0.002 needs it
    sig = SIGMAS.double()
    abar = 1 / (1 + sig ** 2)
    expect = abar.sqrt().view(-1, 1, 1, 1) * n - (1 - abar).sqrt().view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(obj.target(x0, n, sig), expect)


def test_v_is_karras_preconditioning_at_sigma_data_one():
    """v is EDM preconditioning with sigma_data = 1, up to the output's sign and the conditioning
    value (docs/TUNING.md, third round): the same network input, the negated training target, so
    the same unweighted MSE at every noise level, and the same denoiser for a network output and
    its negation. Only the noise conditioning differs: the schedule's t against ln(sigma) / 4."""
    sched = KarrasSchedule()
    v, k = build_objective("v", sched), KarrasObjective(sched, sigma_data=1.0)
    x0, n = (t.double() for t in _batch(2))
    sig = SIGMAS.double()
    x = x0 + sig.view(-1, 1, 1, 1) * n
    torch.testing.assert_close(v.net_input(x, sig)[0], k.net_input(x, sig)[0])
    torch.testing.assert_close(v.target(x0, n, sig), -k.target(x0, n, sig))
    assert torch.equal(v.loss_weight(sig), k.loss_weight(sig))
    out = torch.randn_like(x0)
    torch.testing.assert_close(v.to_x0(x, out, sig), k.to_x0(x, -out, sig))
    assert not torch.allclose(v.cond(sig), k.cond(sig))
    # and not at the measured sigma_data of the quickstart's data (0.35): a different target
    k35 = KarrasObjective(sched, sigma_data=0.35)
    assert not torch.allclose(v.target(x0, n, sig).abs(), k35.target(x0, n, sig).abs())


def test_karras_unit_variance():
    sd = 0.5
    obj = KarrasObjective(KarrasSchedule(), sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    for sigma in [0.01, 0.3, 1.0, 10.0, 80.0]:
        s = torch.full((4000,), sigma)
        x0 = torch.randn(4000, 1, 4, 4, generator=g) * sd
        n = torch.randn(4000, 1, 4, 4, generator=g)
        x = x0 + sigma * n
        c_in = obj.c_in(s).view(-1, 1, 1, 1)
        assert float((c_in * x).std()) == pytest.approx(1.0, abs=0.02)
        # and the training target has unit variance too (the point of c_out)
        assert float(obj.target(x0, n, s).std()) == pytest.approx(1.0, abs=0.02)
        c_skip, c_out, _ = obj.scalings(s[:1])
        assert float(c_skip) == pytest.approx(sd ** 2 / (sigma ** 2 + sd ** 2))
        assert float(c_out) == pytest.approx(sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5)


def test_vp_input_is_vp_image():
    obj = build_objective("eps", CosineSchedule())
    x0, n = (t.double() for t in _batch(2))
    sig = SIGMAS.double()
    x = x0 + sig.view(-1, 1, 1, 1) * n
    inp, cond = obj.net_input(x, sig)
    abar = (1 / (1 + sig ** 2)).view(-1, 1, 1, 1)
    torch.testing.assert_close(inp, abar.sqrt() * x0 + (1 - abar).sqrt() * n)
    torch.testing.assert_close(cond.double(), CosineSchedule().t_from_sigma(SIGMAS.double()),
                               atol=1e-6, rtol=0)


def test_no_t_has_no_conditioning():
    obj = build_objective("no_t", CosineSchedule())
    assert obj.conditioned is False and obj.cond(SIGMAS) is None


def test_denoiser_with_oracle_network():
    """A 'network' that outputs the exact target makes the denoiser return x0, for every objective."""
    x0, n = _batch(3)
    for name in ["eps", "x0", "v", "karras"]:
        obj = build_objective(name, CosineSchedule(), sigma_data=0.6)

        def net(inp, cond, obj=obj):
            return obj.target(x0, n, SIGMAS)

        x = x0 + SIGMAS.view(-1, 1, 1, 1) * n
        torch.testing.assert_close(make_denoiser(net, obj)(x, SIGMAS), x0, atol=2e-5, rtol=1e-5)


def test_bad_objective():
    with pytest.raises(ValueError, match="objective.name"):
        build_objective("score", CosineSchedule())
    with pytest.raises(ValueError, match="sigma_data"):
        KarrasObjective(KarrasSchedule(), sigma_data=0)


class _InputSpy(torch.nn.Module):
    """A stand-in network that records what it is fed and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, inp, cond):
        self.seen.append(inp.detach().clone())
        return torch.zeros_like(inp)


def _real_images(data_root, scale, n=64):
    from diffexp.data import build_data

    d = build_data({"name": "fashion_mnist", "root": str(data_root), "download": False, "pad": 2,
                    "scale": scale, "val_size": 0, "split_seed": 0, "subset": None})
    return d.batch(d.train_index[:n])


@pytest.mark.parametrize("scale", [0.25, 2.0])
@pytest.mark.parametrize("name", ["eps", "x0", "v", "no_t"])
def test_normalize_input_gives_unit_std_at_every_noise_level(name, scale, data_root):
    """Chen 2023 Alg. 1 on real Fashion-MNIST at b != 1: with the switch, every image the network
    sees has std 1 at every noise level, in training (net_input) and sampling (the denoiser)
    alike; without it the VP input's std is far from 1 where the data dominate."""
    x0 = _real_images(data_root, scale)
    g = torch.Generator().manual_seed(0)
    on = build_objective(name, CosineSchedule(), normalize_input=True)
    off = build_objective(name, CosineSchedule())
    off_std = []
    for s in [0.01, 0.1, 0.5, 1.0, 3.0, 30.0]:
        sigma = torch.full((len(x0),), s)
        x = x0 + s * torch.randn(x0.shape, generator=g)
        inp, _ = on.net_input(x, sigma)
        std = inp.std(dim=(1, 2, 3), correction=0)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-5, rtol=1e-5)
        spy = _InputSpy()
        make_denoiser(spy, on)(x, sigma)
        torch.testing.assert_close(spy.seen[0], inp)  # sampling feeds the network the same
        off_std.append(float(off.net_input(x, sigma)[0].std(dim=(1, 2, 3)).mean()))
    # without the switch the input std at low noise is about b times the per-image data std
    # (about 0.6): 0.15 at b = 0.25, 1.2 at b = 2
    assert abs(off_std[0] - 1) > 0.15, off_std
    assert abs(off_std[-1] - 1) < 0.05  # pure noise is unit variance either way


def test_normalize_input_is_refused_by_karras():
    with pytest.raises(ValueError, match="normalize_input applies to the VP objectives"):
        build_objective("karras", KarrasSchedule(), sigma_data=0.5, normalize_input=True)
