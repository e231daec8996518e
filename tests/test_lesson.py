"""Lesson modes against the fast.ai course22p2 notebooks, step by step.

Each test re-implements a notebook's sampling loop here, in the notebook's own variables (t,
alpha-bar, eps, sig; ``abar(t) = cos(t pi / 2)^2``; Karras' ``sigmas_karras`` and ``scalings``),
without the package's helpers, and runs the package's lesson sampler on the same analytic model:
data x0 ~ N(MU, S^2) per pixel, whose exact noise predictor in VP form is
``E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) MU) / (a S^2 + 1 - a)`` and whose sigma-space
denoiser is ``(S^2 x + sigma^2 MU) / (S^2 + sigma^2)``. Both start from the same noise and draw
the same noise sequence; every step's x0_hat and state are compared, and the largest absolute
difference is printed (``pytest -s``). Float64 throughout.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from diffexp import sampling as smp
from diffexp.config import ConfigError, validate_train_config
from diffexp.models.unet import UNet, sinusoidal_embedding
from diffexp.no_t import ABAR_EPS, NoTDenoiser, clamp_to_grid
from diffexp.objectives import KarrasObjective, make_denoiser
from diffexp.schedules import CosineSchedule, KarrasSchedule

from .helpers import TINY_MODEL, compose_train

F64 = torch.float64
MU, S = 0.1, 0.3  # the lesson's data live in [-0.5, 0.5]
SHAPE = (64, 1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest.py


# ---------------------------------------------------------------- the analytic model, two ways
def eps_vp(x_t, a):
    """E[eps | x_t] for x_t = sqrt(a) x0 + sqrt(1 - a) eps; ``a`` a number or a [B,1,1,1] tensor.
    At a = 1 the notebooks' model output is multiplied by sqrt(1 - a) = 0: return zeros."""
    a = torch.as_tensor(a, dtype=F64)
    if a.dim() == 0 and float(a) == 1.0:
        return torch.zeros_like(x_t)
    return (1 - a).sqrt() * (x_t - a.sqrt() * MU) / (a * S * S + 1 - a)


def gauss_D(x, sigma):
    s2 = sigma.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) ** 2
    return (S * S * x + s2 * MU) / (S * S + s2)


def report(name, diff):
    print(f"\n[lesson] {name}: max abs difference vs notebook loop = {diff:.3e}")


def max_diff(pairs):
    return max(float((a - b).abs().max()) for a, b in pairs)


# ---------------------------------------------------------------- 22_cosine: DDIM
def nb_abar(t):
    return (t * math.pi / 2).cos() ** 2


def nb_ddim_step(x_t, noise, abar_t, abar_t1, bbar_t, bbar_t1, eta, z, clamp):
    """22_cosine.ipynb ``ddim_step`` (clamp 1.5 there), with the draw z passed in."""
    sig = ((bbar_t1 / bbar_t).sqrt() * (1 - abar_t / abar_t1).sqrt()) * eta
    x_0_hat = ((x_t - (1 - abar_t).sqrt() * noise) / abar_t.sqrt()).clamp(-clamp, clamp)
    if bbar_t1 <= sig**2 + 0.01:
        sig = 0.
    x_t = abar_t1.sqrt() * x_0_hat + (bbar_t1 - sig**2).sqrt() * noise
    x_t = x_t + sig * z
    return x_0_hat, x_t


def nb_ddim_sample(z0, steps, eta, g, clamp):
    """22_cosine.ipynb ``sample``: returns (preds, states before each step)."""
    ts = torch.linspace(1 - 1 / steps, 0, steps, dtype=F64)
    x_t = z0.clone()
    preds, states = [], []
    for t in ts:
        states.append(x_t)
        abar_t = nb_abar(t)
        noise = eps_vp(x_t, abar_t)
        abar_t1 = nb_abar(t - 1 / steps) if t >= 1 / steps else torch.tensor(1, dtype=F64)
        z = torch.randn(z0.shape, generator=g, dtype=F64)
        x_0_hat, x_t = nb_ddim_step(x_t, noise, abar_t, abar_t1, 1 - abar_t, 1 - abar_t1, eta,
                                    z, clamp)
        preds.append(x_0_hat)
    return preds, states


def run_lesson_sampler(name, denoiser, sigmas, z0, seed, **opts):
    """The package's sampler from the notebook's start z0 (read as sigma_0 * z0); per-step
    x0_hat and the VP state the denoiser saw."""
    seen = []

    def cb(info):
        abar = 1.0 / (1.0 + info["sigma"] ** 2)
        seen.append((info["x0_hat"].clone(), info["x"] * math.sqrt(abar)))

    out = smp.get_sampler(name)(denoiser, z0 * float(sigmas[0]), sigmas,
                             generator=torch.Generator().manual_seed(seed), callback=cb, **opts)
    return out, seen


@pytest.mark.parametrize("steps,eta,clamp", [(100, 1.0, 1.5), (25, 1.0, 1.5), (25, 0.5, 0.2),
                                             (10, 0.0, 0.2)])
def test_ddim_lesson_matches_notebook(steps, eta, clamp):
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    preds, states = nb_ddim_sample(z0, steps, eta, torch.Generator().manual_seed(1), clamp)
    sigmas = smp.build_sigmas(CosineSchedule(), steps, grid="lesson")
    assert len(sigmas) == steps and float(sigmas[-1]) == 0.0
    out, seen = run_lesson_sampler("ddim_lesson", gauss_D, sigmas, z0, 1, eta=eta, clip_x0=clamp)
    assert len(seen) == steps - 1  # the notebook's last call (t = 0) returns x_t itself:
    torch.testing.assert_close(preds[-1], preds[-2].clamp(-clamp, clamp), rtol=0, atol=1e-12)
    pairs = [(p, s[0]) for p, s in zip(preds, seen)] + [(x, s[1]) for x, s in zip(states, seen)]
    pairs.append((preds[-1], out))
    diff = max_diff(pairs)
    report(f"ddim_lesson steps={steps} eta={eta} clip={clamp}", diff)
    assert diff < 1e-9
    if clamp == 0.2:  # the clamp acted, so the test sees it
        assert any(bool((s[0].abs() == 0.2).any()) for s in seen)


def test_ddim_lesson_differs_from_eps_rederiving_variant():
    """The project's old recipe (ddim, eps re-derived from the clamped x0_hat) is another sampler."""
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    sigmas = smp.build_sigmas(CosineSchedule(), 25, grid="lesson")
    a = smp.SAMPLERS["ddim_lesson"](gauss_D, z0 * float(sigmas[0]), sigmas, eta=0.0, clip_x0=0.2)
    b = smp.SAMPLERS["ddim"](gauss_D, z0 * float(sigmas[0]), sigmas, eta=0.0, clip_x0=0.2,
                             use_clipped_eps=True)
    assert float((a - b).abs().max()) > 1e-5  # vs ~1e-14 agreement with the notebook loop


# ---------------------------------------------------------------- 22_noise-pred: no-t DDIM
def eps_no_t(x_t):
    """A noise predictor that is never told the noise level: the Bayes eps at its own estimate."""
    return eps_vp(x_t, pred_abar(x_t).view(-1, 1, 1, 1))


def pred_abar(x_t):
    """A noise-level predictor (the notebook's ``tmodel(x_t).sigmoid()``): from each image's second
    moment E[x_t^2] = a (MU^2 + S^2) + 1 - a; kept in (0.001, 0.999) as a sigmoid head is."""
    m2 = x_t.pow(2).mean(dim=(1, 2, 3))
    return ((1 - m2) / (1 - MU * MU - S * S)).clamp(0.001, 0.999)


class Predictor:
    def alpha_bar(self, x_vp):
        return pred_abar(x_vp)


def nb_no_t_step(x_t, noise, abar_t, abar_t1, bbar_t, bbar_t1, eta, z):
    """22_noise-pred.ipynb, the ``ddim_step`` that asks tmodel (clamp +-2)."""
    sig = ((bbar_t1 / bbar_t).sqrt() * (1 - abar_t / abar_t1).sqrt()) * eta
    a = pred_abar(x_t)[..., None, None, None]
    med = a.median()
    a = a.clamp(med / 2, med * 2)
    x_0_hat = ((x_t - (1 - a).sqrt() * noise) / a.sqrt()).clamp(-2, 2)
    if bbar_t1 <= sig**2 + 0.01:
        sig = 0.
    x_t = abar_t1.sqrt() * x_0_hat + (bbar_t1 - sig**2).sqrt() * noise
    x_t = x_t + sig * z
    return x_0_hat, x_t


def nb_no_t_sample(z0, steps, eta, g):
    ts = torch.linspace(1 - 1 / steps, 0, steps, dtype=F64)
    x_t = z0.clone()
    preds, states = [], []
    for t in ts:
        states.append(x_t)
        abar_t = nb_abar(t)
        noise = eps_no_t(x_t)
        abar_t1 = nb_abar(t - 1 / steps) if t >= 1 / steps else torch.tensor(1, dtype=F64)
        z = torch.randn(z0.shape, generator=g, dtype=F64)
        x_0_hat, x_t = nb_no_t_step(x_t, noise, abar_t, abar_t1, 1 - abar_t, 1 - abar_t1, eta, z)
        preds.append(x_0_hat)
    return preds, states


@pytest.mark.parametrize("steps,eta", [(100, 1.0), (20, 1.0), (20, 0.5)])
def test_ddim_no_t_lesson_matches_notebook(steps, eta):
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    preds, states = nb_no_t_sample(z0, steps, eta, torch.Generator().manual_seed(4))
    den = NoTDenoiser(lambda x_vp, cond: eps_no_t(x_vp), Predictor(), clamp="median")
    sigmas = smp.build_sigmas(CosineSchedule(), steps, grid="lesson")
    out, seen = run_lesson_sampler("ddim_no_t_lesson", den, sigmas, z0, 4, eta=eta)
    assert len(seen) == steps  # every grid point, t = 0 included, as the notebook
    pairs = [(p, s[0]) for p, s in zip(preds, seen)] + [(x, s[1]) for x, s in zip(states, seen)]
    pairs.append((preds[-1], out))
    diff = max_diff(pairs)
    report(f"ddim_no_t_lesson steps={steps} eta={eta}", diff)
    assert diff < 1e-9
    # the median window acted on some image at some step (else the test would not see it)
    acted = False
    for x in states:
        a = pred_abar(x)
        med = a.median()
        acted |= bool(((a < med / 2) | (a > med * 2)).any())
    assert acted


def test_ddim_no_t_lesson_needs_a_no_t_denoiser():
    sigmas = smp.build_sigmas(CosineSchedule(), 5, grid="lesson")
    with pytest.raises(ValueError, match="no_t"):
        smp.get_sampler("ddim_no_t_lesson")(gauss_D, torch.zeros(2, 1, 4, 4, dtype=F64), sigmas)
    # it is kept out of SAMPLERS, whose every entry runs on every denoiser
    assert "ddim_no_t_lesson" in smp.NO_T_SAMPLERS and "ddim_no_t_lesson" not in smp.SAMPLERS


def test_lesson_sampler_yamls_list_every_option_at_its_default():
    import yaml

    from diffexp.config import CONF_DIR
    for name in ("ddim_lesson", "ddim_no_t_lesson", "heun_lesson"):
        cfg = yaml.safe_load((CONF_DIR / "sampler" / f"{name}.yaml").read_text())
        assert cfg.pop("clip_denoised") is False and cfg["name"] == name
        smp.validate_sampler_config(cfg)
        options = smp.split_sampler_config(cfg)[1]
        assert {k: v for k, v in options.items()} == smp.sampler_options(name)
    lms = yaml.safe_load((CONF_DIR / "sampler" / "lms_lesson.yaml").read_text())
    assert lms["name"] == "lms" and lms["order"] == 3 and lms["steps"] == 20


# ---------------------------------------------------------------- no_t without batch coupling
def test_no_t_grid_clamp_is_batch_independent_and_median_is_not():
    sched = CosineSchedule()
    kw = dict(n=12, shape=(1, 4, 4), seed=5, steps=15, grid="lesson", device="cpu",
              dtype=F64, sampler="ddim_no_t_lesson")
    out = {}
    for clamp in ("grid", "median"):
        den = NoTDenoiser(lambda x_vp, cond: eps_no_t(x_vp), Predictor(), clamp=clamp)
        a = smp.sample(den, sched, batch_size=4, **kw).x0
        b = smp.sample(den, sched, batch_size=12, **kw).x0
        part = smp.sample(den, sched, **{**kw, "n": 5}, first_index=7, batch_size=2).x0
        out[clamp] = (a, b, part)
        assert a.shape == (12, 1, 4, 4)
    a, b, part = out["grid"]
    assert torch.equal(a, b) and torch.equal(part, a[7:])
    a, b, _ = out["median"]
    assert not torch.allclose(a, b)  # the lesson's window couples the images of a batch
    # the same holds for every sampler on the no_t denoiser with the grid window
    den = NoTDenoiser(lambda x_vp, cond: eps_no_t(x_vp), Predictor(), clamp="grid")
    kw2 = {**kw, "sampler": "euler_ancestral", "grid": "schedule"}
    assert torch.equal(smp.sample(den, sched, batch_size=3, **kw2).x0,
                       smp.sample(den, sched, batch_size=12, **kw2).x0)


def test_grid_clamp_keeps_the_predictor_inside_its_training_range():
    grid = torch.tensor([2.5e-6, 1e-4, 0.3, 0.5, 0.9999, 1.0], dtype=F64)
    wild = torch.tensor([1e-9, 1e-9, 0.99, 0.2, 1 - 1e-9, 0.2], dtype=F64)
    out = clamp_to_grid(wild, grid, 2.0)
    # 2.5e-6 * 2 < ABAR_EPS: the predictor never saw that level, the grid's alpha_bar is used
    assert out[0] == grid[0]
    assert out[1] == pytest.approx(ABAR_EPS)          # window [5e-5, 2e-4] cut at ABAR_EPS
    assert out[2] == pytest.approx(0.6) and out[3] == pytest.approx(0.25)
    assert out[4] == pytest.approx(1 - ABAR_EPS)      # cut at the top of the training range
    assert out[5] == pytest.approx(0.5)
    inside = (out >= ABAR_EPS) & (out <= 1 - ABAR_EPS)
    assert bool(inside[1:].all())
    with pytest.raises(ValueError, match="clamp_factor"):
        clamp_to_grid(wild, grid, 0.5)
    with pytest.raises(ValueError, match="noise_level_clamp"):
        NoTDenoiser(lambda x, c: x, Predictor(), clamp="batch")


# ---------------------------------------------------------------- 23_karras
SIG_DATA = 0.66


def nb_sigmas_karras(n, sigma_min=0.01, sigma_max=80., rho=7.):
    ramp = torch.linspace(0, 1, n, dtype=F64)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, torch.tensor([0.], dtype=F64)])


def nb_denoise(x, sig):
    """The notebook's ``denoise(model, x, sig)`` with the exact model: D itself."""
    return gauss_D(x, torch.as_tensor(sig, dtype=F64).reshape(1).expand(x.shape[0]))


def nb_sample_heun(x, sigs, i, g, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.,
                   seen=None):
    sig, sig2 = sigs[i], sigs[i + 1]
    n = len(sigs)
    gamma = min(s_churn / (n - 1), 2**0.5 - 1) if s_tmin <= sig <= s_tmax else 0.
    eps = torch.randn(x.shape, generator=g, dtype=F64) * s_noise
    sigma_hat = sig * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sig**2) ** 0.5
    seen.append(x)  # the state the first D reads (test bookkeeping, not the notebook's)
    denoised = nb_denoise(x, sig)
    d = (x - denoised) / sig
    dt = sig2 - sigma_hat
    x_2 = x + d * dt
    if sig2 == 0:
        return x_2
    denoised_2 = nb_denoise(x_2, sig2)
    d_2 = (x_2 - denoised_2) / sig2
    d_prime = (d + d_2) / 2
    return x + d_prime * dt


def nb_sample_euler(x, sigs, i):
    sig, sig2 = sigs[i], sigs[i + 1]
    denoised = nb_denoise(x, sig)
    return x + (x - denoised) / sig * (sig2 - sig)


def nb_linear_multistep_coeff(order, t, i, j):
    def fn(tau):
        prod = 1.
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def nb_sample_lms(x, sigs, order):
    ds, states = [], []
    for i in range(len(sigs) - 1):
        states.append(x)
        sig = sigs[i]
        denoised = nb_denoise(x, sig)
        d = (x - denoised) / sig
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [nb_linear_multistep_coeff(cur_order, sigs, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x, states


def lesson_karras_grid(steps):
    """The grid a lesson_karras recipe builds: grid=karras grid.sigma_min=0.01 on schedule=karras
    (sigma_max 80, rho 7)."""
    return smp.build_sigmas(KarrasSchedule(), steps, grid="karras", sigma_min=0.01)


def test_karras_grid_matches_notebook():
    for steps in (20, 100):
        diff = float((lesson_karras_grid(steps) - nb_sigmas_karras(steps)).abs().max())
        report(f"karras grid steps={steps}", diff)
        assert diff < 1e-9


def _states(name, x, sigs, seed=None, **opts):
    seen = []
    g = None if seed is None else torch.Generator().manual_seed(seed)
    out = smp.SAMPLERS[name](gauss_D, x, sigs, generator=g,
                             callback=lambda info: seen.append(info["x"].clone()), **opts)
    return out, seen


@pytest.mark.parametrize("steps,s_churn", [(20, 0.5), (20, 0.0), (50, 3.0)])
def test_heun_lesson_matches_notebook(steps, s_churn):
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6), dtype=F64)
    nb_sigs = nb_sigmas_karras(steps)
    g = torch.Generator().manual_seed(7)
    x, ref = z * 80.0, []
    for i in range(len(nb_sigs) - 1):
        x = nb_sample_heun(x, nb_sigs, i, g, s_churn=s_churn, seen=ref)
    out, seen = _states("heun_lesson", z * 80.0, lesson_karras_grid(steps), seed=7,
                        s_churn=s_churn)
    assert len(ref) == len(seen) == steps
    pairs = [(r, s) for r, s in zip(ref, seen)] + [(x, out)]
    diff = max_diff(pairs)
    report(f"heun_lesson steps={steps} s_churn={s_churn}", diff)
    assert diff < 1e-9
    if s_churn > 0:  # and heun (D at sigma_hat) is a different sampler there
        other = smp.SAMPLERS["heun"](gauss_D, z * 80.0, lesson_karras_grid(steps),
                                     generator=torch.Generator().manual_seed(7), s_churn=s_churn)
        assert float((other - out).abs().max()) > 1e-6


@pytest.mark.parametrize("steps", [100, 20])
def test_euler_matches_notebook(steps):
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=F64)
    nb_sigs = nb_sigmas_karras(steps)
    x, ref = z * 80.0, []
    for i in range(len(nb_sigs) - 1):
        ref.append(x)
        x = nb_sample_euler(x, nb_sigs, i)
    out, seen = _states("euler", z * 80.0, lesson_karras_grid(steps))
    diff = max_diff([(r, s) for r, s in zip(ref, seen)] + [(x, out)])
    report(f"euler (lesson karras grid) steps={steps}", diff)
    assert diff < 1e-9


@pytest.mark.parametrize("order", [3, 4])
def test_lms_order_matches_notebook(order):
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=F64)
    nb_sigs = [float(s) for s in nb_sigmas_karras(20)]
    x, ref = nb_sample_lms(z * 80.0, nb_sigs, order)
    out, seen = _states("lms", z * 80.0, lesson_karras_grid(20), order=order)
    diff = max_diff([(r, s) for r, s in zip(ref, seen)] + [(x, out)])
    report(f"lms order={order} steps=20", diff)
    assert diff < 1e-7  # the notebook's quad(epsrel=1e-4) on a polynomial of degree <= 3


def test_c_noise_raw_is_the_lessons_model_call():
    """23_karras ``denoise(model, x, sig) = model((x*c_in, sig))*c_out + x*c_skip``: the network
    gets x * c_in and sigma itself with c_noise=raw, ln(sigma)/4 with the default."""
    calls = []

    def model(inp, cond):
        calls.append((inp, cond))
        return torch.tanh(inp) * (1 + cond.view(-1, 1, 1, 1))

    sig = torch.tensor([0.01, 0.3, 2.0, 80.0])
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(10)) * sig.view(-1, 1, 1, 1)
    obj = KarrasObjective(KarrasSchedule(), SIG_DATA, c_noise="raw")
    out = make_denoiser(model, obj)(x, sig)
    s = sig.view(-1, 1, 1, 1)
    totvar = s**2 + SIG_DATA**2
    c_skip, c_out, c_in = SIG_DATA**2 / totvar, s * SIG_DATA / totvar.sqrt(), 1 / totvar.sqrt()
    ref = model(x * c_in, sig) * c_out + x * c_skip
    diff = float((out - ref).abs().max())
    report("karras c_noise=raw denoiser", diff)
    assert diff < 1e-5
    torch.testing.assert_close(calls[0][1], sig)
    log = KarrasObjective(KarrasSchedule(), SIG_DATA)
    torch.testing.assert_close(log.cond(sig), sig.log() / 4)
    with pytest.raises(ValueError, match="c_noise"):
        KarrasObjective(KarrasSchedule(), SIG_DATA, c_noise="ln")


def test_timestep_embedding_is_diffusers_formula_and_tells_large_sigmas_apart():
    c = torch.tensor([0.01, 1.0, 79.0, 80.0])
    dim, half = 32, 16
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / half
    emb = c[:, None] * torch.exp(exponent)[None]
    ref = torch.cat([emb.cos(), emb.sin()], dim=1)  # Timesteps(flip_sin_to_cos=True, shift=0)
    torch.testing.assert_close(sinusoidal_embedding(c, dim, kind="timestep"), ref)
    net = UNet(widths=(16, 32), blocks=1, attn_levels=(), embedding="timestep")
    assert net(torch.randn(2, 1, 32, 32), torch.tensor([3.0, 80.0])).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="embedding"):
        UNet(widths=(16, 32), blocks=1, attn_levels=(), embedding="fourier")


# ---------------------------------------------------------------- grid=lesson and the configs
def test_lesson_grid():
    s = smp.build_sigmas(CosineSchedule(), 100, grid="lesson")
    t = torch.linspace(0.99, 0, 100, dtype=F64)
    abar = torch.cos(t * math.pi / 2) ** 2
    torch.testing.assert_close(s[:-1], ((1 - abar) / abar).sqrt()[:-1], rtol=1e-9, atol=0)
    assert float(s[-1]) == 0.0
    with pytest.raises(ValueError, match="alpha_bar\\(0\\) = 1"):
        smp.build_sigmas(KarrasSchedule(), 10, grid="lesson")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        smp.build_sigmas(CosineSchedule(), 1, grid="lesson")
    with pytest.raises(ValueError, match="grid.sigma_min"):
        smp.validate_grid_config({"name": "lesson", "sigma_min": 0.1})
    res = smp.sample(gauss_D, CosineSchedule(), n=3, shape=(2,), seed=0, sampler="ddim_lesson",
                     steps=10, grid="lesson")
    assert res.nfe == 9 == smp.nfe("ddim_lesson", 9)
    assert smp.nfe("ddim_no_t_lesson", 9) == 10


@pytest.mark.parametrize("exp", ["lesson_cosine", "lesson_karras", "course_cosine",
                                 "course_karras", "lesson_no_t_predictor"])
def test_recipes_validate(exp):
    c = validate_train_config(compose_train([f"experiment={exp}", "logger=none", *TINY_MODEL]))
    if exp.startswith("lesson_") and exp != "lesson_no_t_predictor":
        assert c["train"]["ema_decay"] == 0.0 and c["train"]["grad_clip"] == 0.0
    if exp == "lesson_cosine":
        assert c["data"]["scale"] == 0.5 and c["sampler"]["name"] == "ddim_lesson"
        assert c["grid"]["name"] == "lesson" and c["sampler"]["clip_x0"] == 1.5
    if exp == "lesson_karras":
        assert c["objective"]["c_noise"] == "raw" and c["objective"]["sigma_data"] == 0.66
        assert c["grid"]["sigma_min"] == 0.01


def test_lesson_no_t_recipe_validates(tmp_path):
    with pytest.raises(ConfigError, match="noise_level_ckpt"):
        validate_train_config(compose_train(["experiment=lesson_no_t", "logger=none"]))
    c = validate_train_config(compose_train(
        ["experiment=lesson_no_t", "logger=none", "objective.use_predicted_noise_level=false"]))
    assert c["sampler"]["name"] == "ddim_no_t_lesson" and c["sampler"]["clip_x0"] == 2.0
    assert c["objective"]["noise_level_clamp"] == "median" and c["data"]["scale"] == 0.5


@pytest.mark.parametrize("overrides,match", [
    (["objective=eps", "+objective.c_noise=raw"], "c_noise"),
    (["objective=karras", "schedule=karras", "objective.c_noise=sigma"], "objective.c_noise"),
    (["objective=no_t", "objective.use_predicted_noise_level=false",
      "objective.noise_level_clamp=batch"], "objective.noise_level_clamp"),
    (["sampler=ddim_no_t_lesson"], "ddim_no_t_lesson needs objective=no_t"),
    (["grid.name=lesson", "grid.sigma_max=5.0"], "grid.sigma_max"),
    (["schedule=karras", "objective=karras", "grid.name=lesson"], "alpha_bar\\(0\\) = 1"),
    (["sampler=ddim_lesson", "sampler.noise_floor=-1"], "noise_floor"),
])
def test_bad_lesson_settings_fail_in_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate_train_config(compose_train(["logger=none", *overrides]))
    assert "\n" not in str(e.value)
