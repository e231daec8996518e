"""Training objectives: what the network sees, what it learns, and how its output becomes x0_hat.

All objectives work in sigma space (``x = x0 + sigma * n``) and meet at one interface,
``denoiser(x, sigma) -> x0_hat`` (see :func:`make_denoiser`). For a network ``F`` an objective
defines

* ``c_in(sigma)``: the input scaling, the network sees ``c_in * x``;
* ``cond(sigma)``: the conditioning value handed to the network (t, log sigma, or None);
* ``target(x0, noise, sigma)``: the training target for ``F``;
* ``loss_weight(sigma)``: per-image weight of the squared error;
* ``to_x0(x, F, sigma)``: network output -> x0_hat.

The VP objectives (eps, x0, v) feed the network the VP image ``x / sqrt(1 + sigma^2)`` and
condition on the schedule's t. With ``abar = 1 / (1 + sigma^2)``:

* eps: target n,                        x0_hat = x - sigma F
* x0:  target x0,                       x0_hat = F
* v:   target sqrt(abar) n - sqrt(1-abar) x0 (Salimans & Ho 2022),
       x0_hat = sqrt(abar) x_vp - sqrt(1 - abar) F = x / (1 + sigma^2) - sigma F / sqrt(1 + sigma^2)

karras (Karras et al. 2022, Table 1, "EDM" column), with sd = sigma_data:
c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4 (``c_noise="log"``; ``"raw"`` hands the
network sigma itself, as the lesson's 23_karras.ipynb does: ``model((x * c_in, sig))`` into a
diffusers UNet2DModel's timestep embedding); the target is
``(x0 - c_skip x) / c_out`` so that ``x0_hat = c_skip x + c_out F``; EDM's loss weight
``lambda = 1 / c_out^2`` times the c_out^2 of the change of variables is 1.

All loss weights are 1 for the MSE on each objective's own target (the lesson's losses); they are
kept as a method so a weighting can be added in one place.

``normalize_input`` (VP objectives: eps, x0, v, no_t) is Chen 2023's input normalisation
(Algorithm 1, ``normalize=True``): the network sees ``c_in x`` divided by its own per-image
standard deviation, so its input has unit variance at every noise level whatever the input scaling
b (``data.scale``); without it the VP input has variance ``abar b^2 Var(x0) + (1 - abar)``. It acts
in :meth:`Objective.net_input`, the one place both training and sampling form the network input.
The karras objective refuses it: its ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` already gives
unit variance in expectation (sigma_data is measured on the data as scaled), so the switch would
only swap that for a noisier per-image estimate.

Pure torch; no Lightning, no Hydra.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["Objective", "EpsObjective", "X0Objective", "VObjective", "KarrasObjective",
           "NoTObjective", "OBJECTIVES", "C_NOISE", "build_objective", "make_denoiser",
           "normalize_per_image"]


def _b(v: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-image [B] tensor against an image batch."""
    return v.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def normalize_per_image(x: Tensor) -> Tensor:
    """``x`` divided by each image's standard deviation over all its pixels (Chen 2023, Alg. 1)."""
    dims = tuple(range(1, x.dim()))
    return x / x.std(dim=dims, keepdim=True, correction=0).clamp_min(1e-6)


class Objective:
    name = "base"
    #: does the network receive a conditioning value at all?
    conditioned = True
    #: the network's sinusoidal embedding kind for that value (models.unet.EMBEDDINGS)
    embedding = "geometric"

    def __init__(self, schedule: Schedule, normalize_input: bool = False):
        self.schedule = schedule
        self.normalize_input = bool(normalize_input)

    def c_in(self, sigma: Tensor) -> Tensor:
        return (1.0 + sigma * sigma).rsqrt()

    def cond(self, sigma: Tensor) -> Tensor | None:
        """The schedule's t, as a float32 [B] tensor."""
        return self.schedule.t_from_sigma(sigma.double()).float()

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def to_x0(self, x: Tensor, out: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def loss_weight(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    # the pieces a training step needs, in one call
    def net_input(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor | None]:
        inp = _b(self.c_in(sigma), x) * x
        if self.normalize_input:
            inp = normalize_per_image(inp)
        return inp, self.cond(sigma)


class EpsObjective(Objective):
    name = "eps"

    def target(self, x0, noise, sigma):
        return noise

    def to_x0(self, x, out, sigma):
        return x - _b(sigma, x) * out


class X0Objective(Objective):
    name = "x0"

    def target(self, x0, noise, sigma):
        return x0

    def to_x0(self, x, out, sigma):
        return out


class VObjective(Objective):
    name = "v"

    def target(self, x0, noise, sigma):
        s = _b((1.0 + sigma * sigma).rsqrt(), x0)  # sqrt(abar)
        return s * noise - s * _b(sigma, x0) * x0  # sqrt(1-abar) = sigma sqrt(abar)

    def to_x0(self, x, out, sigma):
        s2 = _b(1.0 + sigma * sigma, x)
        return x / s2 - _b(sigma, x) * out / s2.sqrt()


#: values of ``objective.c_noise`` (karras): the conditioning value the network gets
C_NOISE = ("log", "raw")


class KarrasObjective(Objective):
    name = "karras"

    def __init__(self, schedule: Schedule, sigma_data: float, normalize_input: bool = False,
                 c_noise: str = "log"):
        super().__init__(schedule)
        if c_noise not in C_NOISE:
            raise ValueError(f"objective.c_noise={c_noise!r} is not one of {list(C_NOISE)}")
        self.c_noise = c_noise
        # raw sigma spans about 0.002 .. 80+: it needs the diffusers-style embedding whose
        # frequencies go down to 1e-4 (models.unet.sinusoidal_embedding, kind "timestep")
        self.embedding = "timestep" if c_noise == "raw" else "geometric"
        if normalize_input:
            raise ValueError("objective.normalize_input applies to the VP objectives (eps, x0, v, "
                             "no_t); karras' c_in already scales its input to unit variance")
        if not sigma_data > 0:
            raise ValueError(f"objective.sigma_data must be > 0 (got {sigma_data})")
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data ** 2
        s2 = sigma * sigma
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * self.sigma_data * (s2 + sd2).rsqrt()
        c_in = (s2 + sd2).rsqrt()
        return c_skip, c_out, c_in

    def c_in(self, sigma):
        return self.scalings(sigma)[2]

    def cond(self, sigma):
        """c_noise: ``ln(sigma) / 4`` (EDM, Table 1) or sigma itself (``c_noise="raw"``, the
        lesson's)."""
        return sigma.float() if self.c_noise == "raw" else sigma.float().log() / 4

    def target(self, x0, noise, sigma):
        c_skip, c_out, _ = self.scalings(sigma)
        x = x0 + _b(sigma, x0) * noise
        return (x0 - _b(c_skip, x0) * x) / _b(c_out, x0)

    def to_x0(self, x, out, sigma):
        c_skip, c_out, _ = self.scalings(sigma)
        return _b(c_skip, x) * x + _b(c_out, x) * out


class NoTObjective(EpsObjective):
    """An eps model that is never told its noise level: the network gets no conditioning input.

    At sampling time the noise level comes from the schedule or from a noise-level predictor
    (see :mod:`diffexp.no_t`)."""

    name = "no_t"
    conditioned = False

    def cond(self, sigma):
        return None


OBJECTIVES = {"eps": EpsObjective, "x0": X0Objective, "v": VObjective, "karras": KarrasObjective,
              "no_t": NoTObjective}


def build_objective(name: str, schedule: Schedule, sigma_data: float | None = None,
                    normalize_input: bool = False, c_noise: str = "log") -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"objective.name={name!r} is not one of {sorted(OBJECTIVES)}")
    if name == "karras":
        return KarrasObjective(schedule, sigma_data, normalize_input, c_noise)
    if c_noise != "log":
        raise ValueError(f"objective.c_noise applies to objective=karras only (objective={name})")
    return OBJECTIVES[name](schedule, normalize_input)


def make_denoiser(net, objective: Objective):
    """Wrap a network as ``denoiser(x, sigma) -> x0_hat`` in sigma space.

    ``sigma`` is a [B] tensor (a scalar is broadcast). The objective's arithmetic runs in fp32
    whatever precision the network computes in."""

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        x = x.float()
        inp, cond = objective.net_input(x, sigma)
        out = net(inp, cond).float()
        return objective.to_x0(x, out, sigma)

    return denoiser
