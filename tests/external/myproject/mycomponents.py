"""A user's own components, kept outside diffexp: named from config by ``_target_``."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from diffexp.schedules import Schedule


class StepCounter(pl.Callback):
    """Writes the number of optimizer steps the run trained into ``filename`` in its run folder."""

    def __init__(self, filename: str = "steps.txt"):
        self.filename = filename

    def on_train_end(self, trainer, module):
        Path(trainer.default_root_dir, self.filename).write_text(f"{trainer.global_step}\n")


class TinyNet(torch.nn.Module):
    """A user's network under diffexp's network contract: ``forward(x, cond)`` with x the
    objective's input ``(B, 1, H, W)`` and cond its noise level ``(B,)`` (None for a model never
    told its noise level), returning a tensor of x's shape. ``conditioned`` is passed by diffexp
    because the constructor names it."""

    def __init__(self, channels: int = 16, conditioned: bool = True):
        super().__init__()
        self.conditioned = conditioned
        self.inp = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.emb = torch.nn.Linear(1, channels) if conditioned else None
        self.mid = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.out = torch.nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inp(x))
        if self.emb is not None and cond is not None:
            h = h + self.emb(cond.float().reshape(-1, 1))[:, :, None, None]
        return self.out(torch.nn.functional.silu(self.mid(h)))


def sample_plain_euler(denoiser, x, sigmas, *, generator=None, callback=None, scale=1.0):
    """A user's sampler: Euler steps on the probability-flow ODE, dx/dsigma = (x - D(x)) / sigma,
    with the step multiplied by ``scale`` (1: plain Euler). One denoiser call per step."""
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, sigma)) / sigma
        x = x + scale * d * (sigma_next - sigma)
    return x


sample_plain_euler.evals_per_step = 1


class LogSNRLinear(Schedule):
    """A user's noise schedule: log SNR falls linearly in t from ``logsnr_max`` to ``logsnr_min``,
    so alpha_bar(t) = sigmoid(logsnr(t)) and sigma(t) = exp(-logsnr(t) / 2)."""

    def __init__(self, logsnr_max: float = 10.0, logsnr_min: float = -10.0,
                 t_min: float = 0.0, t_max: float = 1.0):
        super().__init__(t_min, t_max)
        self.logsnr_max, self.logsnr_min = float(logsnr_max), float(logsnr_min)

    def alpha_bar(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.sigmoid(self.logsnr_max + t * (self.logsnr_min - self.logsnr_max))

    def t_from_alpha_bar(self, abar):
        abar = torch.as_tensor(abar, dtype=torch.float64)
        return (torch.logit(abar) - self.logsnr_max) / (self.logsnr_min - self.logsnr_max)


class Backwards(LogSNRLinear):
    """A schedule whose noise falls with t: the checks refuse it."""

    def alpha_bar(self, t):
        return super().alpha_bar(1 - torch.as_tensor(t, dtype=torch.float64))
