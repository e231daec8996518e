"""Benchmark: the diffexp paths against bare PyTorch doing the same work, on one device.

    python scripts/bench.py [--model unet_tiny|unet_course] [--batch-size 32] [--device auto]
                            [--threads 1] [--reps 5] [--n-batches 3] [--steps 3]
                            [--fid-n 2048] [--fid-nfe 20] [--out bench.json] [--quick]
    make bench ARGS="--model unet_tiny --reps 5"

See docs/PERFORMANCE.md for what is measured, the options and results.

Sections (all measured in one process, on the same device, the compared paths interleaved
repetition by repetition: A then B in even repetitions, B then A in odd ones; medians over
``--reps``; ratio = median(diffexp) / median(bare); beside it a "cpu ratio" of the same work per
second of process CPU time, less disturbed by other processes on a shared machine):

(a) ``train``: training images/s of a real ``pl.Trainer.fit`` of :class:`DiffusionModule`
    (``limit_train_batches = warmup + n_batches``, no logger, no checkpointing, no validation, no
    sample grids; a Callback times the steps after the warm-up, synchronising CUDA) against a bare
    PyTorch loop of the same network: the same data (the device-resident uint8 tensor, gathered by
    index, same encode), the same loss, the same optimizer (class and hyper-parameters, fused /
    foreach as the module configures it, checked equal), the same LR schedule, gradient clipping,
    EMA update and precision (bf16 autocast on a GPU, fp32 on the CPU).
(b) ``sampling``: images/s and NFE/s of every sampler in ``diffexp.sampling.SAMPLERS`` through
    ``sampling.sample`` with the module's (EMA) denoiser and ``--steps`` steps, each against bare
    forward passes of the same network, batch size and count (the ideal NFE/s).
(c) ``fid``: the time to evaluate FID on ``--fid-n`` samples: generation (``module.generate``,
    ``--fid-sampler`` at about ``--fid-nfe`` NFE) and ``Evaluator.score``, reported separately
    (plus the evaluator's one-off setup: reference features, cached after the first run).
(d) ``memory``: peak memory per path (``torch.cuda.max_memory_allocated`` on a GPU); on the CPU
    the process high-water mark (``resource.getrusage(...).ru_maxrss``) after each path.

The goal (printed as PASS/FAIL beside each ratio, never adjusted): diffexp within 5% of bare
(ratio >= 0.95) for training and for every sampler. The network's weights are random (the output
layer is re-initialised with small random weights so samples are not trivially zero) unless
``--ckpt`` gives a trained checkpoint for (b) and (c); timings do not depend on the weights.

CPU timings on a shared machine are noisy: use ``--threads`` (default 1) so as not to oversubscribe
the cores, and read the per-repetition values in the JSON beside the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch

THRESHOLD = 0.95

QUICK = {"batch_size": 8, "reps": 2, "warmup": 1, "n_batches": 2, "steps": 2,
         "sample_batches": 1, "fid_n": 32, "fid_nfe": 2, "fid_ref_n": 256}


# ------------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet_tiny", choices=["unet_tiny", "unet_course"])
    p.add_argument("--batch-size", type=int, default=None,
                   help="training and sampling batch size (default 32; --quick: 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1; 0 keeps torch's default)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed training batches per repetition and path (default 1)")
    p.add_argument("--n-batches", type=int, default=None,
                   help="timed training batches per repetition and path (default 3)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps in (b) (default 3)")
    p.add_argument("--sample-batches", type=int, default=None,
                   help="batches per sampler call in (b) (default 1)")
    p.add_argument("--fid-n", type=int, default=None,
                   help="samples for (c) (default 2048 on a GPU, 256 on the CPU, where 2048 "
                        "samples at 20 NFE take minutes)")
    p.add_argument("--fid-nfe", type=int, default=None, help="target NFE for (c) (default 20)")
    p.add_argument("--fid-sampler", default="ddim")
    p.add_argument("--fid-batch-size", type=int, default=None,
                   help="sampling batch size in (c) (default: eval.batch_size=512 on a GPU, "
                        "--batch-size on the CPU)")
    p.add_argument("--fid-ref-n", type=int, default=None,
                   help="reference images for (c) (default: the 10,000 test images)")
    p.add_argument("--fid-reps", type=int, default=1, help="repetitions of (c) (default 1)")
    p.add_argument("--sections", default="train,sampling,fid",
                   help="comma-separated subset of train,sampling,fid")
    p.add_argument("--samplers", default=None,
                   help="comma-separated subset of the samplers (default: all)")
    p.add_argument("--ckpt", default=None, help="a trained checkpoint for (b) and (c)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST root (else DIFFEXP_DATA_ROOT)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of the training config (repeatable), "
                        "e.g. --set objective=karras")
    p.add_argument("--mallopt", action="store_true",
                   help="glibc only: keep freed memory in the heap (mallopt M_MMAP_THRESHOLD and "
                        "M_TRIM_THRESHOLD = 1 GiB) for both paths, so large CPU tensors are not "
                        "mmap'ed and page-faulted afresh on every allocation")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="after the timed reps, run each training path once more under cProfile "
                        "(timed steps only) and print its K most expensive functions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench.json", help="JSON output (default bench.json)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test (seconds); the numbers mean little")
    args = p.parse_args(argv)
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    defaults = {"batch_size": 32, "reps": 5, "warmup": 1, "n_batches": 3, "steps": 3,
                "sample_batches": 1, "fid_n": 2048 if gpu else 256, "fid_nfe": 20,
                "fid_ref_n": None}
    if args.quick:
        defaults.update(QUICK)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.fid_batch_size is None:
        args.fid_batch_size = min(512 if gpu else args.batch_size, args.fid_n)
    for k in ("batch_size", "reps", "warmup", "n_batches", "steps", "sample_batches", "fid_n",
              "fid_nfe", "fid_batch_size", "fid_reps"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1 (got {getattr(args, k)})")
    if args.fid_n < 2:
        p.error("--fid-n must be >= 2")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(args.sections) - {"train", "sampling", "fid"}
    if bad:
        p.error(f"--sections: unknown {sorted(bad)}")
    return args


# ------------------------------------------------------------------------------------ helpers
def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def ratio_entry(diffexp: list[float], bare: list[float], unit: str,
                cpu_diffexp: list[float] | None = None, cpu_bare: list[float] | None = None) -> dict:
    """Medians of both paths, their ratio (diffexp / bare) and the verdict. The ``cpu_*`` rates
    (work per second of this process's CPU time) are information beside the wall-clock verdict:
    on a shared machine they are much less disturbed by other processes."""
    a, b = median(diffexp), median(bare)
    r = a / b
    e = {"unit": unit, "diffexp": a, "bare": b, "ratio": r, "threshold": THRESHOLD,
         "pass": bool(r >= THRESHOLD), "diffexp_reps": list(diffexp), "bare_reps": list(bare)}
    if cpu_diffexp and cpu_bare:
        ca, cb = median(cpu_diffexp), median(cpu_bare)
        e.update({"cpu_diffexp": ca, "cpu_bare": cb, "cpu_ratio": ca / cb,
                  "cpu_diffexp_reps": list(cpu_diffexp), "cpu_bare_reps": list(cpu_bare)})
    return e


class Clock:
    """Wall-clock and process CPU time since construction (after a CUDA sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        sync(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or the process maxrss on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = ("cuda_max_memory_allocated" if device.type == "cuda"
                     else "cpu_process_maxrss (high-water mark of the whole process so far)")
        self.peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def track(self, name: str):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.device.type == "cuda":
            sync(self.device)
            mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            mb = maxrss_mb()
        self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def run(self, name: str, fn, *args):
        with self.track(name):
            return fn(*args)


def apply_mallopt(threshold: int = 1 << 30) -> str:
    """Raise glibc's mmap and trim thresholds for this process (see ``--mallopt``)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    if not (libc.mallopt(m_mmap_threshold, threshold) and libc.mallopt(m_trim_threshold, threshold)):
        raise SystemExit("error: --mallopt: mallopt() refused the setting (not glibc?)")
    return f"glibc mallopt(M_MMAP_THRESHOLD={threshold}, M_TRIM_THRESHOLD={threshold})"


def machine_info(device: torch.device) -> dict:
    import pytorch_lightning as pl

    from diffexp.runs.record import cpu_model

    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    return torch.device(name)


def build_config(args, device: torch.device) -> dict:
    """The training config of ``--model`` composed through the real Hydra tree, as train.py does."""
    from hydra import compose, initialize_config_dir

    from diffexp.config import CONF_DIR, validate_train_config

    overrides = [f"model={args.model}", "logger=none", f"train.batch_size={args.batch_size}",
                 f"seed={args.seed}", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
                 *args.overrides]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        c = validate_train_config(compose("train", overrides=overrides))
    if c["trainer"]["precision"] == "auto":
        c["trainer"]["precision"] = "bf16-mixed" if device.type == "cuda" else "32-true"
    return c


def autocast_for(c: dict, device: torch.device):
    """The module's autocast rule (bf16 on a GPU with a bf16 precision, else off)."""
    if device.type == "cuda" and str(c["trainer"]["precision"]).startswith("bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def optimizer_kwargs(c: dict) -> tuple[type, dict]:
    """Exactly what DiffusionModule.configure_optimizers builds (checked against it at run time)."""
    o = c["optim"]
    kw = dict(lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    if torch.cuda.is_available():
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return (torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam), kw


def lr_scheduler(c: dict, opt, total: int):
    o = c["optim"]
    if o["lr_schedule"] == "onecycle":
        pct = max(o["pct_start"], 2.0 / total)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o["lr"], total_steps=total,
                                                   pct_start=pct)
    if o["lr_schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def _plain(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(d.items())}


# ------------------------------------------------------------------------------------ (a) train
def train_diffexp(c: dict, data, device: torch.device, warmup: int, n: int, seed: int,
                  profiler=None) -> dict:
    """One ``Trainer.fit`` of a fresh DiffusionModule; images/s over the ``n`` batches after
    ``warmup``. The EMA update follows the optimizer step (DiffusionModule.optimizer_step), before
    the Callback's on_train_batch_end, so the interval from the end of batch ``warmup - 1`` to the
    end of the last batch holds exactly ``n`` full step cycles (data, forward, backward, clip,
    optimizer, EMA, LR step, logging)."""
    import pytorch_lightning as pl

    from diffexp.module import DiffusionModule

    class StepTimer(pl.Callback):
        clock = dt = None

        def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
            if batch_idx == warmup - 1:
                cb.clock = Clock(device)
                if profiler is not None:
                    profiler.enable()
            elif batch_idx == warmup + n - 1:
                cb.dt = cb.clock.elapsed()
                if profiler is not None:
                    profiler.disable()

    torch.manual_seed(seed)
    module = DiffusionModule.from_config(c)
    module.attach_data(data, run_dir=None)  # no run folder: no sample grids
    timer = StepTimer()
    t = c["train"]
    trainer = pl.Trainer(
        max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=c["trainer"]["precision"], gradient_clip_val=t["grad_clip"] or None,
        logger=False, enable_checkpointing=False, callbacks=[timer],
        limit_train_batches=warmup + n, limit_val_batches=0, num_sanity_val_steps=0,
        log_every_n_steps=c["trainer"]["log_every_n_steps"], enable_model_summary=False,
        enable_progress_bar=False, deterministic=False)
    with contextlib.redirect_stdout(io.StringIO()):  # the module's notes (e.g. pct_start)
        trainer.fit(module)
    if timer.dt is None:
        raise RuntimeError(f"the training epoch ended before {warmup + n} batches "
                           f"(fewer training images than that many batches?)")
    opt = trainer.optimizers[0]
    wall, cpu = timer.dt
    return {"images_per_s": n * t["batch_size"] / wall, "cpu_images_per_s": n * t["batch_size"] / cpu,
            "optimizer": type(opt).__name__, "optimizer_defaults": _plain(opt.defaults)}


def train_bare(c: dict, data, device: torch.device, warmup: int, n: int, seed: int,
               profiler=None) -> dict:
    """The same training work in a plain PyTorch loop."""
    from diffexp.build import build_network, build_objective, build_schedule
    from diffexp.data import encode

    torch.manual_seed(seed)
    schedule = build_schedule(c["schedule"])
    objective = build_objective(c["objective"], schedule)
    net = build_network(c["model"], conditioned=objective.conditioned).to(device)
    shadow = [p.detach().clone() for p in net.parameters()]
    params = list(net.parameters())
    cls, kw = optimizer_kwargs(c)
    opt = cls(params, **kw)
    total = warmup + n
    sched = lr_scheduler(c, opt, total)
    t = c["train"]
    bs, clip, decay = t["batch_size"], t["grad_clip"], t["ema_decay"]
    images = data.images.to(device)
    pad, scale = data.pad, data.scale
    perm = data.train_index[torch.randperm(len(data.train_index),
                                           generator=torch.Generator().manual_seed(c["seed"]))]
    amp = autocast_for(c, device)
    net.train()

    def step(b: int, ema_step: int) -> None:
        idx = perm[b * bs:(b + 1) * bs]
        with amp:
            x0 = encode(images[idx.to(device)], pad, scale)
            sigma = schedule.sample_training_sigma(bs, device=device)
            noise = torch.randn(x0.shape, device=device)
            x = x0 + sigma.view(-1, 1, 1, 1) * noise
            inp, cond = objective.net_input(x, sigma)
            out = net(inp, cond).float()
            target = objective.target(x0, noise, sigma)
            per_image = (out - target).pow(2).mean(dim=(1, 2, 3))
            loss = (objective.loss_weight(sigma) * per_image).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            d = min(decay, (1 + ema_step) / (10 + ema_step))
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - d)

    for b in range(warmup):
        step(b, b)
    clock = Clock(device)
    if profiler is not None:
        profiler.enable()
    for b in range(warmup, total):
        step(b, b)
    wall, cpu = clock.elapsed()
    if profiler is not None:
        profiler.disable()
    return {"images_per_s": n * bs / wall, "cpu_images_per_s": n * bs / cpu,
            "optimizer": type(opt).__name__, "optimizer_defaults": _plain(opt.defaults)}


# ------------------------------------------------------------------------------------ (b), (c)
def sampling_module(c: dict, device: torch.device, ckpt: str | None, seed: int):
    """The module whose EMA denoiser is sampled: a checkpoint, or random weights (output layer
    re-initialised small and random so that the denoiser is not the identity)."""
    from diffexp.module import DiffusionModule, load_module

    if ckpt:
        module = load_module(ckpt, map_location="cpu")
        module.precision = c["trainer"]["precision"]
    else:
        torch.manual_seed(seed)
        module = DiffusionModule.from_config(c)
        for net in (module.net, module.ema.shadow):
            torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    return module.to(device).eval()


def time_sampler(module, name: str, steps: int, n: int, bs: int, device, seed: int) -> dict:
    from diffexp import sampling

    den = module.denoiser(use_ema=True)
    clock = Clock(device)
    with torch.no_grad(), module._autocast():
        res = sampling.sample(den, module.schedule, n=n, shape=module.image_shape, seed=seed,
                              sampler=name, steps=steps, batch_size=bs, device=device)
    wall, cpu = clock.elapsed()
    return {"images_per_s": n / wall, "nfe_per_s": n * res.nfe / wall,
            "cpu_nfe_per_s": n * res.nfe / cpu, "nfe": res.nfe}


def time_forward(module, count: int, bs: int, device, seed: int) -> dict:
    """``count`` bare forward passes of the EMA network on a batch of ``bs`` (the ideal)."""
    net = module.ema.shadow
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((bs, *module.image_shape), generator=g).to(device)
    cond = torch.rand(bs, generator=g).to(device) if module.objective.conditioned else None
    clock = Clock(device)
    with torch.no_grad(), module._autocast():
        for _ in range(count):
            net(x, cond)
    wall, cpu = clock.elapsed()
    return {"nfe_per_s": count * bs / wall, "cpu_nfe_per_s": count * bs / cpu}


def fid_steps(name: str, target_nfe: int) -> int:
    """The largest step count whose NFE does not exceed ``target_nfe`` (at least 1)."""
    from diffexp import sampling

    steps = 1
    while sampling.nfe(name, steps + 1) <= target_nfe:
        steps += 1
    return steps


def run_fid(args, c: dict, module, device: torch.device, mem: PeakMemory, log) -> dict:
    from diffexp.evaluation import REFERENCE_KEY, reference_images
    from diffexp.metrics import Evaluator

    steps = fid_steps(args.fid_sampler, args.fid_nfe)
    sampler_cfg = {"name": args.fid_sampler, "steps": steps}  # its defaults, the run's grid
    t0 = time.perf_counter()
    ref = reference_images(args.data_root or c["data"].get("root"))
    if args.fid_ref_n:
        ref = ref[:args.fid_ref_n]
    evaluator = Evaluator(ref, device=str(device), features="fashion",
                          cache_key_extra=REFERENCE_KEY + (f":first{args.fid_ref_n}"
                                                           if args.fid_ref_n else ""))
    setup = time.perf_counter() - t0
    sample_t, score_t, nfe, fid = [], [], None, None
    for r in range(args.fid_reps):
        with mem.track("fid"):
            sync(device)
            t0 = time.perf_counter()
            _, u8, nfe = module.generate(args.fid_n, seed=args.seed + r, sampler_cfg=sampler_cfg,
                                         use_ema=True, batch_size=args.fid_batch_size)
            sync(device)
            t1 = time.perf_counter()
            scores = evaluator.score(u8)
            t2 = time.perf_counter()
        sample_t.append(t1 - t0)
        score_t.append(t2 - t1)
        fid = scores["fid"]
        log(f"  fid rep {r + 1}/{args.fid_reps}: sampling {t1 - t0:.2f}s, scoring {t2 - t1:.2f}s")
    return {"n": args.fid_n, "sampler": args.fid_sampler, "steps": steps, "nfe": nfe,
            "batch_size": args.fid_batch_size, "reference_n": len(ref),
            "sample_time_s": median(sample_t), "score_time_s": median(score_t),
            "total_time_s": median(sample_t) + median(score_t),
            "sample_images_per_s": args.fid_n / median(sample_t),
            "setup_time_s": setup, "reference_from_cache": evaluator.loaded_from_cache,
            "sample_time_reps": sample_t, "score_time_reps": score_t,
            "fid_value_untrained": fid if not args.ckpt else None,
            "fid_value": fid if args.ckpt else None}


# ------------------------------------------------------------------------------------ main run
def interleave(path_a, path_b, flip: bool):
    """Run both paths back to back (B first when ``flip``); return their results as (A, B)."""
    if flip:
        b = path_b()
        return path_a(), b
    a = path_a()
    return a, path_b()


def run(args, log=print) -> dict:
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; override them below

    from diffexp import sampling
    from diffexp.data import build_data

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a Lightning-internal deprecation
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    allocator = apply_mallopt() if args.mallopt else "default"
    device = resolve_device(args.device)
    c = build_config(args, device)
    result: dict = {"machine": {**machine_info(device), "allocator": allocator}, "args": {
        k: v for k, v in vars(args).items() if k != "overrides"} | {"overrides": args.overrides},
        "config": {"model": c["model"], "schedule": c["schedule"]["name"],
                   "objective": c["objective"]["name"], "optim": c["optim"],
                   "precision": c["trainer"]["precision"], "batch_size": c["train"]["batch_size"],
                   "grad_clip": c["train"]["grad_clip"], "ema_decay": c["train"]["ema_decay"]}}
    m = result["machine"]
    log(f"machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} CPUs); torch {m['torch']}, "
        f"lightning {m['lightning']}, python {m['python']}; device {device}, torch threads "
        f"{m['torch_threads']}; load average {m['loadavg_start']}")
    log(f"model {args.model}, batch {args.batch_size}, precision {c['trainer']['precision']}, "
        f"{args.reps} reps, allocator {allocator}")

    data = build_data(c["data"], train=True)
    if c["objective"]["name"] == "karras" and c["objective"]["sigma_data"] == "auto":
        c["objective"]["sigma_data"] = data.measured_std()
    data.to(device)
    mem = PeakMemory(device)
    names = list(sampling.SAMPLERS) if not args.samplers else args.samplers.split(",")
    for nm in names:
        sampling.get_sampler(nm)

    train_a: list[float] = []
    train_b: list[float] = []
    cpu_a: list[float] = []
    cpu_b: list[float] = []
    samp: dict[str, dict[str, list]] = {nm: {"a": [], "b": [], "ca": [], "cb": [], "img": [],
                                             "nfe": None} for nm in names}
    smod = None
    if "sampling" in args.sections or "fid" in args.sections:
        smod = sampling_module(c, device, args.ckpt, args.seed)
    n_samp = args.batch_size * args.sample_batches
    if "sampling" in args.sections:  # warm-up: every sampler once, and the network
        for nm in names:
            time_sampler(smod, nm, 1, args.batch_size, args.batch_size, device, args.seed)
        time_forward(smod, 2, args.batch_size, device, args.seed)

    nfe_of = {nm: sampling.nfe(nm, args.steps) for nm in names}
    opt_check = None
    t_start = time.perf_counter()
    for r in range(args.reps):
        flip = r % 2 == 1  # A, B in even repetitions, B, A in odd ones: no fixed order bias
        if "train" in args.sections:
            targs = (c, data, device, args.warmup, args.n_batches, args.seed + r)
            a, b = interleave(partial(mem.run, "train_diffexp", train_diffexp, *targs),
                              partial(mem.run, "train_bare", train_bare, *targs), flip)
            train_a.append(a["images_per_s"])
            train_b.append(b["images_per_s"])
            cpu_a.append(a["cpu_images_per_s"])
            cpu_b.append(b["cpu_images_per_s"])
            same = (a["optimizer"], a["optimizer_defaults"]) == (b["optimizer"],
                                                                 b["optimizer_defaults"])
            if not same:
                raise RuntimeError(f"the bare loop's optimizer differs from the module's: "
                                   f"{a['optimizer']} {a['optimizer_defaults']} vs "
                                   f"{b['optimizer']} {b['optimizer_defaults']}")
            opt_check = {"class": a["optimizer"], "defaults": a["optimizer_defaults"],
                         "same_in_both": same}
            log(f"  rep {r + 1}/{args.reps} train: diffexp {a['images_per_s']:.1f} img/s, "
                f"bare {b['images_per_s']:.1f} img/s")
        if "sampling" in args.sections:
            line = []
            for nm in names:
                s, f = interleave(
                    partial(mem.run, "sampling_diffexp", time_sampler, smod, nm, args.steps,
                            n_samp, args.batch_size, device, args.seed + r),
                    partial(mem.run, "sampling_bare_forward", time_forward, smod,
                            nfe_of[nm] * args.sample_batches, args.batch_size, device,
                            args.seed + r), flip)
                samp[nm]["a"].append(s["nfe_per_s"])
                samp[nm]["b"].append(f["nfe_per_s"])
                samp[nm]["ca"].append(s["cpu_nfe_per_s"])
                samp[nm]["cb"].append(f["cpu_nfe_per_s"])
                samp[nm]["img"].append(s["images_per_s"])
                if s["nfe"] != nfe_of[nm]:
                    raise RuntimeError(f"{nm}: measured NFE {s['nfe']} != {nfe_of[nm]}")
                samp[nm]["nfe"] = s["nfe"]
                line.append(f"{nm} {s['nfe_per_s'] / f['nfe_per_s']:.2f}")
            log(f"  rep {r + 1}/{args.reps} sampling NFE/s ratio: " + ", ".join(line))

    if "train" in args.sections:
        result["train"] = {**ratio_entry(train_a, train_b, "images/s", cpu_a, cpu_b),
                           "warmup_batches": args.warmup, "timed_batches": args.n_batches,
                           "optimizer": opt_check}
    if "sampling" in args.sections:
        result["sampling"] = {"steps": args.steps, "batch_size": args.batch_size, "n": n_samp,
                              "samplers": {}}
        for nm in names:
            e = ratio_entry(samp[nm]["a"], samp[nm]["b"], "NFE/s", samp[nm]["ca"], samp[nm]["cb"])
            e.update({"nfe": samp[nm]["nfe"], "images_per_s": median(samp[nm]["img"]),
                      "images_per_s_reps": samp[nm]["img"]})
            result["sampling"]["samplers"][nm] = e
    result["interleaved_time_s"] = time.perf_counter() - t_start
    if args.profile and "train" in args.sections:
        result["profile"] = profile_training(c, data, device, args, log)
    if "fid" in args.sections:
        result["fid"] = run_fid(args, c, smod, device, mem, log)
    result["memory"] = {"kind": mem.kind, "unit": "MiB", "peaks": mem.peaks}
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def profile_training(c: dict, data, device: torch.device, args, log) -> dict:
    """cProfile of the timed steps of each training path (one more run each, not in the medians):
    prints the ``--profile`` most expensive functions by own time, returns per-step totals."""
    import cProfile
    import pstats

    out = {}
    for name, fn in (("diffexp", train_diffexp), ("bare", train_bare)):
        prof = cProfile.Profile()
        fn(c, data, device, args.warmup, args.n_batches, args.seed, profiler=prof)
        st = pstats.Stats(prof)
        buf = io.StringIO()
        st.stream = buf
        st.sort_stats("tottime").print_stats(args.profile)
        log(f"\n--- cProfile, {name} training path, {args.n_batches} steps "
            f"(top {args.profile} by own time) ---")
        log("\n".join(line for line in buf.getvalue().splitlines()
                      if line.strip() and "Ordered by" not in line and "List reduced" not in line))
        out[name] = {"calls_per_step": st.total_calls / args.n_batches,
                     "profiled_s_per_step": st.total_tt / args.n_batches}
    return out


def format_table(res: dict) -> str:
    m, a = res["machine"], res["args"]
    lines = [f"machine: {m.get('gpu') or m['cpu']} ({m['cpu_count']} CPUs), device {m['device']}, "
             f"torch {m['torch']}, lightning {m['lightning']}, torch threads "
             f"{m['torch_threads']}, allocator {m['allocator']}, load average "
             f"{m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}"
             if m.get("loadavg_start") else f"machine: {m.get('gpu') or m['cpu']}",
             f"model {a['model']}, batch {a['batch_size']}, precision "
             f"{res['config']['precision']}" + (
                 f", medians of {a['reps']} interleaved reps (train: {a['warmup']} warm-up + "
                 f"{a['n_batches']} timed batches; sampling: {a['steps']} steps); ratio = "
                 f"diffexp / bare (wall clock; cpu ratio: per CPU-second)"
                 if "train" in res or "sampling" in res else ""),
             ""]
    rows = [("measure", "diffexp", "bare", "ratio", "goal", "cpu ratio")]

    def add(label, e, fmt="{:.1f}"):
        verdict = "PASS" if e["pass"] else "FAIL"
        rows.append((label, fmt.format(e["diffexp"]), fmt.format(e["bare"]),
                     f"{e['ratio']:.3f}", f">={e['threshold']:.2f} {verdict}",
                     f"{e['cpu_ratio']:.3f}" if "cpu_ratio" in e else "-"))

    if "train" in res:
        add("train images/s", res["train"])
    if "sampling" in res:
        for nm, e in res["sampling"]["samplers"].items():
            add(f"sample {nm} NFE/s (nfe={e['nfe']}, {e['images_per_s']:.1f} img/s)", e)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    table.insert(1, "-" * len(table[0]))
    if len(rows) > 1:
        lines += table
    if "fid" in res:
        f = res["fid"]
        lines.append("")
        lines.append(f"FID evaluation, {f['n']} samples, {f['sampler']} {f['steps']} steps "
                     f"({f['nfe']} NFE), batch {f['batch_size']}, reference {f['reference_n']}: "
                     f"sampling {f['sample_time_s']:.2f}s ({f['sample_images_per_s']:.1f} img/s), "
                     f"scoring {f['score_time_s']:.2f}s, total {f['total_time_s']:.2f}s "
                     f"(evaluator setup {f['setup_time_s']:.2f}s, reference "
                     f"{'from cache' if f['reference_from_cache'] else 'computed'})")
    mem = res["memory"]
    lines.append("")
    lines.append(f"peak memory ({mem['kind']}), MiB: " + ", ".join(
        f"{k} {v:.0f}" for k, v in mem["peaks"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    res = run(args)
    res["wall_time_s"] = time.perf_counter() - t0
    print()
    print(format_table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=_json_default))
    print(f"\nwall time {res['wall_time_s']:.1f}s; wrote {out}")
    return 0


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    return repr(o)


if __name__ == "__main__":
    sys.exit(main())
