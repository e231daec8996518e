"""Evaluation of a trained module: FID/KID with the floor, per-step curves, diagnostics.

Protocol (pinned; every metrics.json says which): features of the shipped Fashion-MNIST classifier
(``eval.features=fashion``), reference = the 10,000-image test split, generated images decoded to
uint8 28x28 exactly as saved images are (``/ data.scale``, un-padded, rounded), and the real-vs-real
floor at the same n (n training images drawn by a seeded permutation against the same reference).
No Hydra here; :mod:`diffexp.cli.eval` is the command line.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from . import sampling
from .data import decode, load_fashion_mnist, to_uint8
from .metrics import Evaluator
from .module import DiffusionModule
from .viz import image_table, noise_level_figure

__all__ = ["REFERENCE_KEY", "reference_images", "floor_images", "make_evaluator",
           "evaluate_samples", "per_step_figure", "diagnostics"]

#: how images reach the feature net: raw test split, uint8, 28x28, one channel
REFERENCE_KEY = "fashion_mnist:test:uint8:1x28x28"


def reference_images(data_root=None) -> Tensor:
    x, _ = load_fashion_mnist(data_root, train=False, download=True)
    return x.unsqueeze(1)


def floor_images(n: int, data_root=None, seed: int = 0) -> Tensor:
    """``n`` training images (uint8 [n, 1, 28, 28]) drawn by a permutation seeded with ``seed``."""
    x, _ = load_fashion_mnist(data_root, train=True, download=True)
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=g)[:n]].unsqueeze(1)


def make_evaluator(data_root=None, *, device="cpu", features="fashion", kid_subset_size=1000,
                   kid_subsets=100) -> Evaluator:
    return Evaluator(reference_images(data_root), device=device, features=features,
                     cache_key_extra=REFERENCE_KEY, kid_subset_size=kid_subset_size,
                     kid_subsets=kid_subsets)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def evaluate_samples(module: DiffusionModule, evaluator: Evaluator, sampler_cfg: dict, *,
                     n: int, seed: int, batch_size: int, grid_cfg: dict | None = None,
                     use_ema: bool = True,
                     per_step: bool = False) -> tuple[dict, Tensor, list[dict] | None]:
    """Sample ``n`` images (``grid_cfg`` None: the run's own grid) and score them. Returns
    ``(metrics, uint8 images, per-step rows)``."""
    d = module.cfg["data"]
    steps_u8: dict[int, list[Tensor]] = {}
    step_sigma: dict[int, float] = {}

    def keep_x0(info):
        i = int(info["i"])
        step_sigma[i] = float(info["sigma"])
        steps_u8.setdefault(i, []).append(decode(info["x0_hat"], d["pad"], d["scale"]).cpu())

    _sync(module.device)
    t0 = time.perf_counter()
    _, u8, nfe = module.generate(n, seed=seed, sampler_cfg=sampler_cfg, grid_cfg=grid_cfg,
                                 use_ema=use_ema,
                                 batch_size=batch_size, callback=keep_x0 if per_step else None)
    _sync(module.device)
    t_sample = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = evaluator.score(u8)
    t_score = time.perf_counter() - t1
    metrics = {**scores, "nfe": nfe, "sample_time_s": round(t_sample, 3),
               "score_time_s": round(t_score, 3), "images_per_s": round(n / t_sample, 2),
               "nfe_per_s": round(n * nfe / t_sample, 1)}
    rows = None
    if per_step:
        rows = []
        for i in sorted(steps_u8):
            s = evaluator.score(torch.cat(steps_u8[i]))
            rows.append({"step": i + 1, "sigma": step_sigma[i], **s})
    return metrics, u8, rows


def per_step_figure(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [r["step"] for r in rows]
    ax[0].plot(steps, [r["fid"] for r in rows], "o-")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("sampling step")
    ax[0].set_ylabel("FID of x0 estimate")
    ax[1].errorbar(steps, [r["kid_mean"] for r in rows], yerr=[r["kid_std"] for r in rows],
                   fmt="o-")
    ax[1].set_xlabel("sampling step")
    ax[1].set_ylabel("KID of x0 estimate")
    fig.tight_layout()
    return fig


@torch.no_grad()
def diagnostics(module: DiffusionModule, real_u8: Tensor, *, use_ema: bool = True,
                seed: int = 0) -> dict:
    """The lesson's diagnostic figures, as ``{name: matplotlib figure}``:

    * ``denoise``: real images noised at a range of noise levels, the one-step x0 prediction, and
      the truth (titles give sigma and the schedule's t);
    * ``noise_levels``: the training noise-level distribution (log sigma and t histograms);
    * ``cskip_target`` (karras objective): the c_skip training target at a range of sigmas;
    * ``one_step_from_noise``: a single denoising step from pure noise at sigma_max."""
    d = module.cfg["data"]
    pad, scale = d["pad"], d["scale"]
    dev = module.device
    den = module.denoiser(use_ema)
    g = torch.Generator().manual_seed(seed)
    k = min(8, len(real_u8))
    x0 = (real_u8[:k].float().to(dev) * (2 / 255) - 1)
    x0 = torch.nn.functional.pad(x0, (pad,) * 4, value=-1.0) * scale
    sched = module.schedule
    sigmas = torch.logspace(math.log10(max(sched.sigma_min, 1e-2)),
                            math.log10(min(sched.sigma_max, 80.0)), 6).tolist()
    figs = {}
    noised, preds, titles = [], [], []
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=g).to(dev)
        x = x0 + s * noise
        pred = den(x, torch.full((k,), s, device=dev))
        # show the noised image as the network's VP view, so it stays in range at large sigma
        noised.append(decode(x / math.sqrt(1 + s * s), pad, scale).cpu())
        preds.append(decode(pred, pad, scale).cpu())
        t = float(sched.t_from_sigma(torch.tensor(s, dtype=torch.float64)))
        titles.append(f"sigma={s:.3g}\nt={t:.3f}")
    truth = real_u8[:k]
    rows, names = [], []
    for j in range(k):
        rows += [torch.stack([n_[j] for n_ in noised]), torch.stack([p[j] for p in preds]),
                 truth[j:j + 1].expand(len(sigmas), -1, -1, -1)]
        names += [f"#{j} noised", f"#{j} pred", f"#{j} truth"]
    figs["denoise"] = image_table(rows[:12], names[:12], titles)

    train_sig = sched.sample_training_sigma(100_000, generator=torch.Generator().manual_seed(0))
    train_t = sched.t_from_sigma(train_sig.double())
    figs["noise_levels"] = noise_level_figure(train_sig, train_t, sched.name)

    obj = module.objective
    if obj.name == "karras":
        tgt = []
        for s in sigmas:
            noise = torch.randn(x0.shape, generator=g).to(dev)
            tgt_img = obj.target(x0, noise, torch.full((k,), s, device=dev))
            tgt.append(to_uint8((tgt_img[..., pad:x0.shape[-2] - pad, pad:x0.shape[-1] - pad]
                                 / 3).clamp(-1, 1)).cpu())
        figs["cskip_target"] = image_table([torch.stack([t_[j] for t_ in tgt]) for j in range(k)],
                                           [f"#{j}" for j in range(k)],
                                           [f"sigma={s:.3g}" for s in sigmas],
                                           suptitle="c_skip training target (shown / 3)")
    smax = float(sampling.build_sigmas(sched, 1)[0])
    noise = torch.randn((16, *module.image_shape), generator=g).to(dev) * smax
    one = decode(den(noise, torch.full((16,), smax, device=dev)), pad, scale).cpu()
    figs["one_step_from_noise"] = image_table([one[:8], one[8:]], ["", ""],
                                              [""] * 8,
                                              suptitle=f"one denoising step from noise, "
                                                       f"sigma={smax:.3g}")
    return figs
