"""No-t sampling: an eps model never told its noise level, guided by a noise-level predictor.

The denoiser of a no_t model, in sigma space like every other (``denoiser(x, sigma) -> x0_hat``):

1. the sampler's state as a VP image, ``x_vp = x / sqrt(1 + sigma^2)`` (what the lesson's sampler
   carries);
2. ``eps_hat = net(x_vp)``, no conditioning input (``x_vp`` divided by its per-image std first
   when the model was trained with ``objective.normalize_input``);
3. ``abar``: the predictor's estimate for each image, kept within a factor of the batch median
   (``clamp_to_median``), or the schedule's ``1 / (1 + sigma^2)`` when
   ``use_predicted_noise_level`` is false;
4. ``x0_hat = (x_vp - sqrt(1 - abar) eps_hat) / sqrt(abar)``.

With the schedule's abar, step 4 is exactly the eps objective's ``x - sigma eps_hat``.
Pure torch; no Lightning, no Hydra.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .objectives import normalize_per_image
from .schedules import sigma_to_alpha_bar, to_vp

__all__ = ["clamp_to_median", "no_t_denoiser", "ABAR_EPS"]

#: training draws of alpha_bar are kept in [ABAR_EPS, 1 - ABAR_EPS] so logit targets stay finite
ABAR_EPS = 1e-4


def clamp_to_median(abar: Tensor, factor: float = 2.0) -> Tensor:
    """Keep every estimate within ``[median / factor, median * factor]`` of the batch (and below 1).

    Estimates already in that range are returned unchanged."""
    if factor < 1:
        raise ValueError(f"objective.clamp_factor must be >= 1 (got {factor})")
    med = abar.median()
    lo, hi = med / factor, torch.clamp(med * factor, max=1 - 1e-6)
    return torch.minimum(torch.maximum(abar, lo), hi)


def no_t_denoiser(net, noise_level_net=None, *, use_predicted: bool = True,
                  clamp_factor: float = 2.0, record: list | None = None,
                  normalize_input: bool = False):
    """Build the no_t denoiser; ``record`` (a list) receives ``(sigma, abar_used)`` per call."""
    if use_predicted and noise_level_net is None:
        raise ValueError("objective.noise_level_ckpt is required to sample a no_t model with "
                         "objective.use_predicted_noise_level=true")

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        x_vp = to_vp(x.float(), sigma)
        eps = net(normalize_per_image(x_vp) if normalize_input else x_vp, None).float()
        if use_predicted:
            abar = clamp_to_median(noise_level_net.alpha_bar(x_vp), clamp_factor)
        else:
            abar = sigma_to_alpha_bar(sigma)
        if record is not None:
            record.append((sigma.detach().cpu(), abar.detach().cpu()))
        a = abar.view(-1, 1, 1, 1)
        return (x_vp - (1 - a).sqrt() * eps) / a.sqrt()

    return denoiser
