"""Samplers for sigma-space diffusion models, k-diffusion style (pure torch; no Lightning/Hydra).

Conventions (see :mod:`diffexp.schedules`): a noised image is ``x = x0 + sigma * n``; a *denoiser*
``denoiser(x, sigma) -> x0_hat`` takes a batch ``x`` of shape ``[B, ...]`` and a 1-D tensor of
per-image noise levels of shape ``[B]`` (same dtype and device as ``x``) and returns the estimate of
``x0``. The probability-flow ODE in sigma space is ``dx/dsigma = (x - D(x; sigma)) / sigma``
(Karras et al. 2022, eq. 3 with ``sigma(t) = t``, ``s(t) = 1``). The denoiser owns the data scale;
everything here works in sigma space.

Samplers
--------
``SAMPLERS[name](denoiser, x, sigmas, *, generator=None, callback=None, **options) -> x0``
(``NO_T_SAMPLERS`` likewise, for the samplers that need a no_t model's denoiser;
:func:`get_sampler` finds both)

* ``x``: the starting noise, already multiplied by ``sigmas[0]``; its dtype (float32 in normal use)
  is the dtype of all arithmetic on images. Per-step coefficients are computed from the grid as
  Python floats (float64).
* ``sigmas``: strictly descending 1-D tensor (or sequence) ending in 0; ``N = len(sigmas) - 1``
  steps.
* ``generator``: ``None`` (global RNG), a ``torch.Generator``, or a :class:`PerSampleNoise`; every
  random draw goes through it.
* ``callback``: called once per step with a dict ``{"i", "sigma", "sigma_hat", "sigma_next", "x",
  "x0_hat", "denoised"}`` (``x`` is the state the denoiser saw at ``sigma_hat``; ``sigma_hat``
  differs from ``sigma`` only with churn; ``denoised`` is an alias of ``x0_hat``).
* Sampling runs under ``torch.no_grad()``.

=====================  ================================================  ==========  ==============
name                   options (defaults)                                NFE         last step
=====================  ================================================  ==========  ==============
``ddpm``               clip_x0=None, variance="posterior"                N           x0_hat
``ddim``               eta=0.0, clip_x0=None, use_clipped_eps=False      N           x0_hat
``euler``              s_churn=0, s_tmin=0, s_tmax=inf, s_noise=1        N           x0_hat
``euler_ancestral``    eta=1.0, s_noise=1.0                              N           x0_hat
``heun``               s_churn, s_tmin, s_tmax, s_noise as euler         2N - 1      Euler (x0_hat)
``dpm_2``              s_churn, s_tmin, s_tmax, s_noise as euler         2N - 1      Euler (x0_hat)
``lms``                order=4                                           N           LMS step to 0
``dpmpp_2m``           (none)                                            N           x0_hat
``dpmpp_2m_sde``       eta=1.0, s_noise=1.0, solver_type="midpoint"      N           x0_hat
``dpmpp_2s_ancestral`` eta=1.0 (0 <= eta <= 1), s_noise=1.0              2N - 1      x0_hat
``ddim_lesson``        eta=1.0, clip_x0=1.5, noise_floor=0.01            N           x0_hat
``ddim_no_t_lesson``   eta=1.0, clip_x0=2.0, noise_floor=0.01            N + 1       x0_hat at 0
``heun_lesson``        s_churn, s_tmin, s_tmax, s_noise as euler         2N - 1      Euler (x0_hat)
=====================  ================================================  ==========  ==============

The three ``*_lesson`` samplers are the fast.ai course22p2 notebooks' loops (22_cosine,
22_noise-pred, 23_karras), each tested step by step against a re-implementation of the notebook
loop in its own variables (tests/test_lesson.py). ``ddim_lesson`` differs from ``ddim(eta=1,
clip_x0=...)`` only in zeroing the noise when ``1 - abar_next <= sig^2 + 0.01`` and in its start
(unit VP noise); ``ddim_no_t_lesson`` needs a no_t model (the predicted alpha_bar acts on x0_hat
only; the step uses the schedule's); ``heun_lesson`` evaluates the first D at sigma, not
sigma_hat (identical to ``heun`` without churn). The lesson's LMS is ``lms`` with ``order=3``.
The lesson's DDIM grid is ``grid=lesson`` (``t = linspace(1 - 1/steps, 0, steps)``: ``steps``
values, the last 0, so N = steps - 1).

"x0_hat" means the step to sigma = 0 returns the denoiser's estimate at the current state (for
Euler-type steps this *is* the Euler step ``x + (0 - sigma) (x - D) / sigma = D``; for the
exponential integrators it is the first-order step with ``h = inf``). Equivalences, all tested:
``ddim(eta=0) == euler``; ``ddim(eta) == euler_ancestral(eta)``; ``ddpm == ddim(eta=1)`` (with
``clip_x0``: ``ddim(eta=1, clip_x0, use_clipped_eps=True)``); ``lms(order=1) == euler``;
``dpmpp_2m_sde(eta=0) == dpmpp_2m``; ``dpmpp_2m_sde(eta=1)`` with first-order steps is ``ddpm``.
``ddim`` with default options is the lesson's DDIM step; ``ddpm(clip_x0=..., variance="beta")`` is
the lesson's DDPM sampler (clamped x0 estimate, noise variance ``beta_t``).

Grids (float64, n descending sigmas then a final 0)
---------------------------------------------------
* ``karras_sigmas(n, sigma_min, sigma_max, rho=7.0)``: Karras et al. 2022, eq. 5.
* ``exponential_sigmas(n, sigma_min, sigma_max)``: uniform in log sigma.
* ``build_sigmas(schedule, steps, grid="schedule", rho=7.0, sigma_min=None, sigma_max=None)``:
  ``None`` means the schedule's own value. ``grid="schedule"`` is
  ``schedule.sampling_sigmas(steps)`` (uniform in the schedule's t); with ``sigma_min`` /
  ``sigma_max`` given it is uniform in t between ``t_from_sigma(sigma_max)`` and
  ``t_from_sigma(sigma_min)``, with those exact sigmas at the ends.

Seeding
-------
``PerSampleNoise(seed, indices, device="cpu")`` holds one ``torch.Generator`` per image, seeded
from ``(seed, global index k)``; image ``k`` therefore gets the same noise stream (start noise
first, then each step's draws) whatever the batch size or the split over batches / processes. The
generators live on ``device`` (CPU by default, so CPU and GPU runs share their noise) and the draws
are moved to the images' device.

High level
----------
``sample(denoiser, schedule, *, n, shape, seed, sampler="euler", steps=20, grid="schedule",
rho=7.0, sigma_min=None, sigma_max=None, batch_size=None, first_index=0, device="cpu",
callback=None, dtype=torch.float32, noise_device="cpu", **options) -> SampleResult(x0, nfe,
sigmas)``: builds the grid, draws each image's start noise from its own stream (times
``sigmas[0]``), runs the sampler in batches and returns ``x0`` of shape ``[n, *shape]`` on
``device``; ``nfe`` is *measured* (denoiser calls per batch) and ``sigmas`` is the grid used. The
callback's dict gains ``"batch_start"`` (global index of the batch's first image).

``nfe(name, n_steps, **options)``: the denoiser-evaluation count per image.
``sampler_options(name)``: the sampler's options and their defaults (from its signature).

Config
------
A run's sampling is two config groups. The sampler (``conf/sampler/<name>.yaml``) holds ``name``,
``steps`` and the sampler's options; the grid (``conf/grid/<name>.yaml``) holds ``name``
(``schedule`` | ``karras`` | ``exponential``), ``rho`` (karras only) and ``sigma_min`` /
``sigma_max``. ``validate_sampler_config(cfg)`` and ``validate_grid_config(grid)`` raise
``ValueError("sampler.steps must be >= 1 (got 0)")``-style one-line errors naming the setting; a
rho given to a grid other than karras is such an error, so rho can never be set without acting.
``split_sampler_config(cfg, grid) -> (kwargs, options)`` validates both and returns ``kwargs``
holding ``sampler`` (the name), ``steps``, ``grid``, ``rho``, ``sigma_min``, ``sigma_max``, so
``sample(den, sched, n=..., shape=..., seed=..., **kwargs, **options)`` works.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SAMPLERS",
    "register_sampler",
    "NO_T_SAMPLERS",
    "GRIDS",
    "GRID_CONFIG_KEYS",
    "PerSampleNoise",
    "per_sample_seed",
    "CountingDenoiser",
    "SampleResult",
    "karras_sigmas",
    "exponential_sigmas",
    "lesson_sigmas",
    "build_sigmas",
    "get_sampler",
    "sampler_options",
    "nfe",
    "sample",
    "validate_sampler_config",
    "validate_grid_config",
    "split_sampler_config",
    "sample_ddpm",
    "sample_ddim",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_dpm_2",
    "sample_lms",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_ddim_lesson",
    "sample_ddim_no_t_lesson",
    "sample_heun_lesson",
]

Denoiser = Callable[[Tensor, Tensor], Tensor]

GRIDS = ("schedule", "karras", "exponential", "lesson")
#: the settings of a grid config (conf/grid/<name>.yaml)
GRID_CONFIG_KEYS = ("name", "rho", "sigma_min", "sigma_max")

# =============================================================================================
# Noise
# =============================================================================================

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """One round of SplitMix64 (Steele et al. 2014): a bijective 64-bit mixer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def per_sample_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image ``index`` in a run with base ``seed``."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(index) & _MASK64))


class PerSampleNoise:
    """One noise stream per image: image ``k`` draws from ``torch.Generator`` seeded with
    ``per_sample_seed(seed, k)``. Pass it as a sampler's ``generator``; a batch of ``len(indices)``
    images draws row ``j`` from stream ``indices[j]``."""

    def __init__(self, seed: int, indices: Iterable[int], device: str | torch.device = "cpu"):
        self.seed = int(seed)
        self.indices = [int(k) for k in indices]
        self.device = torch.device(device)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(per_sample_seed(self.seed, k))
            for k in self.indices
        ]

    def __len__(self) -> int:
        return len(self.indices)

    def randn(self, shape: Sequence[int], dtype=torch.float32, device=None) -> Tensor:
        """Standard normal draws of shape ``[len(self), *shape]``, one row per stream."""
        gen_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        target = torch.device(device) if device is not None else torch.device(self.device)
        # CPU streams bound for a GPU: fill a pinned buffer row by row (same numbers as stacking
        # the draws) and copy without blocking the host
        pin = target.type == "cuda" and torch.device(self.device).type == "cpu"
        out = torch.empty((len(self.generators), *shape), dtype=gen_dtype, device=self.device,
                          pin_memory=pin)
        for row, g in zip(out, self.generators):
            torch.randn(tuple(shape), generator=g, dtype=gen_dtype, device=self.device, out=row)
        return out.to(device=target, dtype=dtype, non_blocking=pin)


def _randn_like(x: Tensor, generator) -> Tensor:
    """N(0, I) noise shaped like ``x``, from ``generator``: None (torch's global RNG), a
    ``torch.Generator`` or a :class:`PerSampleNoise`. The only place samplers draw noise."""
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, PerSampleNoise):
        if len(generator) != x.shape[0]:
            raise ValueError(f"PerSampleNoise has {len(generator)} streams but the batch has "
                             f"{x.shape[0]} images")
        return generator.randn(x.shape[1:], dtype=x.dtype, device=x.device)
    if isinstance(generator, torch.Generator):
        gen_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=gen_dtype)
        return z.to(device=x.device, dtype=x.dtype)
    raise TypeError(f"generator must be None, a torch.Generator or a PerSampleNoise "
                    f"(got {type(generator).__name__})")


# =============================================================================================
# Sigma grids
# =============================================================================================


def _check_positive_number(value, label: str, strict: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        ok = value > 0 if strict else value >= 0
    if not ok:
        raise ValueError(f"{label} must be {'>' if strict else '>='} 0 (got {value!r})")


def _check_steps(steps, label: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"{label} must be an integer >= 1 (got {steps!r})")
    if steps < 1:
        raise ValueError(f"{label} must be >= 1 (got {steps!r})")


def _check_sigma_range(sigma_min, sigma_max, prefix: str = "") -> None:
    for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value is not None:
            _check_positive_number(value, prefix + key)
            if math.isinf(value):
                raise ValueError(f"{prefix}{key} must be finite (got {value!r})")
    if sigma_min is not None and sigma_max is not None and not sigma_min < sigma_max:
        raise ValueError(f"{prefix}sigma_min must be < {prefix}sigma_max "
                         f"(got {sigma_min!r} and {sigma_max!r})")


def _append_zero(s: Tensor) -> Tensor:
    return torch.cat([s, s.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho`` for i = 0..n-1, then 0. Larger rho packs steps near sigma_min."""
    _check_steps(n, "n")
    _check_positive_number(rho, "rho")
    _check_sigma_range(sigma_min, sigma_max)
    if n == 1:
        return torch.tensor([float(sigma_max), 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    s = (hi + ramp * (lo - hi)) ** rho
    s[0], s[-1] = sigma_max, sigma_min  # exact ends despite the powers' rounding
    return _append_zero(s)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` sigmas uniform in log sigma from sigma_max to sigma_min, then 0."""
    _check_steps(n, "n")
    _check_sigma_range(sigma_min, sigma_max)
    if n == 1:
        return torch.tensor([float(sigma_max), 0.0], dtype=torch.float64)
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    s[0], s[-1] = sigma_max, sigma_min
    return _append_zero(s)


def lesson_sigmas(schedule, steps: int) -> Tensor:
    """The lesson's DDIM grid (notebooks 22_cosine / 22_noise-pred, ``sample``): ``t =
    linspace(1 - 1/steps, 0, steps)`` mapped through the schedule, so the grid holds ``steps``
    values and its last, ``t = 0``, is sigma = 0 (alpha_bar(0) = 1): ``steps - 1`` moves, the
    notebook's ``abar_t1 = 1`` at its last step being the move to sigma = 0. Only VP schedules with
    ``alpha_bar(0) = 1`` have such a grid (cosine, linear, sigmoid), and ``steps >= 2``."""
    _check_steps(steps, "steps")
    if steps < 2:
        raise ValueError(f"steps must be >= 2 with grid=lesson (its last point is t = 0; got "
                         f"{steps})")
    t = torch.linspace(1 - 1 / steps, 0, steps, dtype=torch.float64)
    s = schedule.sigma(t).to(torch.float64).clone()
    if not abs(float(s[-1])) < 1e-6:
        raise ValueError(f"grid=lesson needs a schedule with alpha_bar(0) = 1 (cosine, linear, "
                         f"sigmoid); this one has sigma(0) = {float(s[-1]):.4g}")
    s[-1] = 0.0
    return s


def _check_grid_settings(steps, grid, rho, sigma_min, sigma_max, prefix: str = "") -> None:
    _check_steps(steps, prefix + "steps")
    if grid not in GRIDS:
        raise ValueError(f"{prefix}grid={grid!r} is not one of {list(GRIDS)}")
    _check_positive_number(rho, prefix + "rho")
    _check_sigma_range(sigma_min, sigma_max, prefix)


def build_sigmas(schedule, steps: int, grid: str = "schedule", rho: float = 7.0,
                 sigma_min: float | None = None, sigma_max: float | None = None) -> Tensor:
    """The sampling grid (float64, ``steps`` descending sigmas then 0).

    ``sigma_min`` / ``sigma_max`` default (None) to the schedule's. ``grid="schedule"``: uniform in
    the schedule's t (``schedule.sampling_sigmas(steps)``); given sigma_min / sigma_max are mapped
    through ``schedule.t_from_sigma`` and the grid is uniform in t between them. ``"karras"``:
    :func:`karras_sigmas` with ``rho``; ``"exponential"``: :func:`exponential_sigmas` (rho is
    validated but unused outside karras); ``"lesson"``: :func:`lesson_sigmas` (``steps`` values,
    the last of them 0; no sigma_min / sigma_max)."""
    _check_grid_settings(steps, grid, rho, sigma_min, sigma_max)
    lo = float(schedule.sigma_min) if sigma_min is None else float(sigma_min)
    hi = float(schedule.sigma_max) if sigma_max is None else float(sigma_max)
    _check_sigma_range(lo, hi)
    if grid == "karras":
        return karras_sigmas(steps, lo, hi, rho)
    if grid == "exponential":
        return exponential_sigmas(steps, lo, hi)
    if grid == "lesson":
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("grid=lesson is fixed by the steps (t = linspace(1 - 1/steps, 0, "
                             "steps)); it takes no sigma_min / sigma_max")
        return lesson_sigmas(schedule, steps)
    if sigma_min is None and sigma_max is None:
        s = schedule.sampling_sigmas(steps).to(torch.float64)
    else:
        def t_of(sig: float) -> float:
            return float(schedule.t_from_sigma(torch.tensor(sig, dtype=torch.float64)))

        t_hi = schedule.t_max if sigma_max is None else t_of(hi)
        t_lo = schedule.t_min if sigma_min is None else t_of(lo)
        if steps == 1:
            s = torch.tensor([hi], dtype=torch.float64)
        else:
            s = schedule.sigma(torch.linspace(t_hi, t_lo, steps, dtype=torch.float64))
            s = s.to(torch.float64).clone()
            s[0], s[-1] = hi, lo
        s = _append_zero(s)
    _check_sigmas(s)
    return s


def _check_sigmas(sigmas) -> list[float]:
    """Validate a grid and return it as Python floats: 1-D, >= 2 values, finite, strictly
    descending, last value exactly 0."""
    if isinstance(sigmas, Tensor):
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be a 1-D tensor (got shape {tuple(sigmas.shape)})")
        values = [float(v) for v in sigmas.detach().double().cpu().tolist()]
    else:
        values = [float(v) for v in sigmas]
    if len(values) < 2:
        raise ValueError(f"sigmas must hold at least 2 values, the last 0 (got {len(values)})")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("sigmas must be finite")
    if values[-1] != 0.0:
        raise ValueError(f"sigmas must end at 0 (got last value {values[-1]!r})")
    for i in range(len(values) - 1):
        if not values[i] > values[i + 1]:
            raise ValueError(f"sigmas must be strictly descending (sigmas[{i}]={values[i]!r}, "
                             f"sigmas[{i + 1}]={values[i + 1]!r})")
    return values


# =============================================================================================
# Shared step helpers
# =============================================================================================


def _denoise(denoiser: Denoiser, x: Tensor, sigma: float) -> Tensor:
    """Call the denoiser with a per-image sigma tensor of shape [B] (x's dtype and device)."""
    return denoiser(x, x.new_full((x.shape[0],), sigma))


def _to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """PF-ODE derivative in sigma space, dx/dsigma = (x - D(x; sigma)) / sigma (Karras eq. 3)."""
    return (x - denoised) / sigma


def _ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split the move sigma -> sigma_next into a deterministic part down to ``sigma_down`` and
    fresh noise of std ``sigma_up``, ``sigma_down^2 + sigma_up^2 = sigma_next^2``.

    ``sigma_up = eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma`` is DDIM's
    ``sigma_t(eta)`` (Song et al. 2021, eq. 16) carried into sigma space (divide the VP update by
    sqrt(abar_next)); at eta = 1 it is the DDPM posterior std. Clamped at sigma_next (eta > 1)."""
    if sigma_next == 0.0:
        return 0.0, 0.0
    up = eta * sigma_next * math.sqrt(sigma * sigma - sigma_next * sigma_next) / sigma
    up = min(sigma_next, up)
    down = math.sqrt(max(sigma_next * sigma_next - up * up, 0.0))
    return down, up


def _churn(x: Tensor, sigma: float, n_steps: int, generator, s_churn: float, s_tmin: float,
           s_tmax: float, s_noise: float) -> tuple[Tensor, float]:
    """Karras et al. 2022, Algorithm 2 lines 4-6: raise the noise level to
    ``sigma_hat = sigma (1 + gamma)``, ``gamma = min(S_churn / N, sqrt(2) - 1)`` when
    ``S_tmin <= sigma <= S_tmax`` (else 0), by adding ``S_noise * sqrt(sigma_hat^2 - sigma^2)``
    times fresh noise. No draw when gamma = 0."""
    gamma = min(s_churn / n_steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0.0:
        return x, sigma
    sigma_hat = sigma * (1.0 + gamma)
    x = x + _randn_like(x, generator) * (s_noise * math.sqrt(sigma_hat**2 - sigma**2))
    return x, sigma_hat


def _clip(x0: Tensor, clip_x0) -> Tensor:
    """Clamp an x0 estimate to ``[-c, c]`` (number) or ``[lo, hi]`` (pair); None: unchanged."""
    if clip_x0 is None:
        return x0
    if isinstance(clip_x0, (int, float)):
        return x0.clamp(-float(clip_x0), float(clip_x0))
    lo, hi = clip_x0
    return x0.clamp(float(lo), float(hi))


def _report(callback, i: int, sigma: float, sigma_hat: float, sigma_next: float, x: Tensor,
            denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_hat": sigma_hat, "sigma_next": sigma_next,
                  "x": x, "x0_hat": denoised, "denoised": denoised})


# =============================================================================================
# Option validation (shared by the samplers, nfe(), sample() and the config check)
# =============================================================================================


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _option_error(sampler: str, key: str, value) -> str | None:
    """What is wrong with option ``key=value`` (None if fine)."""
    if key in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise"):
        if not _is_number(value):
            return "must be a number >= 0"
        if value < 0:
            return "must be >= 0"
        if key == "eta" and sampler == "dpmpp_2s_ancestral" and value > 1:
            return "must be <= 1 for dpmpp_2s_ancestral"
        if key != "s_tmax" and math.isinf(value):
            return "must be finite"
    elif key == "order":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return "must be an integer >= 1"
    elif key == "solver_type":
        if value not in ("midpoint", "heun"):
            return "must be one of ['midpoint', 'heun']"
    elif key == "variance":
        if value not in ("posterior", "beta"):
            return "must be one of ['posterior', 'beta']"
    elif key == "noise_floor":
        if not _is_number(value) or value < 0 or math.isinf(value):
            return "must be a finite number >= 0"
    elif key == "use_clipped_eps":
        if not isinstance(value, bool):
            return "must be true or false"
    elif key == "clip_x0":
        if value is None:
            return None
        if _is_number(value):
            return None if value > 0 else "must be null, a positive number c or a pair [lo, hi]"
        try:
            lo, hi = value
        except (TypeError, ValueError):
            return "must be null, a positive number c or a pair [lo, hi]"
        if not (_is_number(lo) and _is_number(hi) and lo < hi):
            return "must be null, a positive number c or a pair [lo, hi] with lo < hi"
    return None


def _check_options(name: str, options: dict, prefix: str) -> None:
    valid = sampler_options(name)
    for key, value in options.items():
        if key not in valid:
            choices = ", ".join(valid) if valid else "none"
            raise ValueError(f"{prefix}{key} is not an option of sampler {name!r} "
                             f"(valid options: {choices})")
        err = _option_error(name, key, value)
        if err is not None:
            raise ValueError(f"{prefix}{key} {err} (got {value!r})")
    merged = {**valid, **options}
    if "s_tmin" in merged and merged["s_tmin"] > merged["s_tmax"]:
        raise ValueError(f"{prefix}s_tmin must be <= {prefix}s_tmax "
                         f"(got {merged['s_tmin']!r} and {merged['s_tmax']!r})")


# =============================================================================================
# Registry
# =============================================================================================

SAMPLERS: dict[str, Callable[..., Tensor]] = {}
#: samplers that need a no_t model's denoiser (``eps_and_alpha_bar``), kept apart from SAMPLERS,
#: whose every entry runs on every denoiser
NO_T_SAMPLERS: dict[str, Callable[..., Tensor]] = {}
_NFE_PER_STEP: dict[str, int] = {}
_NFE_EXTRA: dict[str, int] = {}
_RAW: dict[str, Callable[..., Tensor]] = {}
_USER: dict[str, str] = {}  # user samplers registered from a sampler._target_: name -> target


def _register(name: str, evals_per_step: int = 1, extra_evals: int = 0, no_t: bool = False):
    """Register a sampler. The wrapper validates options (unknown keys, values) and the grid,
    turns the grid into Python floats and runs the pure step loop under no_grad. ``extra_evals``:
    denoiser calls beyond the steps' (ddim_no_t_lesson's call at sigma = 0); ``no_t``: it needs a
    no_t model's denoiser (registered in NO_T_SAMPLERS instead of SAMPLERS)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(denoiser: Denoiser, x: Tensor, sigmas, *, generator=None, callback=None,
                    **options) -> Tensor:
            _check_options(name, options, prefix=f"{name}.")
            values = _check_sigmas(sigmas)
            if not torch.is_floating_point(x):
                raise ValueError(f"x must be a floating-point tensor (got {x.dtype})")
            with torch.no_grad():
                return fn(denoiser, x, values, generator=generator, callback=callback, **options)

        (NO_T_SAMPLERS if no_t else SAMPLERS)[name] = wrapper
        _RAW[name] = fn
        _NFE_PER_STEP[name] = evals_per_step
        _NFE_EXTRA[name] = extra_evals
        return wrapper

    return deco


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function registered as ``name``."""
    if name in NO_T_SAMPLERS:
        return NO_T_SAMPLERS[name]
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid choices: "
                         f"{sorted([*SAMPLERS, *NO_T_SAMPLERS])}")
    return SAMPLERS[name]


def sampler_options(name: str) -> dict:
    """The options of sampler ``name`` and their defaults, read from its signature."""
    get_sampler(name)
    params = inspect.signature(_RAW[name]).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("generator", "callback")}


def nfe(name: str, n_steps: int, **options) -> int:
    """Denoiser evaluations per image for ``n_steps`` steps (grid intervals): N for one-evaluation
    samplers, 2N - 1 for heun, heun_lesson, dpm_2 and dpmpp_2s_ancestral (their last step, to
    sigma = 0, is first order), N + 1 for ddim_no_t_lesson (its last call is at sigma = 0)."""
    get_sampler(name)
    _check_steps(n_steps, "n_steps")
    _check_options(name, options, prefix=f"{name}.")
    k = _NFE_PER_STEP[name]
    return k * n_steps - (k - 1) + _NFE_EXTRA[name]


# =============================================================================================
# Samplers
# =============================================================================================


@_register("ddpm")
def sample_ddpm(denoiser, x, sigmas, *, generator=None, callback=None, clip_x0=None,
                variance="posterior"):
    """Ancestral sampling (Ho et al. 2020, eqs. 6-7, Algorithm 2) written in sigma space.

    From ``x = x_next + sqrt(s^2 - s'^2) n`` and ``x_next = x0 + s' n'`` (s = sigma, s' =
    sigma_next) the posterior q(x_next | x, x0) has mean ``x0 + (s'^2 / s^2)(x - x0)`` and variance
    ``s'^2 (s^2 - s'^2) / s^2`` (Ho's beta-tilde times 1 + s'^2); x0 is the (optionally clamped)
    estimate. ``variance="beta"`` uses Ho's other choice sigma_t^2 = beta_t instead, with
    ``beta_t = 1 - abar_t / abar_prev = (s^2 - s'^2) / (1 + s^2)``, i.e. ``beta_t (1 + s'^2)`` in
    sigma space. Last step (s' = 0): the posterior is a point mass at x0, returned as is (Ho et
    al. add no noise at t = 1)."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _clip(_denoise(denoiser, x, sigma), clip_x0)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        ratio = sigma_next**2 / sigma**2
        x = denoised + ratio * (x - denoised)
        if variance == "posterior":
            std = sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
        else:
            std = math.sqrt((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2))
        x = x + _randn_like(x, generator) * std
    return x


@_register("ddim")
def sample_ddim(denoiser, x, sigmas, *, generator=None, callback=None, eta=0.0, clip_x0=None,
                use_clipped_eps=False):
    """DDIM (Song et al. 2021, eq. 12) in sigma space.

    Dividing the VP update ``x'_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - sigma_t^2) eps +
    sigma_t z`` by sqrt(abar') gives ``x_next = x0 + sigma_down * eps + sigma_up * z`` with
    ``eps = (x - x0) / sigma`` and (sigma_down, sigma_up) from :func:`_ancestral_step`. eta = 0 is
    the Euler step of the PF-ODE, eta = 1 is DDPM. ``clip_x0`` clamps the x0 estimate; as in the
    lesson / diffusers the direction term keeps the model's own eps unless ``use_clipped_eps``
    (eps re-derived from the clamped x0). Last step (sigma_next = 0): returns the x0 estimate."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        raw = _denoise(denoiser, x, sigma)
        denoised = _clip(raw, clip_x0)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        eps = (x - (denoised if use_clipped_eps else raw)) / sigma
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = denoised + eps * sigma_down
        if sigma_up > 0.0:
            x = x + _randn_like(x, generator) * sigma_up
    return x


@_register("euler")
def sample_euler(denoiser, x, sigmas, *, generator=None, callback=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=math.inf, s_noise=1.0):
    """Euler's method on the PF-ODE (Karras et al. 2022, Algorithm 2 without the second-order
    correction), with optional churn. Last step: the Euler step from sigma_hat to 0,
    ``x + (0 - sigma_hat) (x - D) / sigma_hat``, is exactly D, returned as such. NFE = N."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, sigma_hat)
        _report(callback, i, sigma, sigma_hat, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
        else:
            x = x + _to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@_register("euler_ancestral")
def sample_euler_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0,
                           s_noise=1.0):
    """Ancestral Euler (k-diffusion's ``sample_euler_ancestral``): an Euler step of the PF-ODE down
    to sigma_down, then fresh noise of std ``s_noise * sigma_up`` (:func:`_ancestral_step`).
    Algebraically DDIM with the same eta. Last step: returns D."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        x = x + _to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_up > 0.0:
            x = x + _randn_like(x, generator) * (s_noise * sigma_up)
    return x


@_register("heun", evals_per_step=2)
def sample_heun(denoiser, x, sigmas, *, generator=None, callback=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=math.inf, s_noise=1.0):
    """Heun's 2nd-order method, Karras et al. 2022 Algorithm 2 (churn: lines 4-6; correction: lines
    9-11). Last step: as in Algorithm 2 (line 8), no correction at sigma_next = 0, so it is the
    Euler step, i.e. D. NFE = 2N - 1."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, sigma_hat)
        _report(callback, i, sigma, sigma_hat, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        d = _to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        x_euler = x + d * dt
        d_next = _to_d(x_euler, sigma_next, _denoise(denoiser, x_euler, sigma_next))
        x = x + 0.5 * (d + d_next) * dt
    return x


@_register("dpm_2", evals_per_step=2)
def sample_dpm_2(denoiser, x, sigmas, *, generator=None, callback=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=math.inf, s_noise=1.0):
    """DPM-Solver-2 (Lu et al. 2022a, Algorithm 1 with r = 1/2) in Karras' sigma form (k-diffusion's
    ``sample_dpm_2``): the midpoint method on the PF-ODE with the midpoint taken in log sigma,
    ``sigma_mid = sqrt(sigma_hat * sigma_next)``; churn as in :func:`sample_euler`. Last step:
    sigma_mid would be 0, so it is the Euler step, i.e. D. NFE = 2N - 1."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, sigma_hat)
        _report(callback, i, sigma, sigma_hat, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        sigma_mid = math.sqrt(sigma_hat * sigma_next)
        x_mid = x + _to_d(x, sigma_hat, denoised) * (sigma_mid - sigma_hat)
        d_mid = _to_d(x_mid, sigma_mid, _denoise(denoiser, x_mid, sigma_mid))
        x = x + d_mid * (sigma_next - sigma_hat)
    return x


def _lms_coefficients(nodes: Sequence[float], sigma_next: float) -> list[float]:
    """``c_j = integral_{nodes[0]}^{sigma_next} l_j(tau) dtau``, l_j the Lagrange basis polynomial
    on ``nodes`` (most recent first), in closed form: each l_j is expanded in ``u = tau -
    nodes[0]`` (which keeps the float64 arithmetic well conditioned) and integrated termwise."""
    shifted = [s - nodes[0] for s in nodes]
    h = sigma_next - nodes[0]
    coeffs = []
    for j, sj in enumerate(shifted):
        poly = [1.0]  # coefficients of l_j * denominator, increasing powers of u
        denom = 1.0
        for m, sm in enumerate(shifted):
            if m == j:
                continue
            # multiply by (u - sm)
            poly = [(poly[p - 1] if p > 0 else 0.0) - sm * (poly[p] if p < len(poly) else 0.0)
                    for p in range(len(poly) + 1)]
            denom *= sj - sm
        coeffs.append(sum(c * h ** (p + 1) / (p + 1) for p, c in enumerate(poly)) / denom)
    return coeffs


@_register("lms")
def sample_lms(denoiser, x, sigmas, *, generator=None, callback=None, order=4):
    """Linear multistep (variable-step Adams-Bashforth) on the PF-ODE, as k-diffusion's
    ``sample_lms``: ``x_next = x + sum_j c_j d_{i-j}`` over the last ``k = min(i + 1, order)``
    derivatives, ``c_j`` the integral of the Lagrange basis polynomial through those sigmas over
    [sigma_i, sigma_next] (:func:`_lms_coefficients`). The first steps warm up with lower orders.
    Last step: an ordinary LMS step whose integral runs to sigma = 0 (d = (x - D) / sigma stays
    finite along the ODE); with order 1 that is D, as for euler. NFE = N."""
    n = len(sigmas) - 1
    ds: list[Tensor] = []
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        ds.insert(0, _to_d(x, sigma, denoised))  # most recent first
        del ds[order:]
        coeffs = _lms_coefficients([sigmas[i - j] for j in range(len(ds))], sigma_next)
        for c, d in zip(coeffs, ds):
            x = x + c * d
    return x


@_register("dpmpp_2m")
def sample_dpmpp_2m(denoiser, x, sigmas, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) in sigma space (alpha = 1, lambda = -log
    sigma, ``h = log(sigma / sigma_next)``, ``r = h_prev / h``)::

        x_next = (sigma_next / sigma) x - expm1(-h) * D_eff,
        D_eff = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}   (D_eff = D_0 on the first step).

    Last step: h = inf, so it is the first-order step with ``sigma_next / sigma = 0``, i.e. D
    (the 2nd-order correction would need r = 0). NFE = N."""
    n = len(sigmas) - 1
    old_denoised, h_prev = None, None
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        if old_denoised is None:
            d_eff = denoised
        else:
            r = h_prev / h
            d_eff = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * d_eff
        old_denoised, h_prev = denoised, h
    return x


@_register("dpmpp_2m_sde")
def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0,
                        s_noise=1.0, solver_type="midpoint"):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, sec. 5 / appendix; the eta-generalised form of
    k-diffusion's ``sample_dpmpp_2m_sde``) in sigma space, ``h = log(sigma / sigma_next)``::

        x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1+eta) h}) D_i + corr
                 + s_noise * sigma_next * sqrt(1 - e^{-2 eta h}) * z,

    ``corr = (1/r)(D_i - D_{i-1}) * c`` with ``c = (1 - e^{-(1+eta)h}) / 2`` ("midpoint") or
    ``c = 1 - (1 - e^{-(1+eta)h}) / ((1+eta) h)`` ("heun", the exact integral of the linear
    interpolant); no correction on the first step. eta = 0 is DPM-Solver++(2M); eta = 1 with
    first-order steps is DDPM. Noise is i.i.d. Gaussian per step (k-diffusion defaults to a
    Brownian tree). Last step: returns D. NFE = N."""
    n = len(sigmas) - 1
    old_denoised, h_prev = None, None
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        a = (1.0 + eta) * h
        one_minus = -math.expm1(-a)  # 1 - e^{-(1+eta) h}
        x = (sigma_next / sigma) * math.exp(-eta * h) * x + one_minus * denoised
        if old_denoised is not None:
            r = h_prev / h
            c = 0.5 * one_minus if solver_type == "midpoint" else 1.0 - one_minus / a
            x = x + (c / r) * (denoised - old_denoised)
        if eta > 0.0:
            std = s_noise * sigma_next * math.sqrt(-math.expm1(-2.0 * eta * h))
            x = x + _randn_like(x, generator) * std
        old_denoised, h_prev = denoised, h
    return x


@_register("dpmpp_2s_ancestral", evals_per_step=2)
def sample_dpmpp_2s_ancestral(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0,
                              s_noise=1.0):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1 with r = 1/2, as k-diffusion's
    ``sample_dpmpp_2s_ancestral``): a single-step 2nd-order exponential-integrator step from sigma
    to sigma_down through ``sigma_mid = sqrt(sigma * sigma_down)``::

        u = (sigma_mid / sigma) x - expm1(-h/2) D(x; sigma),   h = log(sigma / sigma_down)
        x = (sigma_down / sigma) x - expm1(-h) D(u; sigma_mid)

    then noise ``s_noise * sigma_up``. eta <= 1 keeps sigma_down > 0 before the last step. Last
    step: returns D (the 2S step would target sigma_down = 0). NFE = 2N - 1."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma)
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        if sigma_next == 0.0:
            x = denoised
            continue
        sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, eta)
        h = math.log(sigma / sigma_down)
        sigma_mid = math.sqrt(sigma * sigma_down)
        u = (sigma_mid / sigma) * x - math.expm1(-0.5 * h) * denoised
        x = (sigma_down / sigma) * x - math.expm1(-h) * _denoise(denoiser, u, sigma_mid)
        if sigma_up > 0.0:
            x = x + _randn_like(x, generator) * (s_noise * sigma_up)
    return x


# ---------------------------------------------------------------------------------------------
# Lesson modes: the fast.ai course22p2 notebooks' samplers, step for step
# ---------------------------------------------------------------------------------------------


def _lesson_sig(abar_t: float, abar_t1: float, eta: float, noise_floor: float) -> float:
    """The notebooks' ``ddim_step`` noise std (VP): ``sig = eta sqrt(bbar_t1 / bbar_t) sqrt(1 -
    abar_t / abar_t1)``, set to 0 when ``bbar_t1 <= sig^2 + noise_floor`` (their 0.01)."""
    bbar_t, bbar_t1 = 1.0 - abar_t, 1.0 - abar_t1
    sig = eta * math.sqrt(bbar_t1 / bbar_t) * math.sqrt(1.0 - abar_t / abar_t1)
    return 0.0 if bbar_t1 <= sig * sig + noise_floor else sig


@_register("ddim_lesson")
def sample_ddim_lesson(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0,
                       clip_x0=1.5, noise_floor=0.01):
    """The lesson's DDIM (course22p2 ``22_cosine.ipynb``, ``ddim_step`` and ``sample``), in its own
    VP variables; the grid is any sigma grid, the lesson's being ``grid=lesson``. Per step, with
    ``abar_t = 1 / (1 + sigma^2)``, ``abar_t1`` the next one (1 at sigma_next = 0) and ``bbar =
    1 - abar``::

        eps    = the model's noise estimate, (x - D(x; sigma)) / sigma in sigma space
        x0_hat = clamp((x_t - sqrt(bbar_t) eps) / sqrt(abar_t), -clip_x0, clip_x0)   (= clamp(D))
        sig    = eta sqrt(bbar_t1 / bbar_t) sqrt(1 - abar_t / abar_t1), 0 if bbar_t1 <= sig^2 + 0.01
        x_t1   = sqrt(abar_t1) x0_hat + sqrt(bbar_t1 - sig^2) eps + sig z

    The direction keeps the model's eps (not one re-derived from the clamped x0_hat; that variant
    is ``ddim(use_clipped_eps=true)``), and ``eta = 1`` is the notebook's. Start: the notebook
    starts from ``x_t = z``, unit noise as the VP state; the given start ``x = sigma_0 z`` is read
    as that z. Result: the last x0_hat (at sigma_next = 0, ``x_t1 = x0_hat``). On the lesson grid
    the notebook makes one more call, at t = 0, whose x0_hat is x_t itself (abar = 1); it is not
    made here, so NFE = N = steps - 1. ``clip_x0=null`` does not clamp."""
    n = len(sigmas) - 1
    x_t = x / sigmas[0]
    x0_hat = x_t
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        abar_t, abar_t1 = 1.0 / (1.0 + sigma**2), 1.0 / (1.0 + sigma_next**2)
        x_sig = x_t / math.sqrt(abar_t)  # the sigma-space state the denoiser reads
        raw = _denoise(denoiser, x_sig, sigma)
        eps = (x_sig - raw) / sigma
        x0_hat = _clip((x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t), clip_x0)
        _report(callback, i, sigma, sigma, sigma_next, x_sig, x0_hat)
        sig = _lesson_sig(abar_t, abar_t1, eta, noise_floor)
        x_t = math.sqrt(abar_t1) * x0_hat + math.sqrt(max(1.0 - abar_t1 - sig**2, 0.0)) * eps
        if sigma_next > 0.0 and eta > 0.0:  # the notebook draws z at every step
            x_t = x_t + sig * _randn_like(x_t, generator)
    return x0_hat


def _no_t_parts(denoiser):
    fn = getattr(denoiser, "eps_and_alpha_bar", None)
    if fn is None:
        raise ValueError("sampler ddim_no_t_lesson needs a no_t model's denoiser (objective=no_t, "
                         "without sampler.clip_denoised: its own clip_x0 clamps); this one has "
                         "no eps_and_alpha_bar")
    return fn


@_register("ddim_no_t_lesson", extra_evals=1, no_t=True)
def sample_ddim_no_t_lesson(denoiser, x, sigmas, *, generator=None, callback=None, eta=1.0,
                            clip_x0=2.0, noise_floor=0.01):
    """The lesson's no-t DDIM (course22p2 ``22_noise-pred.ipynb``, the ``ddim_step`` that asks
    ``tmodel``). The denoiser must be a no_t model's (:class:`diffexp.no_t.NoTDenoiser`):
    ``eps_and_alpha_bar(x, sigma)`` gives the model's eps and each image's alpha_bar ``a`` (the
    predictor's, kept within ``[median / 2, 2 median]`` of the batch in the lesson's
    ``objective.noise_level_clamp=median``). Per grid point, 0 included (the notebook's t = 0)::

        x0_hat = clamp((x_t - sqrt(1 - a) eps) / sqrt(a), -clip_x0, clip_x0)
        sig    = eta sqrt(bbar_t1 / bbar_t) sqrt(1 - abar_t / abar_t1), 0 if bbar_t1 <= sig^2 + 0.01
        x_t1   = sqrt(abar_t1) x0_hat + sqrt(bbar_t1 - sig^2) eps + sig z

    with the *schedule's* abar_t, abar_t1 (abar_t1 = 1 after the last point): the prediction acts
    on x0_hat only. Start as :func:`sample_ddim_lesson`. Result: the x0_hat of the call at
    sigma = 0. NFE = N + 1 (on the lesson grid: ``steps``, as the notebook)."""
    parts = _no_t_parts(denoiser)
    x_t = x / sigmas[0]
    x0_hat = x_t
    for i in range(len(sigmas)):
        sigma = sigmas[i]
        sigma_next = sigmas[i + 1] if i + 1 < len(sigmas) else 0.0
        abar_t, abar_t1 = 1.0 / (1.0 + sigma**2), 1.0 / (1.0 + sigma_next**2)
        x_sig = x_t / math.sqrt(abar_t)
        eps, a = parts(x_sig, x_sig.new_full((x_sig.shape[0],), sigma))
        a = a.to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        x0_hat = _clip((x_t - (1.0 - a).sqrt() * eps) / a.sqrt(), clip_x0)
        _report(callback, i, sigma, sigma, sigma_next, x_sig, x0_hat)
        if sigma == 0.0:
            break
        sig = _lesson_sig(abar_t, abar_t1, eta, noise_floor)
        x_t = math.sqrt(abar_t1) * x0_hat + math.sqrt(max(1.0 - abar_t1 - sig**2, 0.0)) * eps
        if eta > 0.0:
            x_t = x_t + sig * _randn_like(x_t, generator)
    return x0_hat


@_register("heun_lesson", evals_per_step=2)
def sample_heun_lesson(denoiser, x, sigmas, *, generator=None, callback=None, s_churn=0.0,
                       s_tmin=0.0, s_tmax=math.inf, s_noise=1.0):
    """The lesson's Heun step (course22p2 ``23_karras.ipynb``, ``sample_heun``): as
    :func:`sample_heun` (Karras Algorithm 2) except that after the churn the first denoiser call
    and its slope use sigma, not sigma_hat::

        denoised = D(x_hat; sigma),  d = (x_hat - denoised) / sigma,  dt = sigma_next - sigma_hat
        x_2 = x_hat + d dt;  at sigma_next = 0 return x_2,
        else x = x_hat + (d + (x_2 - D(x_2; sigma_next)) / sigma_next) / 2 * dt

    Without churn (gamma = 0) it is :func:`sample_heun`. NFE = 2N - 1."""
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        denoised = _denoise(denoiser, x, sigma)  # the notebook: D at sig, not sigma_hat
        _report(callback, i, sigma, sigma, sigma_next, x, denoised)
        d = _to_d(x, sigma, denoised)
        dt = sigma_next - sigma_hat
        x_2 = x + d * dt
        if sigma_next == 0.0:
            x = x_2
            continue
        d_2 = _to_d(x_2, sigma_next, _denoise(denoiser, x_2, sigma_next))
        x = x + 0.5 * (d + d_2) * dt
    return x


# =============================================================================================
# High level
# =============================================================================================


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (the measured NFE)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.calls = 0
        if hasattr(denoiser, "eps_and_alpha_bar"):  # a no_t denoiser: count that call too
            self.eps_and_alpha_bar = self._eps_and_alpha_bar

    def _eps_and_alpha_bar(self, x: Tensor, sigma: Tensor):
        self.calls += 1
        return self.denoiser.eps_and_alpha_bar(x, sigma)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        return self.denoiser(x, sigma)


@dataclass
class SampleResult:
    """``x0``: samples ``[n, *shape]``; ``nfe``: measured denoiser calls per image; ``sigmas``:
    the float64 grid used."""

    x0: Tensor
    nfe: int
    sigmas: Tensor


def sample(denoiser: Denoiser, schedule, *, n: int, shape: Sequence[int], seed: int,
           sampler: str = "euler", steps: int = 20, grid: str = "schedule", rho: float = 7.0,
           sigma_min: float | None = None, sigma_max: float | None = None,
           batch_size: int | None = None, first_index: int = 0, device="cpu", callback=None,
           dtype: torch.dtype = torch.float32, noise_device="cpu", on_batch=None,
           **options) -> SampleResult:
    """Draw images ``first_index .. first_index + n - 1`` of the run with base ``seed``.

    Image k's start noise (times sigmas[0]) and all its later noise come from its own stream
    (:class:`PerSampleNoise`), so results do not depend on ``batch_size`` or on how the index range
    is split between calls / processes. Returns a :class:`SampleResult` with the measured NFE.
    ``on_batch(k)``, when given, is called after each batch with its number of images (progress
    reporting)."""
    fn = get_sampler(sampler)
    _check_options(sampler, options, prefix="")
    _check_steps(n, "n")
    if batch_size is None:
        batch_size = n
    _check_steps(batch_size, "batch_size")
    if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
        raise ValueError(f"first_index must be an integer >= 0 (got {first_index!r})")
    sigmas = build_sigmas(schedule, steps, grid, rho, sigma_min, sigma_max)
    shape = tuple(int(s) for s in shape)
    outs, measured = [], None
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        noise = PerSampleNoise(seed, range(first_index + start, first_index + stop), noise_device)
        x = noise.randn(shape, dtype=dtype, device=device) * float(sigmas[0])
        counter = CountingDenoiser(denoiser)
        cb = None
        if callback is not None:
            def cb(info, _b=first_index + start):
                callback({**info, "batch_start": _b})
        outs.append(fn(counter, x, sigmas, generator=noise, callback=cb, **options))
        if on_batch is not None:
            on_batch(stop - start)
        if measured is None:
            measured = counter.calls
        elif counter.calls != measured:  # pragma: no cover - samplers are not data dependent
            raise RuntimeError(f"NFE differs between batches ({measured} vs {counter.calls})")
    return SampleResult(x0=torch.cat(outs), nfe=int(measured), sigmas=sigmas)


# =============================================================================================
# Config
# =============================================================================================


def validate_grid_config(grid) -> dict:
    """Check a grid config (``conf/grid/<name>.yaml``: ``name``, ``rho``, ``sigma_min``,
    ``sigma_max``) and return it complete. ``None`` is the schedule's own grid. ``rho`` belongs to
    the karras grid only (default 7): a rho given with another grid would be silently unused, so it
    is an error naming the fix."""
    g = {"name": "schedule"} if grid is None else dict(grid)
    unknown = sorted(set(g) - set(GRID_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"grid.{unknown[0]} is not a grid setting (valid: "
                         f"{', '.join(GRID_CONFIG_KEYS)})")
    name = g.get("name", "schedule")
    if name not in GRIDS:
        raise ValueError(f"grid.name={name!r} is not one of {list(GRIDS)}")
    rho = g.get("rho")
    if name == "karras":
        rho = 7.0 if rho is None else rho
        _check_positive_number(rho, "grid.rho")
        rho = float(rho)
    elif rho is not None:
        raise ValueError(f"grid.rho acts only on the karras grid (this is grid={name}); "
                         f"write grid=karras grid.rho={rho}")
    _check_sigma_range(g.get("sigma_min"), g.get("sigma_max"), prefix="grid.")
    if name == "lesson":
        for key in ("sigma_min", "sigma_max"):
            if g.get(key) is not None:
                raise ValueError(f"grid.{key} does not act on grid=lesson (t = linspace(1 - "
                                 f"1/steps, 0, steps)); drop it or use grid=schedule")
    return {"name": name, "rho": rho, "sigma_min": g.get("sigma_min"),
            "sigma_max": g.get("sigma_max")}


#: sampler config keys that are not the sampler function's options
SAMPLER_OWN_KEYS = ("name", "steps", "_target_")


def register_sampler(name: str, evals_per_step: int = 1):
    """Register a user's sampler function as ``name`` (a decorator): ``fn(denoiser, x, sigmas,
    *, generator=None, callback=None, **options) -> x`` over Python-float ``sigmas`` ending in
    0, its options keyword-only with defaults (they are what ``sampler.<key>`` may set), and
    ``evals_per_step`` denoiser calls per step (NFE). A sampler yaml with ``_target_`` naming
    the function registers it when the config is checked (docs/EXTENDING.md)."""
    if name in SAMPLERS or name in NO_T_SAMPLERS:
        raise ValueError(f"sampler.name={name!r} is a built-in sampler; give yours another name")
    return _register(name, evals_per_step=evals_per_step)


def _register_target(name, target) -> None:
    """``sampler._target_``: import the function and register it as ``name`` (once per process;
    the same name for another function is refused)."""
    from .components import import_target

    fn = import_target(target, "sampler._target_")
    if not callable(fn):
        raise ValueError(f"sampler._target_={target} is not a function")
    if _RAW.get(name) is fn:
        return
    if name in _RAW:
        what = "a built-in sampler" if name not in _USER else f"registered by {_USER[name]}"
        raise ValueError(f"sampler.name={name!r} is {what}; name sampler._target_={target} "
                         f"otherwise")
    register_sampler(name, evals_per_step=int(getattr(fn, "evals_per_step", 1)))(fn)
    _USER[name] = target


def validate_sampler_config(cfg) -> None:
    """Check a sampler config (``conf/sampler/<name>.yaml``: ``name``, ``steps`` and the sampler's
    options); raise a one-line ValueError naming the setting (``sampler.<key>``). The grid is not
    part of it (see :func:`validate_grid_config`). A ``_target_`` registers a user's sampler
    function under ``name`` first (:func:`register_sampler`)."""
    cfg = dict(cfg)
    name = cfg.get("name")
    if cfg.get("_target_") is not None:
        _register_target(name, cfg["_target_"])
    if name not in SAMPLERS and name not in NO_T_SAMPLERS:
        raise ValueError(f"sampler.name={name!r} is not one of "
                         f"{sorted([*SAMPLERS, *NO_T_SAMPLERS])}")
    _check_steps(cfg.get("steps", 20), "sampler.steps")
    _check_options(name, {k: v for k, v in cfg.items() if k not in SAMPLER_OWN_KEYS},
                   prefix="sampler.")


def split_sampler_config(cfg, grid=None) -> tuple[dict, dict]:
    """Validate a sampler config and a grid config and turn them into ``(kwargs, options)``:
    ``kwargs`` has ``sampler`` (from ``name``), ``steps``, ``grid``, ``rho``, ``sigma_min``,
    ``sigma_max``, so ``sample(den, sched, n=..., shape=..., seed=..., **kwargs, **options)``
    works; ``options`` is everything else in the sampler config, for the sampler function."""
    cfg = dict(cfg)
    validate_sampler_config(cfg)
    g = validate_grid_config(grid)
    kwargs = {
        "sampler": cfg["name"],
        "steps": cfg.get("steps", 20),
        "grid": g["name"],
        "rho": 7.0 if g["rho"] is None else g["rho"],
        "sigma_min": g["sigma_min"],
        "sigma_max": g["sigma_max"],
    }
    options = {k: v for k, v in cfg.items() if k not in SAMPLER_OWN_KEYS}
    clip = options.get("clip_x0")
    if clip is not None and not _is_number(clip):  # a list / ListConfig pair -> plain tuple
        options["clip_x0"] = tuple(float(v) for v in clip)
    return kwargs, options
