"""Tests of diffexp.sampling against independent truths.

The analytic case: data x0 ~ N(MU, S^2) per pixel has the exact denoiser
E[x0 | x] = (S^2 x + sigma^2 MU) / (S^2 + sigma^2), and the probability-flow ODE
dx/dsigma = (x - D) / sigma has the exact solution x(sigma) - MU = (x(sigma_max) - MU)
sqrt(S^2 + sigma^2) / sqrt(S^2 + sigma_max^2). The analytic tests run in float64 (the samplers
keep x's dtype) so discretisation error is not hidden by rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from diffexp import sampling as smp
from diffexp.schedules import KarrasSchedule, LinearSchedule

from .helpers import REPO

MU, S = 0.3, 0.5
SMIN, SMAX = 0.002, 80.0
F64 = torch.float64

CONF = REPO / "conf" / "sampler"

REQUIRED = ["ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpmpp_2m",
            "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpm_2"]


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest.py


def gauss_denoiser(x, sigma):
    sig2 = sigma.view(-1, *([1] * (x.dim() - 1))) ** 2
    return (S * S * x + sig2 * MU) / (S * S + sig2)


def exact_ode(x_start, sigma_start, sigma):
    return MU + (x_start - MU) * math.sqrt(S * S + sigma * sigma) / math.sqrt(
        S * S + sigma_start * sigma_start)


# mixture of two Gaussians (1-D); exact posterior mean
PIS = torch.tensor([0.3, 0.7], dtype=F64)
MUS = torch.tensor([-1.0, 1.5], dtype=F64)
SS = torch.tensor([0.3, 0.4], dtype=F64)


def mixture_denoiser(x, sigma):  # x: [B, 1]
    sig2 = sigma.view(-1, 1) ** 2
    var = SS**2 + sig2
    w = torch.softmax(torch.log(PIS) - 0.5 * torch.log(var) - 0.5 * (x - MUS) ** 2 / var, dim=1)
    return (w * (SS**2 * x + sig2 * MUS) / var).sum(1, keepdim=True)


def start(n, seed, sigma_max=SMAX, shape=(1,)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=F64) * sigma_max, g


def trajectory(name, denoiser, x, sigmas, **opts):
    """{step i: the state x the denoiser saw at step i, "out": the result}."""
    seen = {}
    out = smp.SAMPLERS[name](denoiser, x, sigmas,
                             callback=lambda info: seen.__setitem__(info["i"], info["x"]), **opts)
    seen["out"] = out
    return seen


def endpoint_error(name, steps, n=2000, **opts):
    """RMS distance to the exact ODE solution, at the last positive sigma (from the callback) and
    at the end (sigma = 0)."""
    sig = smp.karras_sigmas(steps, SMIN, SMAX)
    x, _ = start(n, 0)
    seen = trajectory(name, gauss_denoiser, x.clone(), sig, **opts)
    out = seen["out"]
    last = float(sig[steps - 1])
    e_last = (seen[steps - 1] - exact_ode(x, SMAX, last)).pow(2).mean().sqrt().item()
    e_end = (out - exact_ode(x, SMAX, 0.0)).pow(2).mean().sqrt().item()
    return e_last, e_end


# --------------------------------------------------------------------------------------------
# registry, signatures
# --------------------------------------------------------------------------------------------


def test_registry_and_options():
    for name in REQUIRED:
        assert name in smp.SAMPLERS
    assert smp.sampler_options("euler") == {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf,
                                            "s_noise": 1.0}
    assert smp.sampler_options("lms") == {"order": 4}
    assert smp.sampler_options("ddim")["eta"] == 0.0
    assert smp.sampler_options("dpmpp_2m") == {}


# --------------------------------------------------------------------------------------------
# analytic Gaussian: deterministic samplers
# --------------------------------------------------------------------------------------------

# (name, options, steps, tolerance on the RMS distance to the exact ODE map; first order ~1/N)
DETERMINISTIC = [("euler", {}, 200, 1e-2), ("ddim", {}, 200, 1e-2), ("heun", {}, 50, 5e-3),
                 ("dpm_2", {}, 50, 5e-3), ("lms", {}, 50, 5e-3), ("dpmpp_2m", {}, 50, 5e-3),
                 ("dpmpp_2m_sde", {"eta": 0.0}, 50, 5e-3), ("lms", {"order": 2}, 100, 5e-3)]


@pytest.mark.parametrize("name,opts,steps,tol", DETERMINISTIC)
def test_deterministic_matches_exact_ode_and_data(name, opts, steps, tol):
    n = 20000
    x, _ = start(n, 1)
    out = smp.SAMPLERS[name](gauss_denoiser, x.clone(), smp.karras_sigmas(steps, SMIN, SMAX),
                             **opts)
    exact = exact_ode(x, SMAX, 0.0)
    assert (out - exact).pow(2).mean().sqrt() < tol  # vs the exact PF-ODE map
    # and the data distribution (standard errors ~0.0035 / 0.0025 at n = 20000)
    assert abs(out.mean().item() - MU) < 0.015
    assert abs(out.std().item() - S) < 0.015


def test_order_of_accuracy():
    e16 = endpoint_error("euler", 32)[0]
    e32 = endpoint_error("euler", 64)[0]
    assert 1.8 < e16 / e32 < 2.2  # first order
    for name in ("heun", "dpm_2", "dpmpp_2m"):
        a, b = endpoint_error(name, 32)[0], endpoint_error(name, 64)[0]
        assert 3.4 < a / b < 4.9, (name, a / b)  # second order
    a, b = endpoint_error("lms", 32)[0], endpoint_error("lms", 64)[0]
    assert a / b > 5.0  # order 4 multistep (lower-order warm-up)
    # full result (with each sampler's last step to 0) behaves the same
    a, b = endpoint_error("heun", 32)[1], endpoint_error("heun", 64)[1]
    assert 3.4 < a / b < 4.9


def test_higher_order_beats_euler_at_equal_nfe():
    euler = endpoint_error("euler", 64)[1]
    assert endpoint_error("lms", 64)[1] < euler / 3
    assert endpoint_error("dpmpp_2m", 64)[1] < euler / 2
    assert endpoint_error("heun", 32)[1] < euler / 2  # 63 NFE


# --------------------------------------------------------------------------------------------
# analytic Gaussian / mixture: stochastic samplers, statistically
# --------------------------------------------------------------------------------------------

STOCHASTIC = [
    ("ddpm", {}, 1000), ("ddpm", {"variance": "beta"}, 1000), ("ddim", {"eta": 1.0}, 1000),
    ("ddim", {"eta": 0.5}, 1000), ("euler_ancestral", {}, 1000),
    ("euler", {"s_churn": 40.0}, 1000),
    ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, 200),
    ("dpm_2", {"s_churn": 40.0}, 200), ("dpmpp_2m_sde", {}, 200),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 200), ("dpmpp_2s_ancestral", {}, 200),
]


@pytest.mark.parametrize("name,opts,steps", STOCHASTIC)
def test_stochastic_matches_data_statistics(name, opts, steps):
    n = 20000
    x, g = start(n, 2)
    out = smp.SAMPLERS[name](gauss_denoiser, x, smp.karras_sigmas(steps, SMIN, SMAX),
                             generator=g, **opts)
    assert abs(out.mean().item() - MU) < 0.015
    assert abs(out.std().item() - S) < 0.015


@pytest.mark.parametrize("name,opts,steps", [("heun", {}, 40), ("dpmpp_2m_sde", {}, 100)])
def test_mixture_of_gaussians(name, opts, steps):
    n = 20000
    x, g = start(n, 3)
    out = smp.SAMPLERS[name](mixture_denoiser, x, smp.karras_sigmas(steps, SMIN, SMAX),
                             generator=g, **opts)
    mean = float((PIS * MUS).sum())
    std = math.sqrt(float((PIS * (SS**2 + MUS**2)).sum()) - mean**2)
    assert abs(out.mean().item() - mean) < 0.03  # SE 0.0085
    assert abs(out.std().item() - std) < 0.03
    assert abs((out > 0.25).double().mean().item() - 0.7) < 0.015  # mass of the right mode


def test_stochastic_samplers_need_noise():
    """Ancestral sampling with the noise removed collapses the spread: the noise matters."""
    x, _ = start(5000, 4)
    out = smp.SAMPLERS["ddpm"](gauss_denoiser, x, smp.karras_sigmas(200, SMIN, SMAX),
                               generator=torch.Generator().manual_seed(0))
    assert abs(out.std().item() - S) < 0.05
    det = smp.SAMPLERS["ddim"](gauss_denoiser, x, smp.karras_sigmas(200, SMIN, SMAX))
    assert not torch.allclose(out, det)


# --------------------------------------------------------------------------------------------
# equivalences
# --------------------------------------------------------------------------------------------


def _run(name, seed=5, steps=12, denoiser=gauss_denoiser, **opts):
    x, _ = start(64, 11, shape=(1, 3, 3))
    return smp.SAMPLERS[name](denoiser, x, smp.karras_sigmas(steps, SMIN, SMAX),
                              generator=torch.Generator().manual_seed(seed), **opts)


def test_ddim_eta0_is_euler():
    torch.testing.assert_close(_run("ddim", eta=0.0), _run("euler"), rtol=1e-10, atol=1e-10)


def test_ddpm_is_ddim_eta1_and_euler_ancestral():
    ddpm = _run("ddpm")
    torch.testing.assert_close(ddpm, _run("ddim", eta=1.0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ddpm, _run("euler_ancestral", eta=1.0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_run("ddim", eta=0.3), _run("euler_ancestral", eta=0.3),
                               rtol=1e-10, atol=1e-10)
    # with clamping, ddpm's posterior mean uses the clamped x0 everywhere
    torch.testing.assert_close(_run("ddpm", clip_x0=0.4),
                               _run("ddim", eta=1.0, clip_x0=0.4, use_clipped_eps=True),
                               rtol=1e-10, atol=1e-10)
    assert not torch.allclose(_run("ddpm", clip_x0=0.4), _run("ddim", eta=1.0, clip_x0=0.4))


def test_lms_order1_is_euler_and_sde_eta0_is_2m():
    torch.testing.assert_close(_run("lms", order=1), _run("euler"), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_run("dpmpp_2m_sde", eta=0.0), _run("dpmpp_2m"),
                               rtol=1e-10, atol=1e-10)
    # a single first-order SDE step at eta = 1 is the DDPM posterior step
    x, _ = start(64, 11)
    sig = torch.tensor([80.0, 2.0, 0.0], dtype=F64)
    a, b = (smp.SAMPLERS[n](gauss_denoiser, x, sig, generator=torch.Generator().manual_seed(9))
            for n in ("dpmpp_2m_sde", "ddpm"))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_churn_sigma_hat_follows_algorithm_2():
    """gamma = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0 (Karras Alg. 2)."""
    sig = smp.karras_sigmas(10, SMIN, SMAX)
    for s_churn, s_tmin, s_tmax in ((100.0, 0.0, math.inf), (2.0, 0.1, 10.0)):
        seen = []
        x, g = start(8, 0)
        smp.SAMPLERS["heun"](gauss_denoiser, x, sig, generator=g, callback=seen.append,
                             s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax)
        for info in seen:
            inside = s_tmin <= info["sigma"] <= s_tmax
            gamma = min(s_churn / 10, math.sqrt(2) - 1) if inside else 0.0
            assert info["sigma_hat"] == pytest.approx(info["sigma"] * (1 + gamma), rel=1e-12)
        assert any(i["sigma_hat"] == i["sigma"] for i in seen) == (s_tmax < math.inf)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_dpmpp_2m_sde_heun_integrates_linear_denoiser_exactly(eta):
    """With D = a + b lambda (lambda = -log sigma) the noise-free part of a 2M step is
    x' = (s'/s) e^{-eta h} x + integral (1+eta) e^{-(1+eta)(lambda' - l)} D(l) dl; the "heun"
    solver integrates the linear interpolant of D exactly, "midpoint" only approximately."""
    quad = pytest.importorskip("scipy.integrate").quad
    a, b = 0.4, -0.3

    def den(x, sigma):
        return (a - b * torch.log(sigma)).view(-1, 1).expand_as(x)

    sig = torch.tensor([20.0, 5.0, 1.5, 0.0], dtype=F64)
    lam1, lam2 = -math.log(5.0), -math.log(1.5)  # the second step, sigma 5 -> 1.5
    h = lam2 - lam1
    integral = quad(lambda u: (1 + eta) * math.exp(-(1 + eta) * (lam2 - u)) * (a + b * u),
                    lam1, lam2, epsabs=1e-13, epsrel=1e-13)[0]
    errs = {}
    for solver in ("heun", "midpoint"):
        x, _ = start(16, 0, sigma_max=20.0)
        seen = trajectory("dpmpp_2m_sde", den, x, sig, eta=eta, s_noise=0.0, solver_type=solver)
        exact = (1.5 / 5.0) * math.exp(-eta * h) * seen[1] + integral
        errs[solver] = (seen[2] - exact).abs().max().item()
    assert errs["heun"] < 1e-12
    assert 1e-6 < errs["midpoint"] < 0.2


def test_lms_coefficients_match_quadrature():
    quad = pytest.importorskip("scipy.integrate").quad
    nodes = [3.0, 5.5, 9.0, 20.0]  # most recent first
    for k in range(1, 5):
        c = smp._lms_coefficients(nodes[:k], 1.7)
        for j in range(k):
            def basis(t, j=j, k=k):
                return math.prod((t - nodes[m]) / (nodes[j] - nodes[m])
                                 for m in range(k) if m != j)
            assert c[j] == pytest.approx(quad(basis, 3.0, 1.7)[0], rel=1e-9, abs=1e-12)
    assert sum(smp._lms_coefficients(nodes, 0.0)) == pytest.approx(-3.0)


def _vp_eps_model(x_vp, abar):
    """The Gaussian denoiser as a VP noise predictor."""
    sigma = math.sqrt((1 - abar) / abar)
    x = x_vp / math.sqrt(abar)
    d = gauss_denoiser(x, x.new_full((x.shape[0],), sigma))
    return (x - d) / sigma


def _vp_abars(sigmas):
    return [1.0 / (1.0 + float(s) ** 2) for s in sigmas]  # last one is 1


def test_ddim_matches_lesson_vp_reference():
    """The lesson's DDIM step, written in VP space with alpha_bar (Song et al. eq. 12)."""
    sched = LinearSchedule()
    sig = sched.sampling_sigmas(15)
    abars = _vp_abars(sig)
    for eta in (0.0, 0.6, 1.0):
        z = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
        g = torch.Generator().manual_seed(2)
        x_vp = z.clone()
        for i in range(len(abars) - 1):
            abar_t, abar_t1 = abars[i], abars[i + 1]
            bbar_t, bbar_t1 = 1 - abar_t, 1 - abar_t1
            noise = _vp_eps_model(x_vp, abar_t)
            sig_t = math.sqrt(bbar_t1 / bbar_t * (1 - abar_t / abar_t1)) * eta
            x0_hat = (x_vp - math.sqrt(bbar_t) * noise) / math.sqrt(abar_t)
            x_vp = math.sqrt(abar_t1) * x0_hat + math.sqrt(bbar_t1 - sig_t**2) * noise
            if i < len(abars) - 2 and eta > 0:
                x_vp = x_vp + sig_t * torch.randn(z.shape, generator=g, dtype=F64)
        x = z * math.sqrt(1 + float(sig[0]) ** 2)  # the same start in sigma space
        out = smp.SAMPLERS["ddim"](gauss_denoiser, x, sig, generator=torch.Generator()
                                   .manual_seed(2), eta=eta)
        torch.testing.assert_close(out, x_vp, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_matches_lesson_vp_reference(variance):
    """The lesson's DDPM sampler (clamped x0_hat, sigma_t^2 = beta_t) and Ho et al.'s beta-tilde
    variant, in VP space (Ho et al. eqs. 6-7)."""
    sched = LinearSchedule()
    sig = sched.sampling_sigmas(25)
    abars = _vp_abars(sig)
    z = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = torch.Generator().manual_seed(3)
    x_t = z.clone()
    for i in range(len(abars) - 1):
        abar_t, abar_t1 = abars[i], abars[i + 1]
        alpha_t = abar_t / abar_t1
        beta_t = 1 - alpha_t
        noise = _vp_eps_model(x_t, abar_t)
        x0_hat = ((x_t - math.sqrt(1 - abar_t) * noise) / math.sqrt(abar_t)).clamp(-0.5, 0.5)
        x0_coeff = math.sqrt(abar_t1) * beta_t / (1 - abar_t)
        xt_coeff = math.sqrt(alpha_t) * (1 - abar_t1) / (1 - abar_t)
        var = beta_t if variance == "beta" else beta_t * (1 - abar_t1) / (1 - abar_t)
        last = i == len(abars) - 2
        zz = torch.zeros_like(z) if last else torch.randn(z.shape, generator=g, dtype=F64)
        x_t = x0_hat * x0_coeff + x_t * xt_coeff + math.sqrt(var) * zz
    x = z * math.sqrt(1 + float(sig[0]) ** 2)
    out = smp.SAMPLERS["ddpm"](gauss_denoiser, x, sig, generator=torch.Generator().manual_seed(3),
                               clip_x0=(-0.5, 0.5), variance=variance)
    torch.testing.assert_close(out, x_t, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# seeding, NFE, callback, dtype
# --------------------------------------------------------------------------------------------


def test_per_sample_seeding_is_batch_invariant():
    sched = KarrasSchedule()
    kw = dict(n=10, shape=(1, 4, 4), seed=123, steps=6, device="cpu")
    for name in ("euler_ancestral", "dpmpp_2m_sde", "heun"):
        opts = {"s_churn": 5.0} if name == "heun" else {}
        a = smp.sample(gauss_denoiser, sched, sampler=name, batch_size=3, **kw, **opts).x0
        b = smp.sample(gauss_denoiser, sched, sampler=name, batch_size=10, **kw, **opts).x0
        assert torch.equal(a, b), name
        part = smp.sample(gauss_denoiser, sched, sampler=name, **{**kw, "n": 4}, first_index=6,
                          batch_size=3, **opts).x0
        assert torch.equal(part, a[6:10]), name
    other = smp.sample(gauss_denoiser, sched, sampler="euler_ancestral",
                       **{**kw, "seed": 124}).x0
    assert not torch.allclose(other, a)
    assert len({tuple(r.flatten().tolist()) for r in a}) == 10  # images differ from each other
    assert a.dtype == torch.float32 and a.shape == (10, 1, 4, 4)


def test_per_sample_noise_object():
    a = smp.PerSampleNoise(7, [0, 1, 2]).randn((2, 2))
    b = smp.PerSampleNoise(7, [2, 0]).randn((2, 2))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    with pytest.raises(ValueError, match="streams"):
        smp._randn_like(torch.zeros(4, 2), smp.PerSampleNoise(7, [0, 1]))


@pytest.mark.parametrize("name", REQUIRED)
def test_nfe_measured_equals_formula(name):
    sched = KarrasSchedule()
    for steps in (1, 2, 7):
        res = smp.sample(gauss_denoiser, sched, n=3, shape=(2,), seed=0, sampler=name,
                         steps=steps, batch_size=2)
        assert res.nfe == smp.nfe(name, steps), (name, steps)
        assert len(res.sigmas) == steps + 1
    two = name in ("heun", "dpm_2", "dpmpp_2s_ancestral")
    assert smp.nfe(name, 10) == (19 if two else 10)


def test_callback_reports_every_step():
    sched = KarrasSchedule()
    seen = []
    res = smp.sample(gauss_denoiser, sched, n=5, shape=(3,), seed=0, sampler="heun", steps=6,
                     batch_size=3, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(6)) * 2
    assert [d["batch_start"] for d in seen] == [0] * 6 + [3] * 6
    assert [d["sigma"] for d in seen[:6]] == pytest.approx(res.sigmas[:6].tolist())
    last = seen[5]
    assert last["sigma_next"] == 0.0 and last["x0_hat"].shape == (3, 3)
    # euler/heun's last step returns the x0 estimate of the last callback
    torch.testing.assert_close(res.x0[:3], last["x0_hat"])


def test_float32_arithmetic_and_device_of_sigmas():
    seen = {}

    def den(x, sigma):
        seen["dtypes"] = (x.dtype, sigma.dtype, tuple(sigma.shape))
        return gauss_denoiser(x, sigma)

    x = torch.randn(4, 1, 2, 2) * SMAX
    out = smp.SAMPLERS["dpmpp_2m"](den, x, smp.karras_sigmas(5, SMIN, SMAX))
    assert out.dtype == torch.float32
    assert seen["dtypes"] == (torch.float32, torch.float32, (4,))


# --------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------


def test_karras_grid():
    g = smp.karras_sigmas(10, 0.002, 80.0)
    assert g.dtype == F64 and len(g) == 11
    assert g[0].item() == 80.0 and g[-2].item() == 0.002 and g[-1].item() == 0.0
    assert torch.all(g[:-1] > g[1:])
    # rho = 1 is uniform in sigma; larger rho puts more of the steps near sigma_min
    torch.testing.assert_close(smp.karras_sigmas(5, 1.0, 5.0, rho=1.0)[:-1],
                               torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=F64))
    below = [(smp.karras_sigmas(20, 0.002, 80.0, rho=r)[:-1] < 1.0).sum().item()
             for r in (1.0, 3.0, 7.0, 15.0)]
    assert below == sorted(below) and below[0] < below[-1]
    assert smp.karras_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    # the KarrasSchedule's own grid is the rho = 7 grid
    torch.testing.assert_close(smp.build_sigmas(KarrasSchedule(), 10), g)


def test_exponential_and_schedule_grids():
    e = smp.exponential_sigmas(5, 0.01, 100.0)
    torch.testing.assert_close(e[:-1], torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01], dtype=F64))
    sched = LinearSchedule()
    torch.testing.assert_close(smp.build_sigmas(sched, 8), sched.sampling_sigmas(8))
    g = smp.build_sigmas(sched, 8, grid="karras", rho=5.0)
    assert g[0].item() == pytest.approx(sched.sigma_max) and g[-2].item() == pytest.approx(
        sched.sigma_min)
    g = smp.build_sigmas(sched, 8, grid="karras", sigma_min=0.01, sigma_max=10.0)
    assert (g[0].item(), g[-2].item()) == (10.0, 0.01)
    # schedule grid with explicit ends: uniform in the schedule's t between them
    g = smp.build_sigmas(sched, 6, sigma_min=0.05, sigma_max=20.0)
    assert (g[0].item(), g[-2].item(), g[-1].item()) == (20.0, 0.05, 0.0)
    t = sched.t_from_sigma(g[:-1])
    torch.testing.assert_close(t[1:] - t[:-1], torch.full((5,), float(t[1] - t[0]), dtype=F64))


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def test_validation_errors():
    sched = KarrasSchedule()
    kw = dict(n=2, shape=(1,), seed=0)
    x = torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'.*'euler'"):
        smp.sample(gauss_denoiser, sched, sampler="nope", **kw)
    with pytest.raises(ValueError, match=r"steps must be >= 1 \(got 0\)"):
        smp.sample(gauss_denoiser, sched, steps=0, **kw)
    with pytest.raises(ValueError, match=r"rho must be > 0 \(got 0.0\)"):
        smp.build_sigmas(sched, 5, grid="karras", rho=0.0)
    with pytest.raises(ValueError, match=r"eta must be >= 0 \(got -0.5\)"):
        smp.sample(gauss_denoiser, sched, sampler="ddim", eta=-0.5, **kw)
    with pytest.raises(ValueError, match=r"ddim.eta must be >= 0"):
        smp.SAMPLERS["ddim"](gauss_denoiser, x, [1.0, 0.0], eta=-1.0)
    with pytest.raises(ValueError, match=r"eta must be <= 1"):
        smp.SAMPLERS["dpmpp_2s_ancestral"](gauss_denoiser, x, [1.0, 0.0], eta=1.5)
    with pytest.raises(ValueError, match=r"euler.order is not an option of sampler 'euler' "
                                         r"\(valid options: s_churn, s_tmin, s_tmax, s_noise\)"):
        smp.SAMPLERS["euler"](gauss_denoiser, x, [1.0, 0.0], order=2)
    with pytest.raises(ValueError, match=r"valid options: none"):
        smp.nfe("dpmpp_2m", 5, eta=1.0)
    with pytest.raises(ValueError, match=r"strictly descending"):
        smp.SAMPLERS["euler"](gauss_denoiser, x, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"strictly descending"):
        smp.SAMPLERS["euler"](gauss_denoiser, x, torch.tensor([2.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"must end at 0"):
        smp.SAMPLERS["euler"](gauss_denoiser, x, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match=r"grid='linear' is not one of"):
        smp.build_sigmas(sched, 5, grid="linear")
    with pytest.raises(ValueError, match=r"sigma_min must be < sigma_max"):
        smp.build_sigmas(sched, 5, grid="karras", sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match=r"order must be an integer >= 1"):
        smp.nfe("lms", 5, order=0)
    with pytest.raises(ValueError, match=r"solver_type must be one of"):
        smp.nfe("dpmpp_2m_sde", 5, solver_type="rk4")
    with pytest.raises(ValueError, match=r"heun.s_tmin must be <= heun.s_tmax"):
        smp.nfe("heun", 5, s_tmin=2.0, s_tmax=1.0)


@pytest.mark.parametrize("cfg,msg", [
    ({"name": "euler", "steps": 0}, r"^sampler\.steps must be >= 1 \(got 0\)$"),
    ({"name": "euler", "steps": 2.5}, r"^sampler\.steps must be an integer >= 1 \(got 2.5\)$"),
    ({"name": "euler", "s_noise": "x"}, r"^sampler\.s_noise must be a number >= 0"),
    ({"name": "foo"}, r"^sampler\.name='foo' is not one of \['ddim'"),
    ({"name": "euler", "rho": 5.0}, r"^sampler\.rho is not an option of sampler 'euler'"),
    ({"name": "ddim", "eta": -1}, r"^sampler\.eta must be >= 0 \(got -1\)$"),
    ({"name": "ddim", "s_churn": 1.0}, r"^sampler\.s_churn is not an option of sampler 'ddim' "
                                       r"\(valid options: eta, clip_x0, use_clipped_eps\)$"),
    ({"name": "ddpm", "clip_x0": [1.0, -1.0]}, r"^sampler\.clip_x0 must be"),
    ({"name": "ddpm", "variance": "fixed"}, r"^sampler\.variance must be one of"),
])
def test_validate_sampler_config(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        smp.validate_sampler_config(cfg)


@pytest.mark.parametrize("grid,msg", [
    ({"name": "schedule", "rho": 5.0}, r"^grid\.rho acts only on the karras grid \(this is "
                                       r"grid=schedule\); write grid=karras grid\.rho=5\.0$"),
    ({"name": "exponential", "rho": 3}, r"^grid\.rho acts only on the karras grid"),
    ({"name": "karras", "rho": -1.0}, r"^grid\.rho must be > 0 \(got -1.0\)$"),
    ({"name": "cosine"}, r"^grid\.name='cosine' is not one of"),
    ({"name": "karras", "sigma_min": 0.0}, r"^grid\.sigma_min must be > 0"),
    ({"name": "karras", "sigma_min": 2.0, "sigma_max": 1.0}, r"^grid\.sigma_min must be < "),
    ({"name": "karras", "steps": 3}, r"^grid\.steps is not a grid setting"),
])
def test_validate_grid_config(grid, msg):
    with pytest.raises(ValueError, match=msg):
        smp.validate_grid_config(grid)


def test_grid_config_rho_acts():
    """The karras grid's rho reaches the sigmas (the grid changes with it), rho 7 by default."""
    sched = LinearSchedule()
    grids = {}
    for rho in (3.0, 7.0):
        kw, _ = smp.split_sampler_config({"name": "euler", "steps": 6},
                                         {"name": "karras", "rho": rho})
        grids[rho] = smp.build_sigmas(sched, kw["steps"], kw["grid"], kw["rho"],
                                      kw["sigma_min"], kw["sigma_max"])
        expect = smp.karras_sigmas(6, sched.sigma_min, sched.sigma_max, rho)
        torch.testing.assert_close(grids[rho], expect, rtol=0, atol=0)
    assert not torch.allclose(grids[3.0], grids[7.0])
    assert smp.validate_grid_config({"name": "karras"})["rho"] == 7.0
    assert smp.validate_grid_config(None) == {"name": "schedule", "rho": None, "sigma_min": None,
                                              "sigma_max": None}


def test_yaml_configs():
    for name in smp.SAMPLERS:
        cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        assert cfg["name"] == name
        # clip_denoised acts on the denoiser (diffexp.module), not on the sampler function
        assert cfg.pop("clip_denoised") is False
        smp.validate_sampler_config(cfg)
        grid_kw, options = smp.split_sampler_config(cfg)
        assert set(grid_kw) == {"sampler", "steps", "grid", "rho", "sigma_min", "sigma_max"}
        assert options == smp.sampler_options(name)  # every option listed, at its default
    for path in (CONF.parent / "grid").glob("*.yaml"):  # every grid yaml validates (but ckpt)
        g = yaml.safe_load(path.read_text())
        if g["name"] != "ckpt":
            assert smp.validate_grid_config(g)["name"] == path.stem
    grid_kw, options = smp.split_sampler_config({"name": "ddpm", "clip_x0": [-0.5, 0.5]})
    assert grid_kw["steps"] == 20 and grid_kw["grid"] == "schedule"
    assert options == {"clip_x0": (-0.5, 0.5)}
    res = smp.sample(gauss_denoiser, LinearSchedule(), n=3, shape=(2,), seed=0,
                     **{**grid_kw, "steps": 4}, **options)
    assert res.x0.abs().max() <= 0.5 and res.nfe == 4
