"""Schedules against closed-form values, round trips and monotonicity."""

import math

import pytest
import torch

from diffexp.schedules import (
    CosineSchedule,
    KarrasSchedule,
    LinearSchedule,
    SigmoidSchedule,
    alpha_bar_to_sigma,
    build_schedule,
    sigma_to_alpha_bar,
    stratified_uniform,
    to_vp,
)

VP = [LinearSchedule(), CosineSchedule(), SigmoidSchedule(), CosineSchedule(0.2, 0.9, 0.7),
      SigmoidSchedule(-2, 4, 0.5), LinearSchedule(0.05, 10)]
ALL = VP + [KarrasSchedule(), KarrasSchedule(0.01, 20, 3)]


@pytest.mark.parametrize("s", VP, ids=repr)
def test_vp_endpoints(s):
    assert float(s.alpha_bar(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1.0,
                                                                                       abs=1e-12)
    assert float(s.sigma(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(0, abs=1e-6)
    assert 0 <= float(s.alpha_bar(torch.tensor(1.0, dtype=torch.float64))) < 0.01


def test_closed_forms():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(CosineSchedule().alpha_bar(t), torch.cos(t * math.pi / 2) ** 2)
    # DDPM's discrete product over 1000 steps of 1 - beta_i, beta linear 1e-4..0.02, vs continuous
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar_discrete = torch.cumprod(1 - betas, 0)
    abar_cont = LinearSchedule().alpha_bar(torch.arange(1, 1001, dtype=torch.float64) / 1000)
    assert torch.allclose(abar_cont, abar_discrete, rtol=0.03, atol=1e-5)
    s = SigmoidSchedule(-3, 3, 1.0)
    v0, v1 = 1 / (1 + math.exp(3)), 1 / (1 + math.exp(-3))
    expect = (v1 - torch.sigmoid(-3 + 6 * t)) / (v1 - v0)
    torch.testing.assert_close(s.alpha_bar(t), expect)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_monotone_and_round_trip(s):
    t = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    sig = s.sigma(t)
    assert torch.all(sig[1:] > sig[:-1]), "sigma must grow with t"
    abar = s.alpha_bar(t)
    assert torch.all(abar[1:] < abar[:-1])
    torch.testing.assert_close(s.t_from_alpha_bar(abar), t, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.t_from_sigma(sig), t, atol=1e-5, rtol=0)
    torch.testing.assert_close(sigma_to_alpha_bar(sig), abar, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(alpha_bar_to_sigma(abar), sig, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("s", ALL, ids=repr)
def test_sampling_grid(s):
    g = s.sampling_sigmas(10)
    assert g.dtype == torch.float64 and len(g) == 11 and g[-1] == 0
    assert torch.all(g[1:] < g[:-1])
    assert float(g[0]) == pytest.approx(s.sigma_max, rel=1e-9)
    assert float(g[-2]) == pytest.approx(s.sigma_min, rel=1e-9)
    # uniform in the schedule's own t
    t = s.t_from_sigma(g[:-1])
    torch.testing.assert_close(t[1:] - t[:-1], torch.full((9,), float(t[1] - t[0]),
                                                          dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="steps"):
        s.sampling_sigmas(0)


def test_karras_grid_is_edm():
    s = KarrasSchedule(0.002, 80, 7)
    i = torch.arange(5, dtype=torch.float64)
    edm = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(s.sampling_sigmas(5)[:-1], edm)


def test_training_draws():
    g = torch.Generator().manual_seed(0)
    s = KarrasSchedule(p_mean=-1.2, p_std=1.2)
    ls = s.sample_training_sigma(200_000, generator=g).log()
    assert float(ls.mean()) == pytest.approx(-1.2, abs=0.01)
    assert float(ls.std()) == pytest.approx(1.2, abs=0.01)
    c = CosineSchedule()
    sig = c.sample_training_sigma(200_000, generator=g)
    t = c.t_from_sigma(sig.double())
    assert float(t.min()) >= c.t_min - 1e-5 and float(t.max()) <= c.t_max + 1e-5
    assert float(t.mean()) == pytest.approx((c.t_min + c.t_max) / 2, abs=0.005)


def test_stratified_uniform_puts_one_draw_in_each_stratum():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 16, 257):
        u = stratified_uniform(n, generator=g)
        assert u.shape == (n,) and float(u.min()) >= 0 and float(u.max()) < 1
        assert torch.equal(torch.sort((u * n).floor().long()).values, torch.arange(n))
    # pooled over batches, each draw is U(0, 1): its deciles hold a tenth each
    pooled = torch.cat([stratified_uniform(16, generator=g) for _ in range(5000)])
    counts = torch.bincount((pooled * 10).floor().long(), minlength=10).double() / pooled.numel()
    torch.testing.assert_close(counts, torch.full((10,), 0.1, dtype=torch.float64), atol=0.004,
                               rtol=0)
    # and its position in the batch carries no information: every slot has mean 1/2
    slots = torch.stack([stratified_uniform(16, generator=g) for _ in range(5000)])
    assert float((slots.mean(0) - 0.5).abs().max()) < 0.02


@pytest.mark.parametrize("sched", [KarrasSchedule(p_mean=-1.2, p_std=1.0), CosineSchedule(),
                                   LinearSchedule()])
def test_stratified_training_draws_keep_the_distribution_with_less_batch_variance(sched):
    g = torch.Generator().manual_seed(1)
    strat = torch.stack([sched.sample_training_sigma(16, generator=g, stratified=True)
                         for _ in range(4000)]).double().log()
    iid = torch.stack([sched.sample_training_sigma(16, generator=g)
                       for _ in range(4000)]).double().log()
    # the same distribution of ln(sigma): quantiles of the pooled draws agree
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    spread = float(iid.std())
    torch.testing.assert_close(torch.quantile(strat.flatten(), q), torch.quantile(iid.flatten(), q),
                               atol=0.03 * spread, rtol=0)
    # a batch's mean ln(sigma) varies far less: iid has variance var / 16; stratified draws
    # leave only the within-stratum jitter
    assert float(strat.mean(1).var()) < 0.1 * float(iid.mean(1).var())
    if isinstance(sched, KarrasSchedule):  # exact log-normal: ln(sigma) = p_mean + p_std * z
        z = (strat.flatten() - sched.p_mean) / sched.p_std
        assert float(z.mean()) == pytest.approx(0, abs=0.01)
        assert float(z.std()) == pytest.approx(1, abs=0.01)


def test_independent_training_draws_are_unchanged_by_the_stratified_switch():
    """The default path draws exactly what it drew before the switch existed (runs reproduce)."""
    s = KarrasSchedule(p_mean=-1.2, p_std=1.0)
    got = s.sample_training_sigma(8, generator=torch.Generator().manual_seed(3))
    z = torch.randn(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, torch.exp(-1.2 + 1.0 * z))
    c = CosineSchedule()
    got = c.sample_training_sigma(8, generator=torch.Generator().manual_seed(3))
    u = torch.rand(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, c.sigma((c.t_min + (c.t_max - c.t_min) * u).double()).float())


def test_to_vp_matches_vp_form():
    g = torch.Generator().manual_seed(1)
    x0, n = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.1, 1.0, 3.0, 50.0])
    abar = sigma_to_alpha_bar(sigma).view(-1, 1, 1, 1)
    vp = abar.sqrt() * x0 + (1 - abar).sqrt() * n
    torch.testing.assert_close(to_vp(x0 + sigma.view(-1, 1, 1, 1) * n, sigma), vp)


def test_build_schedule_unknown():
    with pytest.raises(ValueError, match="schedule.name"):
        build_schedule("quadratic")
