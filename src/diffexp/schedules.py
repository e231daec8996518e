"""Noise schedules as continuous maps between time, alpha_bar and sigma.

Conventions (shared by the whole package, see docs/DESIGN.md):

* sigma space: a noised image is ``x = x0 + sigma * n`` with ``n ~ N(0, I)``.
* variance-preserving (VP) form: ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) n``; the two are related by
  ``sigma = sqrt((1 - abar) / abar)`` and ``x_vp = x / sqrt(1 + sigma^2)``.
* time ``t`` is a float in [0, 1]; noise grows with t.

Every schedule supplies

* ``alpha_bar(t)``, ``t_from_alpha_bar(abar)`` (closed form), ``sigma(t)``, ``t_from_sigma(sigma)``;
* ``sample_training_sigma(n, generator, stratified=False)``: the noise level training draws for
  each image (``stratified``: one draw per n-th of its distribution);
* ``sigma_min`` / ``sigma_max``: the range it trains on and samples from by default;
* ``sampling_sigmas(n)``: the default sampling grid, ``n`` descending sigmas from ``sigma_max`` to
  ``sigma_min`` equally spaced in ``t``, then a final 0 (``n + 1`` values, float64).

Pure torch; no Lightning, no Hydra.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "stratified_uniform",
    "Schedule",
    "LinearSchedule",
    "CosineSchedule",
    "SigmoidSchedule",
    "KarrasSchedule",
    "SCHEDULES",
    "build_schedule",
    "sigma_to_alpha_bar",
    "alpha_bar_to_sigma",
    "to_vp",
]


def _as_tensor(v, dtype=torch.float64) -> Tensor:
    if isinstance(v, Tensor):
        return v
    return torch.as_tensor(v, dtype=dtype)


def sigma_to_alpha_bar(sigma: Tensor) -> Tensor:
    """abar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma * sigma)


def alpha_bar_to_sigma(abar: Tensor) -> Tensor:
    """sigma = sqrt((1 - abar) / abar)."""
    return ((1.0 - abar) / abar).sqrt()


def to_vp(x: Tensor, sigma: Tensor) -> Tensor:
    """Sigma-space image -> VP image: ``x / sqrt(1 + sigma^2)`` (sigma broadcast per image).

    The single place where the two parameterisations meet."""
    return x / (1.0 + sigma * sigma).sqrt().view(-1, *([1] * (x.dim() - 1)))


def stratified_uniform(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """``n`` draws in [0, 1), exactly one in each stratum ``[i/n, (i+1)/n)``, uniform within it,
    in random order. Each draw is marginally U(0, 1), so a schedule's training noise levels keep
    their distribution, while every batch covers all of it: the batch's mean loss varies less
    than with independent draws (stratified sampling; VDM's low-discrepancy sampler, Kingma et
    al. 2021, shares one offset between the strata instead)."""
    offset = torch.rand(n, generator=generator, device=device)
    stratum = torch.randperm(n, generator=generator, device=device)
    return (stratum + offset) / n


class Schedule:
    """Base class. Subclasses define ``alpha_bar`` and ``t_from_alpha_bar`` (or override the sigma
    maps directly, as the Karras schedule does)."""

    name: str = "base"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    # --- the maps -------------------------------------------------------------------------
    def alpha_bar(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_alpha_bar(self, abar: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        return alpha_bar_to_sigma(self.alpha_bar(_as_tensor(t)))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        return self.t_from_alpha_bar(sigma_to_alpha_bar(_as_tensor(sigma)))

    # --- range and grids ------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.t_min, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(self.t_max, dtype=torch.float64)))

    def sampling_sigmas(self, n: int) -> Tensor:
        """``n`` sigmas uniform in t from ``t_max`` down to ``t_min``, then 0 (float64)."""
        if n < 1:
            raise ValueError(f"number of sampling steps must be >= 1 (got {n})")
        if n == 1:
            t = torch.tensor([self.t_max], dtype=torch.float64)
        else:
            t = torch.linspace(self.t_max, self.t_min, n, dtype=torch.float64)
        return torch.cat([self.sigma(t), t.new_zeros(1)])

    def sample_training_sigma(
        self, n: int, generator: torch.Generator | None = None, device=None,
        stratified: bool = False,
    ) -> Tensor:
        """Default for VP schedules: t ~ U(t_min, t_max), returned as sigma (float32).
        ``stratified``: the n uniforms come from :func:`stratified_uniform` (one per n-th of the
        range) instead of independent draws; each sigma keeps the same distribution."""
        u = stratified_uniform(n, generator, device) if stratified else torch.rand(
            n, generator=generator, device=device)
        t = self.t_min + (self.t_max - self.t_min) * u
        return self.sigma(t.double()).float()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        keys = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({keys})"


class LinearSchedule(Schedule):
    """Continuous-time DDPM: beta(t) = beta_min + t (beta_max - beta_min), so
    ``abar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))``.

    beta_min = 0.1, beta_max = 20 is DDPM's 1e-4 .. 0.02 over 1000 steps (Song et al. 2021, the
    VP SDE). The inverse is the positive root of the quadratic in t."""

    name = "linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0):
        super().__init__(t_min, t_max)
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def alpha_bar(self, t):
        t = _as_tensor(t)
        d = self.beta_max - self.beta_min
        return torch.exp(-(self.beta_min * t + 0.5 * d * t * t))

    def t_from_alpha_bar(self, abar):
        # 0.5 d t^2 + b0 t + log(abar) = 0  ->  t = (-b0 + sqrt(b0^2 - 2 d log abar)) / d
        abar = _as_tensor(abar)
        b0, d = self.beta_min, self.beta_max - self.beta_min
        log_abar = torch.log(abar)
        if d == 0:
            return -log_abar / b0
        return (-b0 + torch.sqrt(b0 * b0 - 2.0 * d * log_abar)) / d


class CosineSchedule(Schedule):
    """Chen (2023) cosine schedule with start / end / tau:
    ``abar(t) = (v_end - cos((start + t (end - start)) pi/2)^(2 tau)) / (v_end - v_start)``
    with ``v = cos(. pi/2)^(2 tau)`` at the ends. start=0, end=1, tau=1 is the lesson's
    ``cos(t pi/2)^2``; since abar(1) = 0 there, t_max defaults to 0.999 (sigma ~ 636)."""

    name = "cosine"

    def __init__(self, start: float = 0.0, end: float = 1.0, tau: float = 1.0,
                 t_min: float = 1e-3, t_max: float = 0.999):
        super().__init__(t_min, t_max)
        self.start, self.end, self.tau = float(start), float(end), float(tau)
        self._v_start = math.cos(self.start * math.pi / 2) ** (2 * self.tau)
        self._v_end = math.cos(self.end * math.pi / 2) ** (2 * self.tau)

    def alpha_bar(self, t):
        t = _as_tensor(t)
        u = self.start + t * (self.end - self.start)
        c = torch.cos(u * math.pi / 2).clamp_min(0) ** (2 * self.tau)
        return (self._v_end - c) / (self._v_end - self._v_start)

    def t_from_alpha_bar(self, abar):
        abar = _as_tensor(abar)
        c = self._v_end - abar * (self._v_end - self._v_start)
        u = torch.acos(c.clamp(0, 1) ** (1.0 / (2 * self.tau))) * 2 / math.pi
        return (u - self.start) / (self.end - self.start)


class SigmoidSchedule(Schedule):
    """Chen (2023) sigmoid schedule:
    ``abar(t) = (v_end - s((start + t (end - start)) / tau)) / (v_end - v_start)``, s the logistic
    function, ``v = s(. / tau)`` at the ends. Inverse through the logit."""

    name = "sigmoid"

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                 t_min: float = 1e-3, t_max: float = 0.999):
        super().__init__(t_min, t_max)
        self.start, self.end, self.tau = float(start), float(end), float(tau)
        self._v_start = 1 / (1 + math.exp(-self.start / self.tau))
        self._v_end = 1 / (1 + math.exp(-self.end / self.tau))

    def alpha_bar(self, t):
        t = _as_tensor(t)
        s = torch.sigmoid((self.start + t * (self.end - self.start)) / self.tau)
        return (self._v_end - s) / (self._v_end - self._v_start)

    def t_from_alpha_bar(self, abar):
        abar = _as_tensor(abar)
        s = self._v_end - abar * (self._v_end - self._v_start)
        x = torch.logit(s) * self.tau
        return (x - self.start) / (self.end - self.start)


class KarrasSchedule(Schedule):
    """Karras et al. (2022): training sigmas log-normal, ``ln sigma ~ N(P_mean, P_std^2)``;
    sampling on the rho grid. Its time is the rho ramp,
    ``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``,
    so t = 0 is sigma_min, t = 1 is sigma_max, and ``sampling_sigmas`` (uniform in t) is exactly
    the EDM grid. abar follows from sigma as everywhere: 1 / (1 + sigma^2).

    ``rho`` fixes this time map (and with it the t an eps/x0/v model on this schedule is
    conditioned on); configs leave it at 7, and a sampling grid with another rho is the grid
    group's business (``grid=karras grid.rho=...``), so there is one sampling rho, not two."""

    name = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__(0.0, 1.0)
        self._sigma_min, self._sigma_max = float(sigma_min), float(sigma_max)
        self.rho, self.p_mean, self.p_std = float(rho), float(p_mean), float(p_std)

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    def sigma(self, t):
        t = _as_tensor(t)
        lo = self._sigma_min ** (1 / self.rho)
        hi = self._sigma_max ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def t_from_sigma(self, sigma):
        sigma = _as_tensor(sigma)
        lo = self._sigma_min ** (1 / self.rho)
        hi = self._sigma_max ** (1 / self.rho)
        return (sigma ** (1 / self.rho) - lo) / (hi - lo)

    def alpha_bar(self, t):
        return sigma_to_alpha_bar(self.sigma(t))

    def t_from_alpha_bar(self, abar):
        return self.t_from_sigma(alpha_bar_to_sigma(_as_tensor(abar)))

    def sample_training_sigma(self, n, generator=None, device=None, stratified=False):
        """ln(sigma) ~ N(p_mean, p_std^2) (EDM's training distribution). ``stratified``: z is the
        normal quantile of :func:`stratified_uniform`'s draws, one in each n-th of the
        probability mass."""
        if stratified:
            u = stratified_uniform(n, generator, device).double().clamp(1e-12, 1 - 1e-12)
            z = torch.special.ndtri(u).float()
        else:
            z = torch.randn(n, generator=generator, device=device)
        return torch.exp(self.p_mean + self.p_std * z)


SCHEDULES: dict[str, type[Schedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
    "karras": KarrasSchedule,
}


def build_schedule(name: str, **params) -> Schedule:
    """Construct a schedule by name; ``params`` are its constructor arguments. With a
    ``_target_`` among them, a user's :class:`Schedule` subclass (the dotted path) is built with
    the others (docs/EXTENDING.md)."""
    if "_target_" in params:
        from .components import import_target

        target = params.pop("_target_")
        cls = import_target(target, "schedule._target_")
        if not (isinstance(cls, type) and issubclass(cls, Schedule)):
            raise ValueError(f"schedule._target_={target} is not a subclass of "
                             f"diffexp.schedules.Schedule")
        return cls(**params)
    if name not in SCHEDULES:
        raise ValueError(f"schedule.name={name!r} is not one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**params)
