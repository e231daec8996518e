"""Evaluation of a trained module: FID/KID, precision/recall, density/coverage and class balance
with the floor, several sampling seeds summarised as mean ± std, per-step curves, diagnostics.

Protocol (pinned; every metrics.json says which): features of the shipped Fashion-MNIST classifier
(``eval.features=fashion``), reference = the 10,000-image test split, generated images decoded to
uint8 28x28 exactly as saved images are (``/ data.scale``, un-padded, rounded), and the real-vs-real
floor at the same n (n training images drawn by a seeded permutation against the same reference).
No Hydra here; :mod:`diffexp.cli.eval` is the command line.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import Tensor

from . import sampling
from .data import CLASSES, decode, load_fashion_mnist, to_uint8
from .metrics import DEFAULT_K, Evaluator
from .module import DiffusionModule
from .viz import image_table, training_sigma_figure

__all__ = ["REFERENCE_KEY", "SCALAR_METRICS", "reference_images", "reference_labels",
           "floor_images", "make_evaluator", "evaluate_samples", "scalar_scores", "summarize_seeds",
           "proxy_log_dict", "mean_per_step", "per_step_figure", "class_grid_figure", "diagnostics"]

#: the per-image-set numbers that are averaged over sampling seeds (and in the per-step curve)
SCALAR_METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                  "class_tv", "class_confidence")

#: how images reach the feature net: raw test split, uint8, 28x28, one channel
REFERENCE_KEY = "fashion_mnist:test:uint8:1x28x28"


def reference_images(data_root=None) -> Tensor:
    x, _ = load_fashion_mnist(data_root, train=False, download=True)
    return x.unsqueeze(1)


def reference_labels(data_root=None) -> Tensor:
    """The test split's labels: their histogram is the class balance a generator should match."""
    _, y = load_fashion_mnist(data_root, train=False, download=True)
    return y


def floor_images(n: int, data_root=None, seed: int = 0) -> Tensor:
    """``n`` training images (uint8 [n, 1, 28, 28]) drawn by a permutation seeded with ``seed``."""
    x, _ = load_fashion_mnist(data_root, train=True, download=True)
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=g)[:n]].unsqueeze(1)


def make_evaluator(data_root=None, *, device="cpu", features="fashion", kid_subset_size=1000,
                   kid_subsets=100, prdc_k: int = DEFAULT_K) -> Evaluator:
    return Evaluator(reference_images(data_root), device=device, features=features,
                     cache_key_extra=REFERENCE_KEY, kid_subset_size=kid_subset_size,
                     kid_subsets=kid_subsets, prdc_k=prdc_k,
                     reference_labels=reference_labels(data_root))


def scalar_scores(scores: dict) -> dict:
    """The :data:`SCALAR_METRICS` of an Evaluator score (those it has)."""
    return {k: scores[k] for k in SCALAR_METRICS if k in scores}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1; None for a single value)."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def summarize_seeds(per_seed: list[dict]) -> tuple[dict, dict | None]:
    """``(mean, std)`` over seeds of every number the per-seed dicts share, lists (the class
    histogram) element by element; ``std`` is the sample std (ddof=1), None for a single seed."""
    if not per_seed:
        raise ValueError("summarize_seeds needs at least one seed's scores")
    mean, std = {}, {}
    for key, first in per_seed[0].items():
        vals = [d.get(key) for d in per_seed]
        if isinstance(first, bool) or key in ("seed", "n", "k"):
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            mean[key], std[key] = _mean_std([float(v) for v in vals])
        elif all(isinstance(v, list) and len(v) == len(first) for v in vals):
            cols = [_mean_std([float(v[i]) for v in vals]) for i in range(len(first))]
            mean[key], std[key] = [m for m, _ in cols], [s for _, s in cols]
    return mean, (std if len(per_seed) > 1 else None)


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
                                 batch_size=batch_size, callback=keep_x0 if per_step else None,
                                 progress=f"sampling (seed {seed})")
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
            rows.append({"step": i + 1, "sigma": step_sigma[i], "n": s["n"], **scalar_scores(s)})
    return metrics, u8, rows


def proxy_log_dict(metrics: dict) -> dict:
    """What the in-training proxy (``train.fid_every_n_epochs``) logs from an
    :func:`evaluate_samples` result: ``val/fid``, ``val/kid``, ``val/precision``, ``val/recall``."""
    logged = {"val/fid": metrics["fid"], "val/kid": metrics["kid_mean"],
              "val/precision": metrics.get("precision"), "val/recall": metrics.get("recall")}
    return {k: v for k, v in logged.items() if v is not None}  # null below k+1 samples


def mean_per_step(rows: list[dict]) -> list[dict]:
    """Per-step rows of several seeds (each with ``seed``) averaged per step: the mean of every
    metric and its std over seeds as ``<metric>_seed_std`` (None with one seed)."""
    by_step: dict[int, list[dict]] = {}
    for r in rows:
        by_step.setdefault(int(r["step"]), []).append(r)
    out = []
    for step in sorted(by_step):
        rs = by_step[step]
        row = {"step": step, "sigma": rs[0]["sigma"], "n_seeds": len(rs)}
        for k in SCALAR_METRICS:
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                row[k], row[f"{k}_seed_std"] = _mean_std(vals)
        out.append(row)
    return out


def per_step_figure(rows: list[dict]):
    """FID, KID and precision / recall of the x0 estimate after every sampling step: where in the
    trajectory fidelity (precision) and diversity (recall) appear. ``rows`` may hold several
    seeds (a ``seed`` key): then the mean is drawn with the std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = mean_per_step(rows)
    steps = [r["step"] for r in mean]

    def err(key):
        return [r[f"{key}_seed_std"] or 0.0 for r in mean]

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    ax[0].errorbar(steps, [r["fid"] for r in mean], yerr=err("fid"), fmt="o-")
    ax[0].set_yscale("log")
    ax[0].set_ylabel("FID of x0 estimate")
    ax[1].errorbar(steps, [r["kid_mean"] for r in mean], yerr=err("kid_mean"), fmt="o-")
    ax[1].set_ylabel("KID of x0 estimate")
    for key, label in (("precision", "precision (fidelity)"), ("recall", "recall (diversity)"),
                       ("coverage", "coverage")):
        if key in mean[0]:
            ax[2].errorbar(steps, [r[key] for r in mean], yerr=err(key), fmt="o-", label=label)
    ax[2].set_ylim(-0.02, 1.02)
    ax[2].set_ylabel("of x0 estimate")
    ax[2].legend(fontsize=7)
    for a in ax:
        a.set_xlabel("sampling step")
    if mean[0]["n_seeds"] > 1:
        fig.suptitle(f"mean ± std over {mean[0]['n_seeds']} sampling seeds", fontsize=9)
    fig.tight_layout()
    return fig


def class_grid_figure(u8: Tensor, labels: Tensor, confidence: Tensor, per_class: int = 8,
                      class_names=CLASSES):
    """Generated images sorted by the classifier's predicted class: one row per class, its most
    confident ``per_class`` images, the row named with the class and its count."""
    rows, names = [], []
    for c, name in enumerate(class_names):
        idx = (labels == c).nonzero().flatten()
        idx = idx[confidence[idx].argsort(descending=True)][:per_class]
        rows.append(u8[idx])
        names.append(f"{name}\n{int((labels == c).sum())} of {len(labels)}")
    return image_table(rows, names, [], suptitle="samples by predicted class (most confident "
                                                 "first)")


@torch.no_grad()
def diagnostics(module: DiffusionModule, real_u8: Tensor, *, use_ema: bool = True,
                seed: int = 0) -> dict:
    """The lesson's diagnostic figures, as ``{name: matplotlib figure}``:

    * ``denoise``: real images noised at a range of noise levels, the one-step x0 prediction, and
      the truth (titles give sigma and the schedule's t);
    * ``training_sigmas``: the training noise-level distribution (log sigma and t histograms);
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
    figs["training_sigmas"] = training_sigma_figure(train_sig, train_t, sched.name)

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
