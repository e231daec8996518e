"""Benchmark: the diffexp paths against bare PyTorch doing the same work, on one device.

    python scripts/bench.py [--model unet_tiny|unet_course] [--batch-size 32] [--device auto]
                            [--threads 1] [--reps 5] [--n-batches 3] [--steps 3]
                            [--fid-n 2048] [--fid-nfe 20] [--out bench.json] [--quick]
    make bench ARGS="--model unet_tiny --reps 5"

See docs/PERFORMANCE.md for what is measured, the options and results. This script holds the
benchmark's own logic, one section of code per section below; how things are timed and the bare
PyTorch reference loops live in ``diffexp.benchmarking`` (``timing``, ``bare``).

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
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch

from diffexp.benchmarking.bare import describe_optimizer, time_forward, train_bare
from diffexp.benchmarking.timing import (
    Clock,
    PeakMemory,
    apply_mallopt,
    interleave,
    json_default,
    loadavg,
    machine_info,
    median,
    ratio_entry,
    resolve_device,
    sync,
)

QUICK = {"batch_size": 8, "reps": 2, "warmup": 1, "n_batches": 2, "steps": 2,
         "sample_batches": 1, "fid_n": 32, "fid_nfe": 2, "fid_ref_n": 256}


# ------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    """The options; those left at None take a default that depends on the device or ``--quick``
    (filled in by :func:`parse_args`)."""
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
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options with their device- and ``--quick``-dependent defaults filled in, checked."""
    p = build_parser()
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


# ------------------------------------------------------------------------------------ set-up
class Bench(NamedTuple):
    """What every section works on, set up once before the first repetition. (A NamedTuple, not
    a dataclass: tests load this script by path, without a sys.modules entry, which dataclasses
    with string annotations need.)"""

    args: argparse.Namespace
    c: dict  # the composed training config
    device: torch.device
    data: Any  # the training data, resident on ``device``
    mem: PeakMemory
    samplers: list[str]  # the samplers of (b), checked by name
    module: Any  # the module sampled in (b) and (c); None when neither runs
    log: Callable[[str], None]


def quiet_lightning() -> None:
    """Keep the output to the benchmark's own lines: Lightning's notes say nothing about timings."""
    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; override them below

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a Lightning-internal deprecation
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def record_header(args, c: dict, device: torch.device, allocator: str, log) -> dict:
    """The record's machine, arguments and config, logged before the first timing."""
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
    return result


def prepare(args, c: dict, device: torch.device, log) -> Bench:
    """The data on the device (``sigma_data: auto`` measured as the module would), the samplers
    checked by name before anything is timed, and the module that (b) and (c) sample."""
    from diffexp import sampling
    from diffexp.data import build_data

    data = build_data(c["data"], train=True)
    if c["objective"]["name"] == "karras" and c["objective"]["sigma_data"] == "auto":
        c["objective"]["sigma_data"] = data.measured_std()
    data.to(device)
    mem = PeakMemory(device)
    names = list(sampling.SAMPLERS) if not args.samplers else args.samplers.split(",")
    for nm in names:
        sampling.get_sampler(nm)  # an unknown name fails now, not after minutes of timing
    module = None
    if "sampling" in args.sections or "fid" in args.sections:
        module = sampling_module(c, device, args.ckpt, args.seed)
    return Bench(args, c, device, data, mem, names, module, log)


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
    layout = {"memory_format": "channels_last" if module.channels_last else "contiguous",
              "compile": module._train_forward is not module.net}
    return {"images_per_s": n * t["batch_size"] / wall, "cpu_images_per_s": n * t["batch_size"] / cpu,
            **describe_optimizer(opt), "layout": layout}


def same_optimizer(a: dict, b: dict) -> dict:
    """The record of the optimizer both training paths built; a difference is an error, since
    the two paths would no longer do the same work."""
    same = (a["optimizer"], a["optimizer_defaults"]) == (b["optimizer"], b["optimizer_defaults"])
    if not same:
        raise RuntimeError(f"the bare loop's optimizer differs from the module's: "
                           f"{a['optimizer']} {a['optimizer_defaults']} vs "
                           f"{b['optimizer']} {b['optimizer_defaults']}")
    return {"class": a["optimizer"], "defaults": a["optimizer_defaults"], "same_in_both": same}


def same_layout(a: dict, b: dict) -> dict:
    """The memory format and compile mode both training paths ran the network in; a difference
    is an error (a ratio of unlike layouts measures the layout, not diffexp)."""
    if a["layout"] != b["layout"]:
        raise RuntimeError(f"the bare loop's layout differs from the module's: {b['layout']} vs "
                           f"{a['layout']}")
    return dict(a["layout"])


class TrainSection:
    """(a) training images/s: ``train_diffexp`` against ``train_bare``, one pair a repetition."""

    name = "train"

    def __init__(self, bench: Bench):
        self.bench = bench
        self.rates: dict[str, list[float]] = {"diffexp": [], "bare": [], "cpu_diffexp": [],
                                              "cpu_bare": []}
        self.optimizer: dict | None = None
        self.layout: dict | None = None

    def rep(self, r: int, flip: bool) -> None:
        bench, args = self.bench, self.bench.args
        targs = (bench.c, bench.data, bench.device, args.warmup, args.n_batches, args.seed + r)
        mine, bare = interleave(partial(bench.mem.run, "train_diffexp", train_diffexp, *targs),
                                partial(bench.mem.run, "train_bare", train_bare, *targs), flip)
        for path, res in (("diffexp", mine), ("bare", bare)):
            self.rates[path].append(res["images_per_s"])
            self.rates[f"cpu_{path}"].append(res["cpu_images_per_s"])
        self.optimizer = same_optimizer(mine, bare)
        self.layout = same_layout(mine, bare)
        bench.log(f"  rep {r + 1}/{args.reps} train: diffexp {mine['images_per_s']:.1f} img/s, "
              f"bare {bare['images_per_s']:.1f} img/s")

    def result(self) -> dict:
        w, args = self.rates, self.bench.args
        return {**ratio_entry(w["diffexp"], w["bare"], "images/s", w["cpu_diffexp"], w["cpu_bare"]),
                "warmup_batches": args.warmup, "timed_batches": args.n_batches,
                "optimizer": self.optimizer, "layout": self.layout}


# ------------------------------------------------------------------------------------ (b) sampling
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
    """``n`` images from sampler ``name`` through ``sampling.sample`` with the module's EMA
    denoiser, in batches of ``bs``: images/s, NFE/s (wall and CPU) and the NFE counted."""
    from diffexp import sampling

    den = module.denoiser(use_ema=True)
    clock = Clock(device)
    with torch.no_grad(), module._autocast():
        res = sampling.sample(den, module.schedule, n=n, shape=module.image_shape, seed=seed,
                              sampler=name, steps=steps, batch_size=bs, device=device)
    wall, cpu = clock.elapsed()
    return {"images_per_s": n / wall, "nfe_per_s": n * res.nfe / wall,
            "cpu_nfe_per_s": n * res.nfe / cpu, "nfe": res.nfe}


class SamplingSection:
    """(b) every sampler's NFE/s through ``sampling.sample`` against as many bare forward passes
    of the same network (the ideal), one pair per sampler and repetition."""

    name = "sampling"

    def __init__(self, bench: Bench):
        from diffexp import sampling

        self.bench = bench
        args = bench.args
        self.n = args.batch_size * args.sample_batches
        self.nfe = {nm: sampling.nfe(nm, args.steps) for nm in bench.samplers}
        self.rates: dict[str, dict[str, list[float]]] = {nm: {
            "diffexp": [], "bare": [], "cpu_diffexp": [], "cpu_bare": [], "images_per_s": []}
            for nm in bench.samplers}
        # untimed warm-up before the first repetition: every sampler once, and the network
        bs, module, device = args.batch_size, bench.module, bench.device
        for nm in bench.samplers:
            time_sampler(module, nm, 1, bs, bs, device, args.seed)
        time_forward(module, 2, bs, device, args.seed)

    def rep(self, r: int, flip: bool) -> None:
        bench, args = self.bench, self.bench.args
        line = []
        for nm in bench.samplers:
            s, f = interleave(
                partial(bench.mem.run, "sampling_diffexp", time_sampler, bench.module, nm,
                        args.steps, self.n, args.batch_size, bench.device, args.seed + r),
                partial(bench.mem.run, "sampling_bare_forward", time_forward, bench.module,
                        self.nfe[nm] * args.sample_batches, args.batch_size, bench.device,
                        args.seed + r), flip)
            # the bare side ran the expected count: another count would compare unlike work
            if s["nfe"] != self.nfe[nm]:
                raise RuntimeError(f"{nm}: measured NFE {s['nfe']} != {self.nfe[nm]}")
            w = self.rates[nm]
            w["diffexp"].append(s["nfe_per_s"])
            w["bare"].append(f["nfe_per_s"])
            w["cpu_diffexp"].append(s["cpu_nfe_per_s"])
            w["cpu_bare"].append(f["cpu_nfe_per_s"])
            w["images_per_s"].append(s["images_per_s"])
            line.append(f"{nm} {s['nfe_per_s'] / f['nfe_per_s']:.2f}")
        bench.log(f"  rep {r + 1}/{args.reps} sampling NFE/s ratio: " + ", ".join(line))

    def result(self) -> dict:
        args = self.bench.args
        out = {"steps": args.steps, "batch_size": args.batch_size, "n": self.n, "samplers": {}}
        for nm, w in self.rates.items():
            e = ratio_entry(w["diffexp"], w["bare"], "NFE/s", w["cpu_diffexp"], w["cpu_bare"])
            e.update({"nfe": self.nfe[nm], "images_per_s": median(w["images_per_s"]),
                      "images_per_s_reps": w["images_per_s"]})
            out["samplers"][nm] = e
        return out


# ------------------------------------------------------------------------------------ (c) fid
def fid_steps(name: str, target_nfe: int) -> int:
    """The largest step count whose NFE does not exceed ``target_nfe`` (at least 1)."""
    from diffexp import sampling

    steps = 1
    while sampling.nfe(name, steps + 1) <= target_nfe:
        steps += 1
    return steps


def run_fid(args, c: dict, module, device: torch.device, mem: PeakMemory, log) -> dict:
    """(c) one FID evaluation per ``--fid-reps``: generation and scoring timed apart, after the
    evaluator's one-off set-up (reference features, cached after the first run)."""
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


# ---------------------------------------------------------------------------- (d) memory, profile
def memory_record(mem: PeakMemory) -> dict:
    """(d) the peak memory of each path, taken while (a), (b) and (c) ran."""
    return {"kind": mem.kind, "unit": "MiB", "peaks": mem.peaks}


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


# ------------------------------------------------------------------------------------ main run
def run(args, log=print) -> dict:
    """The sections in order: (a) and (b) interleaved repetition by repetition, the optional
    profile, (c), then (d) from what the others recorded."""
    quiet_lightning()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    allocator = apply_mallopt() if args.mallopt else "default"
    device = resolve_device(args.device)
    c = build_config(args, device)
    result = record_header(args, c, device, allocator, log)
    bench = prepare(args, c, device, log)

    interleaved = [s(bench) for s in (TrainSection, SamplingSection) if s.name in args.sections]
    t_start = time.perf_counter()
    for r in range(args.reps):
        flip = r % 2 == 1  # A, B in even repetitions, B, A in odd ones: no fixed order bias
        for section in interleaved:
            section.rep(r, flip)
    for section in interleaved:
        result[section.name] = section.result()
    result["interleaved_time_s"] = time.perf_counter() - t_start

    if args.profile and "train" in args.sections:
        result["profile"] = profile_training(c, bench.data, device, args, log)
    if "fid" in args.sections:
        result["fid"] = run_fid(args, c, bench.module, device, bench.mem, log)
    result["memory"] = memory_record(bench.mem)
    result["machine"]["loadavg_end"] = loadavg()
    return result


# ------------------------------------------------------------------------------------ output
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
    out.write_text(json.dumps(res, indent=2, default=json_default))
    print(f"\nwall time {res['wall_time_s']:.1f}s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
