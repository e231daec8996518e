"""GPU readiness check: one command that, in a short GPU window, runs every GPU-only check and
measures what the project needs to plan GPU work.

    python scripts/gpu_check.py [--out runs/gpu_check/gpu_check.json]     (= make gpu-check)
    python scripts/gpu_check.py --dry-run          (= make gpu-check ARGS=--dry-run; CPU-sized)

Steps, in order, each in its own process with its own time budget (``--budget STEP=SECONDS``), so
that a crash, a hang or a poisoned CUDA context in one step does not stop the others:

``flops``        analytic FLOPs per image of the course UNet (conv, linear and attention
                 multiply-adds counted by forward hooks, cross-checked against
                 ``torch.utils.flop_counter``); the training cost is 3x the forward.
``gpu_tests``    ``pytest -m gpu tests/test_gpu.py``: bf16-mixed training steps with fused Adam per
                 objective, channels_last on and off, model.compile against eager, per-sample noise
                 and samplers on the GPU against the CPU, a GPU checkpoint sampled on the CPU, no
                 host syncs in steady-state training steps.
``train_course`` ``experiment=course_cosine`` trained for a fixed number of steps after a warm-up
                 (scripts/bench.py's timed ``Trainer.fit``): images/s, seconds per epoch, the
                 projected time of the whole recipe, peak memory, model FLOPs utilisation (MFU).
``fid``          a 2,048-sample FID evaluation at 20 NFE (scripts/bench.py's ``run_fid``),
                 sampling and scoring timed separately.
``bench``        ``scripts/bench.py --device cuda`` with unet_course at batch 512: the diffexp /
                 bare-PyTorch ratios.

Each step prints ``[gpu-check] STEP: ok (Xs)``, ``[gpu-check] STEP: FAILED: <one line>`` or
``[gpu-check] STEP: skipped: <why>``; the exit status is 1 when any step failed (they are named on
the last line). Results go to one JSON (``--out``, rewritten after every step, so a run cut short
keeps what it measured) and a markdown block ``docs/gpu_check/<device-slug>.md`` (one file per
card; the list in docs/PERFORMANCE.md is kept in step with that folder).

``--dry-run`` runs, on the CPU and at tiny sizes, every step that does not need CUDA (the FLOP
count, the course recipe composed and validated, two training steps of a tiny model, a tiny FID;
the GPU tests are only collected) and skips the others; its markdown goes beside the JSON, not
into docs/. Nothing is downloaded: Fashion-MNIST comes from ``--data-root`` / DIFFEXP_DATA_ROOT
(when it is missing, training throughput is measured on synthetic images of the same shape and
the FID step fails with one line saying where to put the files).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DEFAULT_OUT = REPO / "runs" / "gpu_check" / "gpu_check.json"
DOCS_MD_DIR = REPO / "docs" / "gpu_check"
PERFORMANCE_MD = REPO / "docs" / "PERFORMANCE.md"
LINKS_BEGIN = "<!-- gpu-check-files: maintained by scripts/gpu_check.py -->"
LINKS_END = "<!-- /gpu-check-files -->"

# (name, seconds, needs CUDA). The budgets add up to 8 minutes: a step that runs over is killed
# and reported, and the next one starts, so the whole check fits a 10-minute command limit.
STEPS = (
    ("flops", 60, False),
    ("gpu_tests", 180, True),
    ("train_course", 75, False),
    ("fid", 75, False),
    ("bench", 90, True),
)
STEP_NAMES = tuple(s[0] for s in STEPS)

#: bf16 dense (no sparsity) tensor-core peak in TFLOP/s from the vendors' data sheets, matched
#: against torch.cuda.get_device_name(); the first match wins, so variants come before the family
BF16_PEAK_TFLOPS = (
    (r"\bGH200\b", 989.0, "GH200 (H100/H200 SXM class)"),
    (r"\bH200\b.*\bNVL\b", 835.0, "H200 NVL"),
    (r"\bH200\b", 989.0, "H200 SXM"),
    (r"\bH100\b.*\bNVL\b", 835.0, "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe"),
    (r"\bH100\b", 989.0, "H100 SXM"),
    (r"\bA100\b", 312.0, "A100"),
    (r"\bL40S\b", 362.0, "L40S"),
    (r"\bL40\b", 181.0, "L40"),
    (r"\bL4\b", 121.0, "L4"),
    (r"\bA10\b", 125.0, "A10"),
)

TINY_MODEL = ["model.widths=[16,32]", "model.blocks=1", "model.attn_levels=[1]", "model.head_dim=16"]


# ------------------------------------------------------------------------------------ pure helpers
def bf16_peak(device_name: str) -> tuple[float | None, str | None]:
    """(TFLOP/s, matched card) of a device name, or (None, None) for a card not in the table."""
    for pattern, tflops, label in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops, label
    return None, None


def device_slug(name: str) -> str:
    """A file name for a device: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def mfu(train_flops_per_image: float, images_per_s: float, device_name: str) -> dict:
    """Model FLOPs utilisation: achieved model FLOP/s over the card's bf16 dense peak."""
    peak, card = bf16_peak(device_name)
    if peak is None:
        return {"mfu": None, "peak_tflops": None,
                "mfu_note": f"no bf16 dense peak known for {device_name!r}: MFU not computed "
                        f"(add the card to BF16_PEAK_TFLOPS in scripts/gpu_check.py)"}
    achieved = train_flops_per_image * images_per_s
    return {"mfu": achieved / (peak * 1e12), "peak_tflops": peak, "peak_card": card,
            "achieved_tflops": achieved / 1e12}


def sample_grid_epochs(epochs: int, every: int) -> int:
    """How many sample grids a run writes (every ``every`` epochs and after the last one)."""
    return sum(1 for e in range(1, epochs + 1) if (every and e % every == 0) or e == epochs)


def project_recipe(images_per_s: float, n_train: int, batch_size: int, epochs: int,
                   grid_s: float, n_grids: int) -> dict:
    """Seconds per epoch (full batches only, as IndexBatches drops the last partial one) and the
    projected training time of the whole recipe, sample grids included."""
    steps = n_train // batch_size
    epoch_s = steps * batch_size / images_per_s
    return {"steps_per_epoch": steps, "seconds_per_step": batch_size / images_per_s,
            "seconds_per_epoch": epoch_s, "epochs": epochs, "sample_grids": n_grids,
            "sample_grid_s": grid_s, "projected_total_s": epochs * epoch_s + n_grids * grid_s}


# ------------------------------------------------------------------------------------ FLOP counter
class MacCounter:
    """Multiply-accumulates (MACs) of forward passes, per layer kind, counted by forward hooks.

    conv: output elements x (input channels / groups) x kernel size (transposed: per input
    element); linear: output elements x input features; attention (diffexp's SelfAttention, whose
    ``F.scaled_dot_product_attention`` call no module hook sees): q k^T and attn v, each
    batch x heads x L x L x head_dim for L = h w. The 1x1 q/k/v and output projections are convs
    and counted as such. Biases, norms, activations, softmax and resampling are not counted: they
    are elementwise, a fraction of a percent of the total here. One FLOP = half a MAC."""

    def __init__(self, net):
        self.net = net
        self.macs: dict[str, int] = {"conv": 0, "linear": 0, "attention": 0}
        self._handles: list = []

    def _conv(self, m, inputs, out):
        k = math.prod(m.kernel_size)
        if m.transposed:
            self.macs["conv"] += inputs[0].numel() * (m.out_channels // m.groups) * k
        else:
            self.macs["conv"] += out.numel() * (m.in_channels // m.groups) * k

    def _linear(self, m, inputs, out):
        self.macs["linear"] += out.numel() * m.in_features

    def _attention(self, m, inputs, out):
        b, c, h, w = inputs[0].shape
        length = h * w
        self.macs["attention"] += 2 * b * m.heads * (c // m.heads) * length * length

    def __enter__(self) -> MacCounter:
        from torch import nn

        from diffexp.models.unet import SelfAttention

        for mod in self.net.modules():
            if isinstance(mod, nn.modules.conv._ConvNd):
                self._handles.append(mod.register_forward_hook(self._conv))
            elif isinstance(mod, nn.Linear):
                self._handles.append(mod.register_forward_hook(self._linear))
            elif isinstance(mod, SelfAttention):
                self._handles.append(mod.register_forward_hook(self._attention))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def total(self) -> int:
        return sum(self.macs.values())


def unet_flops(model_cfg: dict, image_shape=(1, 32, 32), conditioned: bool = True,
               crosscheck: bool = True) -> dict:
    """FLOPs per image of the UNet of ``model_cfg`` (one image, on the CPU): forward, and training
    (forward + backward = 3x forward: the backward pass computes the gradients of both the
    activations and the weights, each as costly as the forward). With ``crosscheck`` the count is
    compared with torch.utils.flop_counter, an independent count of the same forward pass."""
    import torch

    from diffexp.build import build_network

    net = build_network(model_cfg, conditioned=conditioned).eval()
    x = torch.randn(1, *image_shape)
    cond = torch.rand(1) if conditioned else None
    with torch.no_grad(), MacCounter(net) as counter:
        net(x, cond)
    out = {"model": model_cfg.get("name"), "parameters": sum(p.numel() for p in net.parameters()),
           "image_shape": list(image_shape), "forward_macs_per_image": counter.total,
           "forward_macs_by_kind": dict(counter.macs),
           "forward_flops_per_image": 2 * counter.total,
           "train_flops_per_image": 3 * 2 * counter.total}
    if crosscheck:
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        with torch.no_grad(), fc:
            net(x, cond)
        theirs = int(fc.get_total_flops())
        out["torch_flop_counter_forward_flops"] = theirs
        if theirs != 2 * counter.total:
            raise RuntimeError(f"the hook FLOP count ({2 * counter.total}) differs from "
                               f"torch.utils.flop_counter's ({theirs})")
    return out


# ------------------------------------------------------------------------------------ arguments
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU-sized: run the steps that do not need CUDA at tiny sizes, skip the rest")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--md-dir", default=None,
                   help="folder of the markdown block (default docs/gpu_check; with --dry-run the "
                        "--out folder)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(STEP_NAMES)}")
    p.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                   help="change one step's time budget (repeatable)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST root (else DIFFEXP_DATA_ROOT)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-warmup", type=int, default=None,
                   help="untimed training batches (default 10; --dry-run 1)")
    p.add_argument("--train-batches", type=int, default=None,
                   help="timed training batches (default 40; --dry-run 2)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of the course recipe in train_course (repeatable), "
                        "e.g. --train-set model.compile=true")
    p.add_argument("--fid-n", type=int, default=None, help="FID samples (default 2048; --dry-run 32)")
    p.add_argument("--quiet", action="store_true", help="do not echo the steps' own output")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step
    p.add_argument("--step-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    for key, full, tiny in (("train_warmup", 10, 1), ("train_batches", 40, 2), ("fid_n", 2048, 32)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if dry else full)
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1 (got {getattr(args, key)})")
    if args.fid_n < 2:
        p.error("--fid-n must be >= 2")
    args.only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    bad = sorted(set(args.only or []) - set(STEP_NAMES))
    if bad:
        p.error(f"--only: unknown step(s) {bad}; steps are {', '.join(STEP_NAMES)}")
    args.budgets = {name: float(b) for name, b, _ in STEPS}
    for item in args.budget:
        name, _, sec = item.partition("=")
        if name not in args.budgets:
            p.error(f"--budget {item}: unknown step {name!r}; steps are {', '.join(STEP_NAMES)}")
        try:
            args.budgets[name] = float(sec)
        except ValueError:
            p.error(f"--budget {item}: seconds must be a number")
        if args.budgets[name] <= 0:
            p.error(f"--budget {item}: seconds must be > 0")
    if args.md_dir is None:
        args.md_dir = str(Path(args.out).parent if dry else DOCS_MD_DIR)
    return args


# ------------------------------------------------------------------------------------ the steps
class Skipped(Exception):
    """A step that has nothing to do on this machine (its message says why)."""


class StepFailed(Exception):
    """A failure that still has results to keep."""

    def __init__(self, line: str, result: dict):
        super().__init__(line)
        self.result = result


def _ensure_importable() -> None:
    """Run from a checkout without ``pip install -e .`` too (a GPU machine without network)."""
    try:
        import diffexp  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))


def _quiet_lightning() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def compose_config(overrides: list[str]) -> dict:
    """A validated training config composed through the real Hydra tree, as train.py does."""
    from hydra import compose, initialize_config_dir

    from diffexp.config import CONF_DIR, validate_train_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate_train_config(compose("train", overrides=list(overrides)))


def _device(args):
    import torch

    if args.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is visible in this step's process")
    return torch.device("cuda")


def _device_name(device) -> str:
    import torch

    from diffexp.runs.record import cpu_model

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_model()})"


def _have_fashion_mnist(root) -> bool:
    from diffexp.data import RAW_FILES, resolve_root

    raw = resolve_root(root) / "FashionMNIST" / "raw"
    return all((raw / f).exists() or (raw / (f + ".gz")).exists() for f in RAW_FILES)


def _missing_data_line(root) -> str:
    from diffexp.data import resolve_root

    return (f"Fashion-MNIST not found under {resolve_root(root) / 'FashionMNIST' / 'raw'} (nothing "
            f"is downloaded during the check): set DIFFEXP_DATA_ROOT or --data-root to a folder "
            f"holding FashionMNIST/raw with its four IDX files")


def step_flops(args, outdir: Path) -> dict:
    course = compose_config(["experiment=course_cosine", "logger=none"])
    res = unet_flops(course["model"], image_shape=_image_shape(course))
    print(f"unet_course: {res['parameters']:,} parameters, forward {res['forward_flops_per_image']:,} "
          f"FLOPs per image, training {res['train_flops_per_image']:,}")
    return res


def _image_shape(c: dict) -> tuple[int, int, int]:
    pad = int(c["data"]["pad"])
    return (1, 28 + 2 * pad, 28 + 2 * pad)


def step_gpu_tests(args, outdir: Path) -> dict:
    import xml.etree.ElementTree as ET

    base = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py",
            "-p", "no:cacheprovider"]
    if args.dry_run:  # no CUDA: the tests would all skip; collecting them proves they import
        proc = subprocess.run([*base, "--collect-only"], cwd=REPO, capture_output=True, text=True)
        print(proc.stdout[-3000:] + proc.stderr[-2000:])
        ids = [ln for ln in proc.stdout.splitlines() if "::" in ln]
        if proc.returncode != 0 or not ids:
            raise RuntimeError(f"collecting tests/test_gpu.py failed (pytest exit "
                               f"{proc.returncode})")
        import torch

        why = "--dry-run" if torch.cuda.is_available() else "no CUDA"
        raise Skipped(f"{why} ({len(ids)} gpu tests collected)")
    xml_path = outdir / "gpu_tests.xml"
    proc = subprocess.run([*base, "-rfE", f"--junitxml={xml_path}"], cwd=REPO)
    if not xml_path.is_file():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report")
    suites = ET.parse(xml_path).getroot()
    cases = list(suites.iter("testcase"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None
              or c.find("error") is not None]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    res = {"tests": len(cases), "passed": len(cases) - len(failed) - len(skipped),
           "failed": failed, "skipped": skipped, "pytest_exit": proc.returncode,
           "report": str(xml_path)}
    if failed:
        raise StepFailed(f"{len(failed)} of {len(cases)} gpu tests failed: {', '.join(failed)}", res)
    if skipped:  # on a CUDA machine nothing should skip: a skip hides a check
        raise StepFailed(f"{len(skipped)} gpu tests skipped on a CUDA machine: {', '.join(skipped)}",
                         res)
    if proc.returncode != 0 or not cases:
        raise StepFailed(f"pytest exited {proc.returncode} with {len(cases)} tests", res)
    return res


def _train_overrides(args, device) -> tuple[list[str], str | None]:
    """The overrides of the measured run, and a note when the data had to be replaced."""
    acc = "gpu" if device.type == "cuda" else "cpu"
    base = ["experiment=course_cosine", "logger=none", "data.download=false",
            f"trainer.accelerator={acc}", f"seed={args.seed}"]
    if args.data_root:
        base.append(f"data.root={args.data_root}")
    if args.dry_run:  # the recipe's code path with a tiny model, data and sampler
        return [*base, "data=synthetic", *TINY_MODEL, "train.batch_size=8",
                "train.n_sample_images=4", "sampler.steps=2", *args.train_set], \
            "dry run: a tiny model on synthetic data on the CPU; the numbers mean nothing"
    if _have_fashion_mnist(args.data_root):
        return [*base, *args.train_set], None
    # throughput does not depend on the pixels: keep the shape and size of the real split
    return [*base, "data=synthetic", "data.subset=60000", "data.val_size=2000", *args.train_set], \
        f"{_missing_data_line(args.data_root)}; timed on 60,000 synthetic images of the same shape"


def step_train_course(args, outdir: Path) -> dict:
    import bench
    import torch

    from diffexp.benchmarking.timing import PeakMemory, sync
    from diffexp.data import build_data

    _quiet_lightning()
    device = _device(args)
    recipe = compose_config(["experiment=course_cosine", "logger=none", *args.train_set])
    r = {"recipe": {"name": recipe["name"], "model": recipe["model"],
                    "batch_size": recipe["train"]["batch_size"], "epochs": recipe["train"]["epochs"],
                    "optim": recipe["optim"], "precision": recipe["trainer"]["precision"],
                    "sampler": recipe["sampler"], "sample_every_n_epochs":
                        recipe["train"]["sample_every_n_epochs"],
                    "n_sample_images": recipe["train"]["n_sample_images"]}}
    print(f"experiment=course_cosine composes and validates: model {recipe['model']['name']}, "
          f"batch {recipe['train']['batch_size']}, {recipe['train']['epochs']} epochs")
    overrides, note = _train_overrides(args, device)
    if note:
        print(f"note: {note}")
    c = compose_config(overrides)
    if c["trainer"]["precision"] == "auto":
        c["trainer"]["precision"] = "bf16-mixed" if device.type == "cuda" else "32-true"
    data = build_data(c["data"], train=True)
    data.to(device)
    t = c["train"]
    mem = PeakMemory(device)
    with mem.track("train"):
        timed = bench.train_diffexp(c, data, device, args.train_warmup, args.train_batches,
                                    args.seed)
    ips = timed["images_per_s"]
    # the sample grids the recipe writes (random weights: the time does not depend on them)
    module = bench.sampling_module(c, device, None, args.seed)
    module.generate(min(8, t["n_sample_images"]), seed=args.seed,
                    sampler_cfg={**c["sampler"], "steps": 1})  # warm-up: first-call set-up
    sync(device)
    t0 = time.perf_counter()
    module.generate(t["n_sample_images"], seed=args.seed)
    sync(device)
    grid_s = time.perf_counter() - t0
    proj = project_recipe(ips, len(data.train_index), t["batch_size"], t["epochs"], grid_s,
                          sample_grid_epochs(t["epochs"], t["sample_every_n_epochs"]))
    flops = unet_flops(c["model"], image_shape=_image_shape(c), crosscheck=False)
    name = _device_name(device)
    util = mfu(flops["train_flops_per_image"], ips, name)
    r.update({"device": name, "note": note, "precision": c["trainer"]["precision"],
              "model": c["model"], "data": c["data"]["name"], "n_train": len(data.train_index),
              "batch_size": t["batch_size"], "warmup_batches": args.train_warmup,
              "timed_batches": args.train_batches, "images_per_s": ips,
              "optimizer": timed["optimizer"], "optimizer_defaults": timed["optimizer_defaults"],
              **proj, "peak_memory_mib": mem.peaks["train"], "peak_memory_kind": mem.kind,
              "train_flops_per_image": flops["train_flops_per_image"], **util,
              "excluded_from_projection": "validation (2,000 images, forward only, per epoch), "
                                          "checkpoint writes, process and Trainer start-up"})
    if device.type == "cuda":
        r["cuda_max_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    mfu_txt = f"{util['mfu']:.1%}" if util["mfu"] is not None else "null"
    print(f"{ips:,.0f} images/s, {proj['seconds_per_epoch']:.1f} s/epoch "
          f"({proj['steps_per_epoch']} steps), projected {t['epochs']} epochs "
          f"{proj['projected_total_s'] / 60:.1f} min, peak memory {mem.peaks['train']:,.0f} MiB, "
          f"MFU {mfu_txt}")
    return r


def step_fid(args, outdir: Path) -> dict:
    import bench

    from diffexp.benchmarking.timing import PeakMemory

    device = _device(args)
    if not _have_fashion_mnist(args.data_root):
        raise RuntimeError(_missing_data_line(args.data_root))
    if args.dry_run:
        bargs = ["--model", "unet_tiny", "--device", "cpu", "--batch-size", "16",
                 "--fid-nfe", "2", "--fid-ref-n", "256",
                 *[x for o in TINY_MODEL for x in ("--set", o)]]
    else:
        bargs = ["--model", "unet_course", "--device", "cuda", "--batch-size", "512",
                 "--fid-nfe", "20", "--set", "experiment=course_cosine"]
    bargs += ["--fid-n", str(args.fid_n), "--seed", str(args.seed), "--threads", "0"]
    if args.data_root:
        bargs += ["--data-root", args.data_root]
    ns = bench.parse_args(bargs)
    c = bench.build_config(ns, device)
    module = bench.sampling_module(c, device, None, args.seed)
    mem = PeakMemory(device)
    r = bench.run_fid(ns, c, module, device, mem, log=print)
    r.update({"device": _device_name(device), "model": c["model"]["name"],
              "precision": c["trainer"]["precision"], "peak_memory_mib": mem.peaks.get("fid"),
              "peak_memory_kind": mem.kind,
              "note": "random weights: the FID value means nothing, the times do"})
    print(f"FID at n={r['n']}, {r['nfe']} NFE: sampling {r['sample_time_s']:.2f}s, scoring "
          f"{r['score_time_s']:.2f}s (evaluator setup {r['setup_time_s']:.2f}s)")
    return r


def step_bench(args, outdir: Path) -> dict:
    import bench

    from diffexp.benchmarking.timing import THRESHOLD

    if args.dry_run:
        raise Skipped("no CUDA")
    out = outdir / "bench.json"
    bargs = ["--device", "cuda", "--model", "unet_course", "--batch-size", "512", "--threads", "4",
             "--sections", "train,sampling", "--warmup", "3", "--n-batches", "10",
             "--seed", str(args.seed), "--out", str(out)]
    if args.data_root:
        bargs += ["--data-root", args.data_root]
    if not _have_fashion_mnist(args.data_root):  # bench would try to download it
        bargs += ["--set", "data=synthetic", "--set", "data.subset=60000"]
    bench.main(bargs)
    res = json.loads(out.read_text())
    ratios = {"train": res["train"]["ratio"]}
    ratios.update({f"sample {k}": v["ratio"] for k, v in res["sampling"]["samplers"].items()})
    below = [k for k, v in ratios.items() if v < THRESHOLD]
    return {"json": str(out), "ratios": ratios, "threshold": THRESHOLD,
            "below_threshold": below, "train_images_per_s": {
                "diffexp": res["train"]["diffexp"], "bare": res["train"]["bare"]},
            "memory_peaks_mib": res["memory"]["peaks"]}


STEP_FUNCS = {"flops": step_flops, "gpu_tests": step_gpu_tests, "train_course": step_train_course,
              "fid": step_fid, "bench": step_bench}


def run_step_child(args) -> int:
    """Run one step in this process and write its outcome to ``--step-out``."""
    _ensure_importable()
    if args.dry_run:
        import torch

        # the dry run's CPU work is tiny: on a shared machine one thread is many times faster than
        # threads that wait for each other (see docs/PERFORMANCE.md, --threads)
        torch.set_num_threads(1)
    outdir = Path(args.out).parent
    outdir.mkdir(parents=True, exist_ok=True)
    rec: dict = {"status": "ok"}
    try:
        rec["result"] = STEP_FUNCS[args.step](args, outdir)
    except Skipped as e:
        rec = {"status": "skipped", "reason": str(e)}
    except StepFailed as e:
        rec = {"status": "failed", "error": str(e), "result": e.result}
    except BaseException as e:  # noqa: BLE001 - everything a step raises is reported as its failure
        traceback.print_exc()
        rec = {"status": "failed", "error": one_line(e)}
    Path(args.step_out).write_text(json.dumps(rec, indent=2, default=_json_default))
    return 0 if rec["status"] != "failed" else 1


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _json_default(o):
    return str(o)  # devices, dtypes, paths: their printed form


# ------------------------------------------------------------------------------------ the parent
def run_isolated(name: str, argv: list[str], budget: float, log_path: Path, echo: bool) -> dict:
    """Run step ``name`` in a child process (its own session, so a budget overrun kills its whole
    process group, pytest and compile workers included); return its record."""
    res_path = log_path.with_suffix(".result.json")
    res_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--step", name,
           "--step-out", str(res_path)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                if echo:
                    sys.stdout.write("    | " + line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        reader.join(timeout=10)
    seconds = time.perf_counter() - t0
    if timed_out:
        return {"status": "failed", "seconds": seconds,
                "error": f"exceeded its {budget:g}s budget and was stopped (log: {log_path})"}
    if not res_path.is_file():
        return {"status": "failed", "seconds": seconds,
                "error": f"the step's process exited with status {proc.returncode} before "
                         f"reporting: {_last_line(log_path)} (log: {log_path})"}
    rec = json.loads(res_path.read_text())
    res_path.unlink()
    rec["seconds"] = seconds
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def machine_info() -> dict:
    import torch

    from diffexp.runs.record import cpu_model

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "platform": platform.platform()}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["lightning"] = version("pytorch-lightning")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        name = torch.cuda.get_device_name(0)
        peak, card = bf16_peak(name)
        info.update({"device_name": name, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(),
                     "gpu_memory_gib": props.total_memory / 2**30,
                     "multiprocessors": props.multi_processor_count,
                     "bf16_supported": torch.cuda.is_bf16_supported(),
                     "bf16_peak_tflops": peak, "bf16_peak_card": card})
    else:
        info["device_name"] = f"CPU ({info['cpu']})"
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                            capture_output=True, text=True).stdout.strip() or None
    return info


def run_all(args, argv: list[str]) -> int:
    t_start = time.perf_counter()
    _ensure_importable()
    info = machine_info()
    if not args.dry_run and not info["cuda_available"]:
        print("error: no CUDA GPU is visible; `--dry-run` (make gpu-check ARGS=--dry-run) runs the "
              "CPU-sized check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.parent / "gpu_check_logs"
    logs.mkdir(exist_ok=True)
    res = {"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "dry_run": args.dry_run, "command": " ".join(["scripts/gpu_check.py", *argv]),
           "machine": info, "steps": {}}
    print(f"[gpu-check] {'dry run on ' if args.dry_run else ''}{info['device_name']}; torch "
          f"{info['torch']}, CUDA {info.get('cuda') or '-'}, python {info['python']}, "
          f"{info['cpu_count']} CPUs")
    for name, _, needs_cuda in STEPS:
        if args.only and name not in args.only:
            continue
        budget = args.budgets[name]
        if needs_cuda and args.dry_run and name != "gpu_tests":  # gpu_tests still collects
            rec = {"status": "skipped", "reason": "no CUDA" if not info["cuda_available"]
                   else "--dry-run", "seconds": 0.0}
        else:
            print(f"[gpu-check] {name}: running (budget {budget:g}s)", flush=True)
            rec = run_isolated(name, argv, budget, logs / f"{name}.log", echo=not args.quiet)
        rec["budget_s"] = budget
        res["steps"][name] = rec
        print(status_line(name, rec), flush=True)
        summary = step_summary(name, rec)
        if summary:
            print(f"[gpu-check]     {summary}", flush=True)
        res["wall_time_s"] = time.perf_counter() - t_start
        write_json(out, res)  # after every step: a run cut short keeps what it measured
    failed = [n for n, r in res["steps"].items() if r["status"] == "failed"]
    res["failed"] = failed
    res["wall_time_s"] = time.perf_counter() - t_start
    md_dir = Path(args.md_dir)
    md_dir.mkdir(parents=True, exist_ok=True)
    md_path = md_dir / f"{device_slug(info['device_name'])}.md"
    res["markdown"] = str(md_path)
    write_json(out, res)
    md_path.write_text(markdown_report(res))
    if md_dir.resolve() == DOCS_MD_DIR.resolve() and PERFORMANCE_MD.is_file():
        update_link_list(PERFORMANCE_MD, DOCS_MD_DIR)
    n = {s: sum(r["status"] == s for r in res["steps"].values()) for s in ("ok", "skipped",
                                                                           "failed")}
    print(f"[gpu-check] done in {res['wall_time_s']:.1f}s: {n['ok']} ok, {n['skipped']} skipped, "
          f"{n['failed']} failed; wrote {out} and {md_path}")
    if failed:
        print(f"[gpu-check] FAILED steps: {', '.join(failed)}")
        return 1
    return 0


def status_line(name: str, rec: dict) -> str:
    if rec["status"] == "ok":
        return f"[gpu-check] {name}: ok ({rec['seconds']:.1f}s)"
    if rec["status"] == "skipped":
        return f"[gpu-check] {name}: skipped: {rec['reason']}"
    return f"[gpu-check] {name}: FAILED: {rec['error']}"


def step_summary(name: str, rec: dict) -> str | None:
    """The step's headline numbers in one line (None when it has none)."""
    r = rec.get("result")
    if rec["status"] != "ok" or not r:
        return None
    if name == "flops":
        return (f"{r['model']}: forward {r['forward_flops_per_image'] / 1e9:.3f} GFLOP/image, "
                f"training {r['train_flops_per_image'] / 1e9:.3f} GFLOP/image")
    if name == "gpu_tests":
        return f"{r['passed']} of {r['tests']} passed"
    if name == "train_course":
        m = f"{r['mfu']:.1%}" if r["mfu"] is not None else "null"
        return (f"{r['images_per_s']:,.0f} images/s, {r['seconds_per_epoch']:.1f} s/epoch, "
                f"{r['epochs']} epochs ~ {r['projected_total_s'] / 60:.1f} min, peak "
                f"{r['peak_memory_mib']:,.0f} MiB, MFU {m}")
    if name == "fid":
        return (f"n={r['n']}, {r['nfe']} NFE: sampling {r['sample_time_s']:.2f}s, scoring "
                f"{r['score_time_s']:.2f}s")
    if name == "bench":
        return (f"ratios {min(r['ratios'].values()):.3f} to {max(r['ratios'].values()):.3f}; "
                f"below {r['threshold']}: {', '.join(r['below_threshold']) or 'none'}")
    return None


def write_json(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2, default=_json_default))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ markdown
def markdown_report(res: dict) -> str:
    m = res["machine"]
    lines = [f"# GPU check: {m['device_name']}", "",
             f"{'Dry run (CPU-sized; the numbers mean nothing). ' if res['dry_run'] else ''}"
             f"`{res['command']}` on {res['started']}, git {m.get('git_commit') or '?'}: torch "
             f"{m['torch']}, CUDA {m.get('cuda') or '-'}, cuDNN {m.get('cudnn') or '-'}, Lightning "
             f"{m.get('lightning') or '?'}, Python {m['python']}; {m['cpu_count']} CPUs "
             f"({m['cpu']})" + (f"; {m['gpu_memory_gib']:.0f} GiB, {m['multiprocessors']} SMs, "
                                f"bf16 dense peak {m['bf16_peak_tflops']} TFLOP/s "
                                f"({m['bf16_peak_card']})" if m.get("gpu_memory_gib") else "")
             + f". Total {res['wall_time_s']:.0f} s.", "",
             "| step | status | seconds | budget |", "|---|---|---|---|"]
    for name, rec in res["steps"].items():
        st = {"ok": "ok", "skipped": f"skipped: {rec.get('reason')}",
              "failed": f"FAILED: {rec.get('error', '').replace('|', '/')}"}[rec["status"]]
        lines.append(f"| {name} | {st} | {rec.get('seconds', 0):.1f} | {rec['budget_s']:g} |")
    steps = res["steps"]
    r = (steps.get("flops") or {}).get("result")
    if r:
        k = r["forward_macs_by_kind"]
        lines += ["", f"**FLOPs** ({r['model']}, {r['parameters']:,} parameters, one "
                      f"{'x'.join(map(str, r['image_shape']))} image): forward "
                      f"{r['forward_flops_per_image']:,} FLOPs (conv {2 * k['conv']:,}, linear "
                      f"{2 * k['linear']:,}, attention {2 * k['attention']:,}), training 3x = "
                      f"{r['train_flops_per_image']:,}; torch.utils.flop_counter agrees."]
    r = (steps.get("train_course") or {}).get("result")
    if r:
        mfu_txt = (f"{r['mfu']:.2%} ({r['achieved_tflops']:.1f} of {r['peak_tflops']:g} TFLOP/s)"
                   if r["mfu"] is not None else f"null ({r['mfu_note']})")
        od = r["optimizer_defaults"]
        kind = "fused" if od.get("fused") else "foreach" if od.get("foreach") else "for-loop"
        lines += ["", f"**Training, experiment=course_cosine** ({r['model']['name']} widths "
                      f"{r['model']['widths']}, batch {r['batch_size']}, {r['precision']}, "
                      f"{r['optimizer']} ({kind}), channels_last="
                      f"{r['model'].get('channels_last')}, compile={r['model'].get('compile')}; "
                      f"{r['timed_batches']} timed steps after {r['warmup_batches']} warm-up)"
                      + (f". Note: {r['note']}" if r.get("note") else "") + ":", "",
                  f"- {r['images_per_s']:,.0f} images/s, {r['seconds_per_step'] * 1e3:.1f} ms "
                  f"per step",
                  f"- {r['seconds_per_epoch']:.1f} s per epoch ({r['steps_per_epoch']} steps of "
                  f"{r['n_train']:,} images); projected {r['epochs']} epochs "
                  f"{r['projected_total_s'] / 60:.1f} min, including {r['sample_grids']} sample "
                  f"grids of {r['sample_grid_s']:.1f} s (not included: "
                  f"{r['excluded_from_projection']})",
                  f"- peak memory {r['peak_memory_mib']:,.0f} MiB ({r['peak_memory_kind']})",
                  f"- MFU {mfu_txt}"]
    r = (steps.get("fid") or {}).get("result")
    if r:
        lines += ["", f"**FID evaluation** ({r['model']}, {r['precision']}; {r['note']}): "
                      f"n={r['n']}, {r['sampler']} {r['steps']} steps ({r['nfe']} NFE), batch "
                      f"{r['batch_size']}: sampling {r['sample_time_s']:.2f} s "
                      f"({r['sample_images_per_s']:,.0f} images/s), scoring "
                      f"{r['score_time_s']:.2f} s; evaluator setup {r['setup_time_s']:.2f} s "
                      f"(reference {'from cache' if r['reference_from_cache'] else 'computed'})."]
    r = (steps.get("gpu_tests") or {}).get("result")
    if r:
        lines += ["", f"**GPU tests**: {r['passed']} of {r['tests']} passed"
                      + (f"; failed: {', '.join(r['failed'])}" if r["failed"] else "")
                      + (f"; skipped: {', '.join(r['skipped'])}" if r["skipped"] else "") + "."]
    r = (steps.get("bench") or {}).get("result")
    if r:
        lines += ["", f"**scripts/bench.py --device cuda** (unet_course, batch 512; diffexp / bare, "
                      f"goal >= {r['threshold']}): train {r['train_images_per_s']['diffexp']:,.0f} "
                      f"vs {r['train_images_per_s']['bare']:,.0f} images/s.", "",
                  "| measure | ratio |", "|---|---|"]
        lines += [f"| {k} | {v:.3f}{'' if v >= r['threshold'] else ' FAIL'} |"
                  for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


def update_link_list(perf_md: Path, md_dir: Path) -> bool:
    """Rewrite the list between the markers in ``perf_md`` from the files in ``md_dir`` (their
    first heading as the link text); returns whether the markers were found."""
    text = perf_md.read_text()
    start, end = text.find(LINKS_BEGIN), text.find(LINKS_END)
    if start < 0 or end < start:
        print(f"[gpu-check] note: no link-list markers in {perf_md}; list not updated")
        return False
    items = []
    for f in sorted(md_dir.glob("*.md")):
        heads = [ln.lstrip("#").strip() for ln in f.read_text().splitlines() if ln.startswith("#")]
        title = heads[0].removeprefix("GPU check:").strip() if heads else f.stem
        rel = os.path.relpath(f, perf_md.parent).replace(os.sep, "/")
        items.append(f"- [{title}]({rel})")
    body = "\n".join(items) if items else "- none yet: no GPU has run the check"
    new = text[:start + len(LINKS_BEGIN)] + "\n" + body + "\n" + text[end:]
    if new != text:
        perf_md.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.step:
        if args.step not in STEP_FUNCS:
            raise SystemExit(f"error: unknown step {args.step!r}")
        return run_step_child(args)
    return run_all(args, argv)


if __name__ == "__main__":
    sys.exit(main())
