"""No-t sampling: an eps model never told its noise level, guided by a noise-level predictor.

The denoiser of a no_t model, in sigma space like every other (``denoiser(x, sigma) -> x0_hat``):

1. the sampler's state as a VP image, ``x_vp = x / sqrt(1 + sigma^2)`` (what the lesson's sampler
   carries);
2. ``eps_hat = net(x_vp)``, no conditioning input (``x_vp`` divided by its per-image std first
   when the model was trained with ``objective.normalize_input``);
3. ``abar``: the predictor's estimate for each image, kept in a window
   (``objective.noise_level_clamp``), or the schedule's ``1 / (1 + sigma^2)`` when
   ``use_predicted_noise_level`` is false. The windows:

   * ``median`` (the lesson's, 22_noise-pred ``ddim_step``): within ``[median / f, median * f]``
     of the batch (:func:`clamp_to_median`). Image k then depends on the other images of its
     batch, so it changes with the batch size.
   * ``grid`` (the project's): within ``[abar_grid / f, abar_grid * f]`` of the sampler's own
     noise level ``abar_grid = 1 / (1 + sigma^2)`` *and* within the alpha_bar range the predictor
     was trained on, ``[ABAR_EPS, 1 - ABAR_EPS]``; where the two do not overlap (the grid's
     alpha_bar lies outside what the predictor saw: the first steps of the cosine grid reach
     alpha_bar 2.5e-6, logit -12.9, the predictor trained on logit +-9.2) the grid's alpha_bar is
     used (:func:`clamp_to_grid`). Per image, so image k is the same at any batch size.

4. ``x0_hat = (x_vp - sqrt(1 - abar) eps_hat) / sqrt(abar)``.

With the schedule's abar, step 4 is exactly the eps objective's ``x - sigma eps_hat``. The
denoiser also exposes ``eps_and_alpha_bar(x, sigma)`` (steps 1-3), which the lesson's no-t
sampler (``sampling.sample_ddim_no_t_lesson``) needs: its step uses the model's eps and the
schedule's alpha_bar, the prediction acting on x0_hat only.
Pure torch; no Lightning, no Hydra.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .objectives import normalize_per_image
from .schedules import sigma_to_alpha_bar, to_vp

__all__ = ["clamp_to_median", "clamp_to_grid", "no_t_denoiser", "NoTDenoiser", "ABAR_EPS",
           "NOISE_LEVEL_CLAMPS"]

#: training draws of alpha_bar are kept in [ABAR_EPS, 1 - ABAR_EPS] so logit targets stay finite;
#: it is also the range the ``grid`` clamp trusts the predictor in
ABAR_EPS = 1e-4

#: values of ``objective.noise_level_clamp``
NOISE_LEVEL_CLAMPS = ("median", "grid")


def _check_factor(factor: float) -> None:
    if not factor >= 1:
        raise ValueError(f"objective.clamp_factor must be >= 1 (got {factor})")


def clamp_to_median(abar: Tensor, factor: float = 2.0) -> Tensor:
    """Keep every estimate within ``[median / factor, median * factor]`` of the batch (and below 1).

    Estimates already in that range are returned unchanged."""
    _check_factor(factor)
    med = abar.median()
    lo, hi = med / factor, torch.clamp(med * factor, max=1 - 1e-6)
    return torch.minimum(torch.maximum(abar, lo), hi)


def clamp_to_grid(abar: Tensor, abar_grid: Tensor, factor: float = 2.0,
                  trained: tuple[float, float] = (ABAR_EPS, 1 - ABAR_EPS)) -> Tensor:
    """Per image: keep the estimate within ``[abar_grid / factor, abar_grid * factor]`` and within
    the predictor's training range ``trained``; where those do not overlap, ``abar_grid`` itself.
    No image depends on another."""
    _check_factor(factor)
    abar_grid = abar_grid.to(abar.dtype)
    lo = torch.clamp(abar_grid / factor, min=trained[0])
    hi = torch.clamp(abar_grid * factor, max=trained[1])
    inside = torch.minimum(torch.maximum(abar, lo), hi)
    return torch.where(lo <= hi, inside, abar_grid)


class NoTDenoiser:
    """``denoiser(x, sigma) -> x0_hat`` of a no_t model (see the module docstring), with
    ``eps_and_alpha_bar(x, sigma) -> (eps_hat, abar)`` for the lesson's no-t sampler. ``record``
    (a list) receives ``(sigma, abar_used)`` per call."""

    def __init__(self, net, noise_level_net=None, *, use_predicted: bool = True,
                 clamp_factor: float = 2.0, clamp: str = "median", record: list | None = None,
                 normalize_input: bool = False):
        if use_predicted and noise_level_net is None:
            raise ValueError("objective.noise_level_ckpt is required to sample a no_t model with "
                             "objective.use_predicted_noise_level=true")
        if clamp not in NOISE_LEVEL_CLAMPS:
            raise ValueError(f"objective.noise_level_clamp={clamp!r} is not one of "
                             f"{list(NOISE_LEVEL_CLAMPS)}")
        _check_factor(clamp_factor)
        self.net, self.noise_level_net = net, noise_level_net
        self.use_predicted, self.clamp_factor, self.clamp = use_predicted, clamp_factor, clamp
        self.record, self.normalize_input = record, normalize_input

    def eps_and_alpha_bar(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The model's eps for ``x`` at ``sigma`` and the alpha_bar used for each image; in x's
        dtype (the sampler's; the denoiser call below works in float32)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        x_vp = to_vp(x, sigma)
        eps = self.net(normalize_per_image(x_vp) if self.normalize_input else x_vp, None)
        eps = eps.to(x.dtype)
        abar_grid = sigma_to_alpha_bar(sigma)
        if self.use_predicted:
            pred = self.noise_level_net.alpha_bar(x_vp).to(x.dtype)
            if self.clamp == "median":
                abar = clamp_to_median(pred, self.clamp_factor)
            else:
                abar = clamp_to_grid(pred, abar_grid, self.clamp_factor)
        else:
            abar = abar_grid
        if self.record is not None:
            self.record.append((sigma.detach().cpu(), abar.detach().cpu()))
        return eps, abar

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        x = x.float()
        eps, abar = self.eps_and_alpha_bar(x, sigma)
        a = abar.view(-1, 1, 1, 1)
        return (to_vp(x, sigma) - (1 - a).sqrt() * eps) / a.sqrt()


def no_t_denoiser(net, noise_level_net=None, *, use_predicted: bool = True,
                  clamp_factor: float = 2.0, clamp: str = "median", record: list | None = None,
                  normalize_input: bool = False) -> NoTDenoiser:
    """Build the no_t denoiser (:class:`NoTDenoiser`)."""
    return NoTDenoiser(net, noise_level_net, use_predicted=use_predicted,
                       clamp_factor=clamp_factor, clamp=clamp, record=record,
                       normalize_input=normalize_input)
