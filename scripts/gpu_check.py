"""GPU readiness check: one command that, in a short GPU window, runs every GPU-only check and
measures what the project needs to plan GPU work.

    python scripts/gpu_check.py [--out runs/gpu_check/gpu_check.json]     (= make gpu-check)
    python scripts/gpu_check.py --dry-run          (= make gpu-check ARGS=--dry-run; CPU-sized)
    bash scripts/gpu_session.sh [checks|full]      (on a lent GPU machine: docs/PERFORMANCE.md)

Steps, in order, each in its own process with its own time budget (``--budget STEP=SECONDS``), so
that a crash, a hang or a poisoned CUDA context in one step does not stop the others; with
``--deadline SECONDS`` the budgets shrink to what is left of the call:

``env``          what the machine has: versions and locations of torch, Lightning, torchmetrics,
                 torchvision, Hydra, OmegaConf, antlr4 and diffexp; CUDA; the course recipe
                 composed through Hydra; Fashion-MNIST found.
``train_step``   in one process, a training step of ``experiment=course_karras`` (unet_course,
                 batch 512, bf16 autocast, fused Adam, clipping, EMA) in eager mode, with
                 ``torch.compile`` and with CUDA graphs (``mode="reduce-overhead"``), channels_last
                 on and off: median step time after warm-up, host (CPU) time per step, kernels per
                 step and the costliest kernels (torch.profiler), peak memory, MFU; and one
                 checkpoint write. Results are kept after every variant (a cut-off step keeps them).
``fid``          a 2,048-sample FID evaluation at 20 NFE (scripts/bench.py's ``run_fid``),
                 sampling and scoring timed separately.
``gpu_tests``    ``pytest -m gpu tests/test_gpu.py`` (no end-of-run evaluations) with a time limit
                 per test and a JUnit report rewritten after every test (scripts/gpu_pytest_report.py).
``train_course`` ``experiment=course_karras`` through a real ``Trainer.fit`` for a fixed number of
                 steps after a warm-up (scripts/bench.py's ``train_diffexp``): images/s, seconds
                 per epoch, the projected time of the whole recipe, peak memory, MFU.
``flops``        analytic FLOPs per image of the course UNet (conv, linear and attention
                 multiply-adds counted by forward hooks, cross-checked against
                 ``torch.utils.flop_counter``); the training cost is 3x the forward.
``bench``        ``scripts/bench.py --device cuda`` with unet_course at batch 512: the diffexp /
                 bare-PyTorch ratios.
``full_run``     (not in the default selection: ``--only full_run``) the whole
                 ``python train.py experiment=course_karras logger=csv``, its end-of-run FID
                 included, timed from the command's start.

Each step prints ``[gpu-check] STEP: ok (Xs)``, ``[gpu-check] STEP: FAILED: <one line>`` or
``[gpu-check] STEP: skipped: <why>``; the exit status is 1 when any step failed (they are named on
the last line). Results go to one JSON (``--out``, rewritten before and after every step, so a run
cut short keeps what it measured) and a markdown block ``<device-slug>.md`` in ``--md-dir``
(default docs/gpu_check, one file per card; the list in docs/PERFORMANCE.md is kept in step with
that folder). The steps' logs go to ``--logs-dir`` (default beside the JSON).

``--dry-run`` runs, on the CPU and at tiny sizes, every step that does not need CUDA (the
environment, eager training steps of a tiny model and a checkpoint write, the FLOP count, the
course recipe composed and validated, a tiny FID, a tiny ``train.py`` run; compiled variants and
the bench are skipped, the GPU tests only collected); its markdown goes beside the JSON, not into
docs/. Nothing is downloaded: Fashion-MNIST comes from ``--data-root`` / DIFFEXP_DATA_ROOT (when
it is missing, training throughput is measured on synthetic images of the same shape and the FID
step fails with one line saying where to put the files).
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

# (name, seconds, needs CUDA, in the default selection), in the order they run: the measurements
# the GPU window is for first. A step that runs over its budget is killed and reported, and the
# next one starts; with --deadline the budgets shrink to what is left of the call, and a step with
# under MIN_STEP_S left is skipped, so the whole check ends inside the call's limit.
# scripts/gpu_session.sh runs the default selection in one call (deadline 330 s) and full_run in a
# second one.
STEPS = (
    ("env", 30, False, True),
    ("train_step", 130, False, True),
    ("fid", 45, False, True),
    ("gpu_tests", 100, True, True),
    ("train_course", 45, False, True),
    ("flops", 30, False, True),
    ("bench", 60, True, True),
    ("full_run", 300, False, False),
)
MIN_STEP_S = 10.0
DEFAULT_STEPS = tuple(s[0] for s in STEPS if s[3])
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
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        fc = FlopCounterMode(display=False)
        # the math backend: the counter has no formula for the CPU's fused (flash) kernel, which
        # SelfAttention's layout takes, and would count its attention as zero
        with torch.no_grad(), fc, sdpa_kernel(SDPBackend.MATH):
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
    p.add_argument("--only", default=None,
                   help=f"comma-separated subset of {','.join(STEP_NAMES)} (default: all but "
                        f"full_run)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="the whole check ends within this many seconds of its start: budgets shrink "
                        "to what is left, and a step with too little left is skipped")
    p.add_argument("--logs-dir", default=None,
                   help="the steps' logs and scratch files (default: gpu_check_logs/ beside --out)")
    p.add_argument("--test-timeout", type=float, default=75.0,
                   help="gpu_tests: seconds per test before it is failed (default 75)")
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
    args.only = ([s.strip() for s in args.only.split(",") if s.strip()] if args.only
                 else list(DEFAULT_STEPS))
    bad = sorted(set(args.only or []) - set(STEP_NAMES))
    if bad:
        p.error(f"--only: unknown step(s) {bad}; steps are {', '.join(STEP_NAMES)}")
    args.budgets = {name: float(b) for name, b, _, _ in STEPS}
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
    if args.logs_dir is None:
        args.logs_dir = str(Path(args.out).parent / "gpu_check_logs")
    if args.deadline is not None and args.deadline <= 0:
        p.error("--deadline must be > 0")
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


COURSE = "experiment=course_karras"


def step_flops(args, outdir: Path) -> dict:
    course = compose_config([COURSE, "logger=none"])
    res = unet_flops(course["model"], image_shape=_image_shape(course))
    print(f"unet_course: {res['parameters']:,} parameters, forward {res['forward_flops_per_image']:,} "
          f"FLOPs per image, training {res['train_flops_per_image']:,}")
    return res


def _image_shape(c: dict) -> tuple[int, int, int]:
    pad = int(c["data"]["pad"])
    return (1, 28 + 2 * pad, 28 + 2 * pad)


def step_gpu_tests(args, outdir: Path) -> dict:
    """pytest -m gpu tests/test_gpu.py through scripts/gpu_pytest_report.py: a limit per test
    (``--test-timeout``) and a JUnit report rewritten after every test, so a step stopped at its
    budget still says which tests ran and how they ended."""
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
    xml_path.unlink(missing_ok=True)
    proc = subprocess.run([*base, "-rfE", "-p", "gpu_pytest_report", f"--gpu-report={xml_path}",
                           f"--gpu-test-timeout={args.test_timeout:g}"], cwd=REPO)
    if not xml_path.is_file():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report")
    suites = ET.parse(xml_path).getroot()
    cases = list(suites.iter("testcase"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None
              or c.find("error") is not None]
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    res = {"tests": len(cases), "passed": len(cases) - len(failed) - len(skipped),
           "failed": failed, "skipped": skipped, "pytest_exit": proc.returncode,
           "seconds_per_test": {c.get("name"): float(c.get("time") or 0) for c in cases},
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
    base = [COURSE, "logger=none", "data.download=false",
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
    recipe = compose_config([COURSE, "logger=none", *args.train_set])
    r = {"recipe": {"name": recipe["name"], "model": recipe["model"],
                    "batch_size": recipe["train"]["batch_size"], "epochs": recipe["train"]["epochs"],
                    "optim": recipe["optim"], "precision": recipe["trainer"]["precision"],
                    "sampler": recipe["sampler"], "sample_every_n_epochs":
                        recipe["train"]["sample_every_n_epochs"],
                    "n_sample_images": recipe["train"]["n_sample_images"]}}
    print(f"{COURSE} composes and validates: model {recipe['model']['name']}, "
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
                 "--fid-nfe", "20", "--fid-reps", "2", "--set", COURSE]
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
    out = Path(args.logs_dir) / "bench.json"
    bargs = ["--device", "cuda", "--set", COURSE, "--model", "unet_course", "--batch-size", "512",
             "--threads", "4",
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


# ------------------------------------------------------------------------------------ env
#: what the session needs importable: the image's packages, the carried wheels' and this package
REQUIRED_MODULES = ("torch", "torchvision", "pytorch_lightning", "torchmetrics", "numpy", "scipy",
                    "matplotlib", "yaml", "pytest", "hydra", "omegaconf", "antlr4", "diffexp")


def _partial(args, result: dict) -> None:
    """A step's results so far, where the parent reads them if the step is stopped."""
    if args.step_out:
        tmp = Path(args.step_out + ".tmp")
        tmp.write_text(json.dumps({"status": "running", "result": result}, indent=2,
                                  default=_json_default))
        os.replace(tmp, args.step_out)


def step_env(args, outdir: Path) -> dict:
    import importlib

    mods: dict = {}
    for name in (*REQUIRED_MODULES, "wandb"):
        try:
            mod = importlib.import_module(name)
            mods[name] = {"version": getattr(mod, "__version__", None),
                          "path": str(Path(mod.__file__).parent)}
        except Exception as e:  # noqa: BLE001 - a missing package is what this step reports
            mods[name] = {"error": one_line(e)}
    for name, m in mods.items():
        print(f"{name:18s} {m.get('version') or '-':14s} {m.get('path') or m.get('error')}")
    import torch

    res: dict = {"modules": mods, "python": sys.executable, "cuda_available":
                 torch.cuda.is_available(), "pythonpath": os.environ.get("PYTHONPATH", "")}
    missing = [n for n in REQUIRED_MODULES if "error" in mods[n]]
    problems = [f"cannot import {', '.join(missing)}"] if missing else []
    if "error" not in mods["hydra"] and "error" not in mods["diffexp"]:
        c = compose_config([COURSE, "logger=csv"])
        res["course"] = {"name": c["name"], "model": c["model"]["name"],
                         "batch_size": c["train"]["batch_size"], "epochs": c["train"]["epochs"]}
        print(f"{COURSE} composes: {res['course']}")
        res["fashion_mnist"] = _have_fashion_mnist(args.data_root)
        if not res["fashion_mnist"]:
            problems.append(_missing_data_line(args.data_root))
    if torch.cuda.is_available():
        x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        res["cuda_matmul_ok"] = bool(torch.isfinite((x @ x).float()).all())
        res["device_name"] = torch.cuda.get_device_name(0)
    elif not args.dry_run:
        problems.append("no CUDA GPU is visible")
    if problems:
        raise StepFailed("; ".join(problems), res)
    return res


# ------------------------------------------------------------------------------------ train_step
#: (mode, channels_last) in the order measured: the layouts' eager steps, then the compiled ones
#: of the course's layout (channels_last), then those of NCHW, which need their own compilation
TRAIN_STEP_VARIANTS = (("eager", True), ("eager", False), ("compile", True),
                       ("cudagraphs", True), ("compile", False), ("cudagraphs", False))


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else 0.5 * (ys[n // 2 - 1] + ys[n // 2])


class _StepRig:
    """One training step of the course recipe as DiffusionModule and Lightning run it (a batch
    gathered from the device-resident data, bf16 autocast, the module's loss, backward, gradient
    clipping by norm, the optimizer the module configures on this device, the EMA update), outside
    Lightning so that eager, compiled and CUDA-graph versions are timed in one process."""

    def __init__(self, c: dict, data, device, mode: str, seed: int):
        import torch

        from diffexp.module import DiffusionModule

        self.device, self.mode, self.data = device, mode, data
        torch.manual_seed(seed)
        m = DiffusionModule.from_config(c, data=data).to(device)
        if mode != "eager":
            fwd = torch.compile(m.net, mode="reduce-overhead" if mode == "cudagraphs" else None)
            object.__setattr__(m, "_train_forward", fwd)
        self.m = m
        o = m.spec.optim
        kw = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        kw["fused" if device.type == "cuda" else "foreach"] = True
        self.opt = (torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam)(
            m.net.parameters(), **kw)
        self.params = list(m.net.parameters())
        self.clip = c["train"]["grad_clip"]
        self.bf16 = c["trainer"]["precision"] == "bf16-mixed"
        self.batch_size = c["train"]["batch_size"]
        g = torch.Generator(device="cpu").manual_seed(seed)
        idx = data.train_index
        order = torch.randperm(len(idx), generator=g)[: 16 * self.batch_size].to(idx.device)
        self.batches = list(idx[order].split(self.batch_size))
        self.gen = torch.Generator(device=device)
        self.i = 0

    def step(self):
        import torch

        if self.mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        x0 = self.data.batch(self.batches[self.i % len(self.batches)])
        self.gen.manual_seed(self.i)
        self.i += 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.m.diffusion_loss(x0, generator=self.gen)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.m.ema.update(self.m.net)
        return loss

    def timed(self, n: int) -> dict:
        """n steps: the device time of each (CUDA events; on the CPU the wall time), and the host's
        time to issue each (wall and CPU time without waiting for the device)."""
        import torch

        cuda = self.device.type == "cuda"
        dev, host, cpu = [], [], []
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)] if cuda else None
        if cuda:
            torch.cuda.synchronize()
            events[0].record()
        for k in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            self.step()
            host.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if cuda:
                events[k + 1].record()
        if cuda:
            torch.cuda.synchronize()
            dev = [events[k].elapsed_time(events[k + 1]) / 1e3 for k in range(n)]
        else:
            dev = host
        return {"step_s": _median(dev), "host_s": _median(host), "cpu_s": _median(cpu),
                "step_s_all": [round(x, 6) for x in dev]}

    def profile(self, n: int = 3) -> dict:
        """Kernels and launches per step, and the costliest kernels, over n steps."""
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda"
                                         else [])
        with profile(activities=acts) as prof:
            for _ in range(n):
                self.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        kernels: dict = {}
        n_dev = n_copy = n_ops = 0
        for e in prof.events():
            if e.device_type == DeviceType.CUDA:
                name = e.name
                if name.startswith(("Memcpy", "Memset")) or "memcpy" in name.lower():
                    n_copy += 1
                    continue
                n_dev += 1
                k = kernels.setdefault(name[:120], [0, 0.0])
                k[0] += 1
                k[1] += e.time_range.elapsed_us()
            elif e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
                n_ops += 1
        top = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:12]
        total_us = sum(v[1] for v in kernels.values())
        return {"kernels_per_step": n_dev / n, "copies_per_step": n_copy / n,
                "aten_ops_per_step": n_ops / n, "kernel_time_per_step_ms": total_us / n / 1e3,
                "top_kernels": [{"name": k, "per_step": v[0] / n, "ms_per_step": v[1] / n / 1e3}
                                for k, v in top]}


def step_train_step(args, outdir: Path) -> dict:
    import copy

    import torch

    from diffexp.benchmarking.timing import sync
    from diffexp.checkpoint_io import atomic_torch_save
    from diffexp.data import build_data

    _quiet_lightning()
    device = _device(args)
    overrides, note = _train_overrides(args, device)
    base = compose_config(overrides)
    if base["trainer"]["precision"] == "auto":
        base["trainer"]["precision"] = "bf16-mixed" if device.type == "cuda" else "32-true"
    data = build_data(base["data"], train=True)
    data.to(device)
    flops = unet_flops(base["model"], image_shape=_image_shape(base), crosscheck=False)
    name = _device_name(device)
    warm, n = (2, 3) if args.dry_run else (5, 20)
    res: dict = {"device": name, "note": note, "recipe": COURSE, "model": base["model"]["name"],
                 "batch_size": base["train"]["batch_size"],
                 "precision": base["trainer"]["precision"], "warmup_steps": warm,
                 "timed_steps": n, "train_flops_per_image": flops["train_flops_per_image"],
                 "variants": {}, "checkpoint": None}
    scratch = Path(args.logs_dir) / "train_step"
    scratch.mkdir(parents=True, exist_ok=True)
    for mode, cl in TRAIN_STEP_VARIANTS:
        key = f"{mode}/{'channels_last' if cl else 'nchw'}"
        if args.dry_run and mode != "eager":
            res["variants"][key] = {"status": "skipped", "reason": "--dry-run (inductor on the "
                                    "CPU compiles C++ for minutes; tests/test_gpu_cpu_side.py "
                                    "checks model.compile there)"}
            continue
        if mode == "cudagraphs" and device.type != "cuda":
            res["variants"][key] = {"status": "skipped", "reason": "no CUDA"}
            continue
        print(f"train_step {key}: building", flush=True)
        rec: dict = {"status": "running"}
        res["variants"][key] = rec
        rig = None
        try:
            c = copy.deepcopy(base)
            c["model"]["channels_last"] = cl
            c["model"]["compile"] = False
            rig = _StepRig(c, data, device, mode, args.seed)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            rig.step()
            sync(device)
            rec["first_step_s"] = time.perf_counter() - t0  # compilation included
            for _ in range(warm - 1):
                rig.step()
            sync(device)
            rec.update(rig.timed(n))
            rec["images_per_s"] = rig.batch_size / rec["step_s"]
            rec.update({k: v for k, v in mfu(flops["train_flops_per_image"], rec["images_per_s"],
                                             name).items() if k in ("mfu", "achieved_tflops")})
            if device.type == "cuda":
                rec["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            _partial(args, res)
            rec.update(rig.profile())
            rec["status"] = "ok"
            print(f"train_step {key}: {rec['step_s'] * 1e3:.2f} ms/step (host "
                  f"{rec['host_s'] * 1e3:.2f} ms), {rec['images_per_s']:,.0f} images/s, "
                  f"{rec['kernels_per_step']:.0f} kernels/step; first step "
                  f"{rec['first_step_s']:.1f}s", flush=True)
            if res["checkpoint"] is None:  # one checkpoint write: weights, EMA, optimizer state
                ckpt = {"state_dict": rig.m.state_dict(),
                        "optimizer_states": [rig.opt.state_dict()], "global_step": rig.i}
                path = scratch / "last.ckpt"
                sync(device)
                t0 = time.perf_counter()
                atomic_torch_save(ckpt, path)
                res["checkpoint"] = {"seconds": time.perf_counter() - t0,
                                     "mib": path.stat().st_size / 2**20, "variant": key}
                path.unlink()
                print(f"checkpoint write: {res['checkpoint']['seconds']:.3f}s, "
                      f"{res['checkpoint']['mib']:.1f} MiB", flush=True)
        except Exception as e:  # noqa: BLE001 - one variant's failure is its own
            traceback.print_exc()
            rec.update({"status": "failed", "error": one_line(e)})
        finally:
            del rig
            with contextlib.suppress(Exception):
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        _partial(args, res)
    ok = {k: v for k, v in res["variants"].items() if v["status"] == "ok"}
    if "eager/channels_last" in ok:
        ref = ok["eager/channels_last"]["step_s"]
        res["speedup_vs_eager_channels_last"] = {k: ref / v["step_s"] for k, v in ok.items()}
    bad = [k for k, v in res["variants"].items() if v["status"] == "failed"]
    if bad:
        raise StepFailed(f"train_step variants failed: {', '.join(bad)}", res)
    return res


# ------------------------------------------------------------------------------------ full_run
def _full_run_overrides(args, run_dir: Path) -> list[str]:
    o = [COURSE, "logger=csv", "data.download=false", f"hydra.run.dir={run_dir}",
         f"seed={args.seed}"]
    if args.data_root:
        o.append(f"data.root={args.data_root}")
    if args.dry_run:  # the same command through Hydra's CLI, CPU-sized
        o += [*TINY_MODEL, "trainer.accelerator=cpu", "trainer.precision=32-true",
              "train.batch_size=16", "train.epochs=1", "trainer.limit_train_batches=3",
              "trainer.limit_val_batches=1", "train.n_sample_images=4", "sampler.steps=2",
              "eval.n_samples=32", "eval.floor=false", "eval.diagnostics=false"]
    return o + list(args.train_set)


def step_full_run(args, outdir: Path) -> dict:
    """``python train.py experiment=course_karras logger=csv`` (no wandb on the lent machines),
    timed from the command's start to its end: imports, data, training, sample grids,
    checkpoints and the end-of-run evaluation (FID at n = 2,048 on a GPU)."""
    import shutil

    run_dir = Path(args.logs_dir) / "full_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train.py"), *_full_run_overrides(args, run_dir)]
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    res: dict = {"command": " ".join(["python train.py", *cmd[2:]]), "wall_s": wall,
                 "exit": proc.returncode, "run_dir": str(run_dir)}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        res["summary"] = summary
        res["train_wall_s"] = summary.get("wall_time_s")
        ev = summary.get("eval") or {}
        res["fid"] = ev.get("fid") if isinstance(ev, dict) else None
        shutil.copy(summary_path, outdir / "full_run_summary.json")
    final = run_dir / "samples" / "final.png"
    if final.is_file():
        shutil.copy(final, outdir / "full_run_final.png")
    print(f"full run: exit {proc.returncode}, {wall:.1f}s wall, training "
          f"{res.get('train_wall_s')}s, FID {res.get('fid')}", flush=True)
    if proc.returncode != 0 or "summary" not in res:
        raise StepFailed(f"train.py exited {proc.returncode}"
                         + ("" if "summary" in res else " without a summary.json"), res)
    return res


STEP_FUNCS = {"env": step_env, "train_step": step_train_step, "flops": step_flops,
              "gpu_tests": step_gpu_tests, "train_course": step_train_course, "fid": step_fid,
              "bench": step_bench, "full_run": step_full_run}



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
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), str(SCRIPTS),
                                                    env.get("PYTHONPATH")) if p)
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
        rec = {"status": "failed", "seconds": seconds,
               "error": f"exceeded its {budget:.0f}s budget and was stopped (log: {log_path})"}
        with contextlib.suppress(Exception):  # what the step had measured when it was stopped
            rec["result"] = json.loads(res_path.read_text()).get("result")
        return rec
    partial = None
    with contextlib.suppress(Exception):
        partial = json.loads(res_path.read_text())
    if not partial or partial.get("status") == "running":
        rec = {"status": "failed", "seconds": seconds,
               "error": f"the step's process exited with status {proc.returncode} before "
                        f"reporting: {_last_line(log_path)} (log: {log_path})"}
        if partial:
            rec["result"] = partial.get("result")
        return rec
    rec = partial
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

    try:
        from diffexp.runs.record import cpu_model

        cpu = cpu_model()
    except Exception as e:  # noqa: BLE001 - the env step reports what is missing
        cpu = f"? ({one_line(e)})"
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
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
    logs = Path(args.logs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    md_dir = Path(args.md_dir)
    md_dir.mkdir(parents=True, exist_ok=True)
    md_path = md_dir / f"{device_slug(info['device_name'])}.md"
    res = {"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "dry_run": args.dry_run, "command": " ".join(["scripts/gpu_check.py", *argv]),
           "deadline_s": args.deadline, "machine": info, "steps": {}, "markdown": str(md_path)}
    print(f"[gpu-check] {'dry run on ' if args.dry_run else ''}{info['device_name']}; torch "
          f"{info['torch']}, CUDA {info.get('cuda') or '-'}, python {info['python']}, "
          f"{info['cpu_count']} CPUs", flush=True)

    def save() -> None:  # before and after every step: a run cut short keeps what it measured
        res["wall_time_s"] = time.perf_counter() - t_start
        res["failed"] = [n for n, r in res["steps"].items() if r["status"] == "failed"]
        write_json(out, res)
        md_path.write_text(markdown_report(res))

    for name, _, needs_cuda, _ in STEPS:
        if name not in args.only:
            continue
        budget = args.budgets[name]
        left = None if args.deadline is None else args.deadline - (time.perf_counter() - t_start)
        if left is not None and left < MIN_STEP_S:
            rec = {"status": "skipped", "seconds": 0.0,
                   "reason": f"no time left in the call ({max(left, 0):.0f}s of --deadline "
                             f"{args.deadline:g}s)"}
        elif needs_cuda and args.dry_run and name != "gpu_tests":  # gpu_tests still collects
            rec = {"status": "skipped", "reason": "no CUDA" if not info["cuda_available"]
                   else "--dry-run", "seconds": 0.0}
        else:
            if left is not None and left - 2 < budget:
                budget = max(left - 2, 1.0)  # leave the parent time to write the results
            print(f"[gpu-check] {name}: running (budget {budget:.0f}s)", flush=True)
            res["steps"][name] = {"status": "running", "budget_s": budget, "seconds": 0.0}
            save()
            rec = run_isolated(name, argv, budget, logs / f"{name}.log", echo=not args.quiet)
        rec["budget_s"] = budget
        res["steps"][name] = rec
        print(status_line(name, rec), flush=True)
        summary = step_summary(name, rec)
        if summary:
            print(f"[gpu-check]     {summary}", flush=True)
        save()
    save()
    failed = res["failed"]
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
    if name == "env":
        mods = r["modules"]
        return ", ".join(f"{k} {mods[k].get('version') or '?'}" for k in
                         ("torch", "pytorch_lightning", "torchmetrics", "torchvision", "hydra",
                          "omegaconf") if k in mods)
    if name == "train_step":
        return "; ".join(f"{k} {v['step_s'] * 1e3:.1f} ms" if v["status"] == "ok" else
                         f"{k} {v['status']}" for k, v in r["variants"].items())
    if name == "full_run":
        return f"{r['wall_s']:.1f}s wall, training {r.get('train_wall_s')}s, FID {r.get('fid')}"
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
              "failed": f"FAILED: {rec.get('error', '').replace('|', '/')}"}.get(
                  rec["status"], rec["status"])
        lines.append(f"| {name} | {st} | {rec.get('seconds', 0):.1f} | {rec['budget_s']:.0f} |")
    steps = res["steps"]
    lines += _md_train_step((steps.get("train_step") or {}).get("result"))
    r = (steps.get("full_run") or {}).get("result")
    if r:
        lines += ["", f"**Whole run** `{r['command']}`: exit {r['exit']}, {r['wall_s']:.1f} s from "
                      f"the command's start (training {r.get('train_wall_s')} s), FID "
                      f"{r.get('fid')}."]
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
        lines += ["", f"**Training, {COURSE}, Trainer.fit** ({r['model']['name']} widths "
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


def _md_train_step(r: dict | None) -> list[str]:
    if not r:
        return []
    lines = ["", f"**Training step, {r['recipe']}** ({r['model']}, batch {r['batch_size']}, "
                 f"{r['precision']}; median of {r['timed_steps']} steps after "
                 f"{r['warmup_steps']} warm-up; host = the CPU's time to issue a step):", "",
             "| variant | ms/step | host ms/step | images/s | MFU | kernels/step | first step s "
             "| peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for k, v in r["variants"].items():
        if v.get("step_s") is None:
            lines.append(f"| {k} | {v['status']}: {v.get('reason') or v.get('error') or ''} "
                         f"| | | | | | |".replace("|  |", "| |"))
            continue
        m = f"{v['mfu']:.1%}" if v.get("mfu") is not None else "-"
        kern = f"{v['kernels_per_step']:.0f}" if "kernels_per_step" in v else "-"
        peak = f"{v['peak_memory_mib']:,.0f}" if "peak_memory_mib" in v else "-"
        lines.append(f"| {k} | {v['step_s'] * 1e3:.2f} | {v['host_s'] * 1e3:.2f} | "
                     f"{v['images_per_s']:,.0f} | {m} | {kern} | {v['first_step_s']:.1f} | {peak} |")
    ck = r.get("checkpoint")
    if ck:
        lines += ["", f"Checkpoint write ({ck['variant']}: weights, EMA, optimizer state): "
                      f"{ck['seconds']:.3f} s, {ck['mib']:.1f} MiB."]
    return lines


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
