"""Accuracy of every sampler on the analytic Gaussian case, at about 10, 20 and 50 NFE.

Data x0 ~ N(MU, S^2) per pixel has the exact denoiser D(x; sigma) = (S^2 x + sigma^2 MU) /
(S^2 + sigma^2), and the probability-flow ODE maps the start x_T at sigma_max to
MU + (x_T - MU) S / sqrt(S^2 + sigma_max^2) exactly. Deterministic samplers are scored by the RMS
distance of their output to that exact map (same start noise); every sampler is also scored by the
error of the sample mean and std against (MU, S). Steps per sampler: the largest count whose NFE
does not exceed the target (N for one-evaluation samplers, (target + 1) // 2 for heun, dpm_2 and
dpmpp_2s_ancestral, whose NFE is 2N - 1); the measured NFE is shown.

    python scripts/sampler_accuracy.py [--schedule karras] [--grid karras] [--rho 7]
                                       [--n 100000] [--nfe 10 20 50]

Prints a markdown table. float64 throughout, CPU.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from diffexp import sampling
from diffexp.schedules import build_schedule

MU, S = 0.3, 0.5

# (sampler, options, deterministic?)
CASES = [
    ("euler", {}, True),
    ("ddim", {"eta": 0.0}, True),
    ("heun", {}, True),
    ("dpm_2", {}, True),
    ("lms", {"order": 4}, True),
    ("dpmpp_2m", {}, True),
    ("ddpm", {}, False),
    ("ddpm", {"variance": "beta"}, False),
    ("ddim", {"eta": 0.5}, False),
    ("euler_ancestral", {"eta": 1.0}, False),
    ("euler", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, False),
    ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, False),
    ("dpmpp_2m_sde", {"eta": 1.0}, False),
    ("dpmpp_2s_ancestral", {"eta": 1.0}, False),
]


def denoiser(x, sigma):
    sig2 = sigma.view(-1, *([1] * (x.dim() - 1))) ** 2
    return (S * S * x + sig2 * MU) / (S * S + sig2)


def steps_for(name: str, target: int) -> int:
    steps = 1
    while sampling.nfe(name, steps + 1) <= target:
        steps += 1
    return steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedule", default="karras")
    p.add_argument("--grid", default="karras", choices=sampling.GRIDS)
    p.add_argument("--rho", type=float, default=7.0)
    p.add_argument("--n", type=int, default=100_000, help="samples per run")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sched = build_schedule(a.schedule)
    se_mean, se_std = S / math.sqrt(a.n), S / math.sqrt(2 * a.n)
    t0 = time.perf_counter()
    print(f"Analytic Gaussian x0 ~ N({MU}, {S}^2); schedule={a.schedule}, grid={a.grid}"
          + (f" (rho={a.rho})" if a.grid == "karras" else "")
          + f", sigma in [{sched.sigma_min:.3g}, {sched.sigma_max:.3g}], n={a.n}, float64.\n")
    print("| sampler | options | target NFE | steps | NFE | ODE RMS error | mean error "
          "| std error |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, opts, deterministic in CASES:
        for target in a.nfe:
            g = torch.Generator().manual_seed(a.seed * 1000 + target)  # same start noise per NFE
            steps = steps_for(name, target)
            sigmas = sampling.build_sigmas(sched, steps, a.grid, a.rho)
            smax = float(sigmas[0])
            x_t = torch.randn(a.n, 1, generator=g, dtype=torch.float64) * smax
            counter = sampling.CountingDenoiser(denoiser)
            out = sampling.SAMPLERS[name](counter, x_t.clone(), sigmas, generator=g, **opts)
            assert counter.calls == sampling.nfe(name, steps, **opts)
            if deterministic:
                exact = MU + (x_t - MU) * S / math.sqrt(S * S + smax * smax)
                ode = f"{(out - exact).pow(2).mean().sqrt().item():.2e}"
            else:
                ode = "(stochastic)"
            opt_s = ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"
            print(f"| {name} | {opt_s} | {target} | {steps} | {counter.calls} | {ode} "
                  f"| {out.mean().item() - MU:+.4f} | {out.std().item() - S:+.4f} |")
    print(f"\nStatistical noise of the mean / std errors: one standard error is {se_mean:.4f} / "
          f"{se_std:.4f}. ODE RMS error: distance to the exact probability-flow map of the same "
          f"start noise (deterministic samplers only). ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
