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
