"""What of GPU readiness can be checked on the CPU: bf16 autocast training, the GPU's optimizer
configuration (fused Adam) with gradient clipping, model.compile against eager, no host syncs in
a training step, and scripts/gpu_check.py itself (its FLOP counter against hand counts, its
arithmetic, its dry run and its failure handling). The GPU-only checks are in tests/test_gpu.py."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from diffexp.data import build_data
from diffexp.models.unet import SelfAttention
from diffexp.module import DiffusionModule
from diffexp.runs.train import train

from .helpers import REPO, TINY_MODEL, train_config

GPU_CHECK = REPO / "scripts" / "gpu_check.py"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("diffexp_gpu_check", GPU_CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY_RUN = ["data=synthetic", "logger=none", *TINY_MODEL, "trainer.accelerator=cpu",
            "train.batch_size=8", "train.epochs=1", "trainer.limit_val_batches=0",
            "train.n_sample_images=4", "sampler.steps=2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def fused_adam(monkeypatch):
    """The optimizer DiffusionModule.configure_optimizers builds on CUDA (fused Adam), on the CPU.
    It also keeps the CPU's foreach Adam out of the host-sync counts: that one reads its step
    counters (CPU tensors, not device syncs) with ``.item()`` for every parameter."""
    real = torch.optim.Adam

    def adam(params, **kw):
        kw.pop("foreach", None)
        return real(params, **kw, fused=True)

    monkeypatch.setattr(torch.optim, "Adam", adam)


# ------------------------------------------------------------------------------------ bf16, compile
@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_bf16_autocast_training_on_cpu_is_finite_and_learns():
    """bf16 autocast (what bf16-mixed does) on one fixed batch: every loss finite and computed in
    fp32 from a network that ran in bf16, and the loss falls. Kept small: bf16 convolutions are
    slow on CPUs without bf16 instructions (19 s here)."""
    c = train_config(*TINY_RUN)
    torch.manual_seed(0)
    m = DiffusionModule.from_config(c)
    data = build_data(c["data"])
    x0 = data.batch(data.train_index[:8])
    opt = torch.optim.Adam(m.net.parameters(), lr=5e-3)
    dtypes = []
    m.net.register_forward_hook(lambda mod, inputs, out: dtypes.append(out.dtype))

    def loss_at(seed):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m.diffusion_loss(x0, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = sum(float(loss_at(s)) for s in range(2)) / 2
    for step in range(12):
        opt.zero_grad()
        loss = loss_at(step % 2)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), (step, loss)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = sum(float(loss_at(s)) for s in range(2)) / 2
    assert set(dtypes) == {torch.bfloat16}  # the network really ran in bf16
    assert after < 0.5 * before, (before, after)  # measured: 0.98 -> 0.15


@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_bf16_mixed_training_with_fused_adam_clips_gradients(tmp_path, fused_adam):
    """The GPU's configuration (bf16-mixed, fused Adam, gradient clipping) through Lightning on the
    CPU. Lightning's mixed-precision plugin refuses to clip for a fused optimizer; the module
    clips itself (DiffusionModule.configure_gradient_clipping)."""
    clip = 1e-3  # far below the gradient norms of a fresh network, so clipping has work to do

    class Norms(pl.Callback):
        def __init__(self):
            self.before, self.after, self.fused = [], [], None

        def on_train_start(self, trainer, module):
            self.fused = trainer.optimizers[0].defaults.get("fused")

        def on_before_optimizer_step(self, trainer, module, optimizer):  # before clipping
            self.before.append(_grad_norm(module))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            # the gradients the step used: zeroed only in the next step's closure
            self.after.append(_grad_norm(module))

    norms = Norms()
    s = train(train_config(*TINY_RUN, "trainer.precision=bf16-mixed", f"train.grad_clip={clip}",
                           "trainer.limit_train_batches=3"), tmp_path / "run", callbacks=[norms])
    assert s["precision"] == "bf16-mixed" and s["global_step"] == 3
    assert norms.fused is True
    assert len(norms.before) == len(norms.after) == 3
    assert all(b > 10 * clip for b in norms.before), norms.before
    assert all(a <= clip * (1 + 1e-3) for a in norms.after), norms.after


def _grad_norm(module) -> float:
    return float(torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in module.net.parameters() if p.grad is not None])))


@pytest.mark.slow  # inductor compiles C++ on a cold cache: 80 to 96 s on the shared 2-core machine
def test_compiled_forward_on_cpu_equals_eager():
    c = train_config(*TINY_RUN, "model.compile=true")
    torch.manual_seed(0)
    m = DiffusionModule.from_config(c).eval()
    torch.nn.init.normal_(m.net.conv_out.weight, std=0.05)  # else both outputs are exactly 0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=g)
    cond = torch.rand(4, generator=g)
    with torch.no_grad():
        eager = m.net(x, cond)
        compiled = m._train_forward(x, cond)
    assert m._train_forward is not m.net
    assert eager.abs().max() > 0.01
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ host syncs
SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _count_host_reads(cfg: dict, run_dir: Path) -> collections.Counter:
    """Calls of the tensor methods that copy a value to the host (on a GPU, each waits for the
    device), from the start of the second training step to the end of the epoch, by call site."""
    calls: collections.Counter = collections.Counter()
    active = [False]

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            if active[0]:
                frames = [f for f in traceback.extract_stack(limit=12)[:-1]
                          if not f.filename.endswith(os.path.join("torch", "_tensor.py"))]
                site = frames[-1] if frames else None
                calls[(name, f"{Path(site.filename).name}:{site.lineno}" if site else "?")] += 1
            return original(self, *args, **kwargs)
        return wrapper

    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}
    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))

    class Window(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            active[0] = active[0] or batch_idx == 1

        def on_train_epoch_end(self, trainer, module):
            active[0] = False

    try:
        train(cfg, run_dir, callbacks=[Window()])
    finally:
        active[0] = False
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return calls


def _growth(a: collections.Counter, b: collections.Counter) -> dict:
    return {k: (a[k], b[k]) for k in set(a) | set(b) if b[k] != a[k]}


@pytest.mark.slow
def test_training_steps_read_nothing_back_to_the_host(tmp_path, fused_adam):
    """Measured: with no logger, the count over steps 2..N is the same for N = 3 and N = 9 (only
    the loss history's one read at the epoch's end). Before the module logged ``train/loss`` to
    the progress bar only when there is one, Lightning converted it to a number after every
    batch (lightning_fabric apply_func, one ``.item()`` per step)."""
    counts = [_count_host_reads(train_config(*TINY_RUN, f"trainer.limit_train_batches={n}"),
                                tmp_path / f"n{n}") for n in (3, 9)]
    grown = _growth(*counts)
    assert not grown, f"host reads that grow with the number of steps (site: (N=3, N=9)): {grown}"
    assert sum(counts[1].values()) <= 2, counts[1]  # the epoch-end gather of the loss history


@pytest.mark.slow
def test_logger_reads_the_loss_once_per_logging_step(tmp_path, fused_adam):
    """With a logger, Lightning converts the logged step values to numbers every
    ``log_every_n_steps`` steps: at most two reads per logging step (the loss and the gradient
    norm; the EMA decay is a host number), never one per step."""
    counts = []
    for n in (3, 13):
        counts.append(_count_host_reads(
            train_config(*TINY_RUN, f"trainer.limit_train_batches={n}", "logger=csv",
                         "trainer.log_every_n_steps=2"), tmp_path / f"n{n}"))
    extra = sum(counts[1].values()) - sum(counts[0].values())
    logging_steps = 12 // 2 - 2 // 2  # logging steps among steps 2..N, N=13 minus N=3
    assert 0 <= extra <= 2 * logging_steps, (extra, _growth(*counts))


def test_loss_still_on_the_progress_bar_when_there_is_one(tmp_path):
    c = train_config(*TINY_RUN, "trainer.limit_train_batches=3")
    seen = {}
    for bar in (True, False):
        m = DiffusionModule.from_config(c)
        m.attach_data(build_data(c["data"]))
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", limit_train_batches=3,
                             limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=bar, enable_model_summary=False,
                             default_root_dir=str(tmp_path))
        trainer.fit(m)
        seen[bar] = set(trainer.progress_bar_metrics)
    assert any(k.startswith("train/loss") for k in seen[True]), seen
    assert not any(k.startswith("train/loss") for k in seen[False]), seen


# ------------------------------------------------------------------------------------ gpu_check.py
class HandCounted(nn.Module):
    """Multiply-accumulates per image, by hand, for a 1x4x4 input:
    conv 1->2, 3x3, pad 1:            out 2x4x4 = 32 elements x (1 x 9)              =   288
    attention over 2 channels (1 head of 2), L = 16 positions:
        qkv 1x1 conv 2->6:            out 6x4x4 = 96 x 2                             =   192
        q k^T and attn v:             2 x (16 x 16 x 2)                              = 1,024
        proj 1x1 conv 2->2:           out 2x4x4 = 32 x 2                             =    64
    conv 2->4, 3x3, stride 2, groups 2: out 4x2x2 = 16 x (1 x 9)                     =   144
    transposed conv 4->2, 2x2, stride 2: in 4x2x2 = 16 x (2 x 4)                     =   128
    linear 32->3:                     3 x 32                                         =    96
    total 1,936: conv 816, attention 1,024, linear 96."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.attn = SelfAttention(2, head_dim=2)
        self.down = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.up(self.down(self.attn(self.conv(x)))).flatten(1))


def test_mac_counter_matches_a_hand_count():
    gc = _load_gpu_check()
    net = HandCounted()
    with torch.no_grad(), gc.MacCounter(net) as counter:
        net(torch.randn(3, 1, 4, 4))
    assert counter.macs == {"conv": 3 * 816, "attention": 3 * 1024, "linear": 3 * 96}
    assert counter.total == 3 * 1936
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed on exit


def test_unet_flops_agree_with_torch_flop_counter():
    gc = _load_gpu_check()
    cfg = train_config(*TINY_RUN)["model"]
    r = gc.unet_flops(cfg, image_shape=(1, 32, 32))  # raises if the two counts differ
    assert r["torch_flop_counter_forward_flops"] == r["forward_flops_per_image"] > 0
    assert r["train_flops_per_image"] == 3 * r["forward_flops_per_image"]
    assert r["forward_macs_by_kind"]["attention"] > 0  # the tiny UNet has attention at 16x16
    no_cond = gc.unet_flops(cfg, conditioned=False, crosscheck=False)
    assert no_cond["forward_macs_by_kind"]["linear"] == 0  # no embedding MLP without conditioning


def test_bf16_peak_table_and_mfu():
    gc = _load_gpu_check()
    cases = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0,
             "NVIDIA H200": 989.0, "NVIDIA H200 NVL": 835.0, "NVIDIA GH200 480GB": 989.0,
             "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-PCIE-40GB": 312.0, "NVIDIA L4": 121.0,
             "NVIDIA L40S": 362.0, "NVIDIA L40": 181.0, "NVIDIA A10": 125.0,
             "NVIDIA A10G": None, "Tesla V100-SXM2-16GB": None, "CPU (AMD EPYC)": None}
    for name, peak in cases.items():
        assert gc.bf16_peak(name)[0] == peak, name
    u = gc.mfu(4.0e9, 24_725.0, "NVIDIA H100 80GB HBM3")
    assert u["mfu"] == pytest.approx(4.0e9 * 24_725.0 / 989e12)
    unknown = gc.mfu(4.0e9, 100.0, "CPU (AMD EPYC)")
    assert unknown["mfu"] is None and "no bf16 dense peak" in unknown["mfu_note"]
    assert gc.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gc.device_slug("CPU (AMD EPYC)") == "cpu-amd-epyc"


def test_recipe_projection_arithmetic():
    gc = _load_gpu_check()
    assert gc.sample_grid_epochs(25, 5) == 5 and gc.sample_grid_epochs(7, 5) == 2
    assert gc.sample_grid_epochs(3, 0) == 1  # the final grid only
    p = gc.project_recipe(images_per_s=1024.0, n_train=58_000, batch_size=512, epochs=25,
                          grid_s=2.0, n_grids=5)
    assert p["steps_per_epoch"] == 113  # IndexBatches drops the last partial batch
    assert p["seconds_per_epoch"] == pytest.approx(113 * 0.5)
    assert p["projected_total_s"] == pytest.approx(25 * 113 * 0.5 + 5 * 2.0)


def test_link_list_follows_the_folder(tmp_path):
    gc = _load_gpu_check()
    perf = tmp_path / "PERFORMANCE.md"
    perf.write_text(f"# P\n\ntext\n{gc.LINKS_BEGIN}\n- stale\n{gc.LINKS_END}\nafter\n")
    md = tmp_path / "gpu_check"
    md.mkdir()
    (md / "nvidia-h200.md").write_text("# GPU check: NVIDIA H200\n\nbody\n")
    (md / "nvidia-h100-80gb-hbm3.md").write_text("# GPU check: NVIDIA H100 80GB HBM3\n")
    assert gc.update_link_list(perf, md)
    assert perf.read_text() == (
        f"# P\n\ntext\n{gc.LINKS_BEGIN}\n"
        "- [NVIDIA H100 80GB HBM3](gpu_check/nvidia-h100-80gb-hbm3.md)\n"
        "- [NVIDIA H200](gpu_check/nvidia-h200.md)\n"
        f"{gc.LINKS_END}\nafter\n")
    for f in md.iterdir():
        f.unlink()
    gc.update_link_list(perf, md)
    assert "- none yet" in perf.read_text() and "nvidia" not in perf.read_text()


def test_performance_md_lists_every_gpu_check_file():
    gc = _load_gpu_check()
    text = gc.PERFORMANCE_MD.read_text()
    assert gc.LINKS_BEGIN in text and gc.LINKS_END in text
    block = text[text.index(gc.LINKS_BEGIN):text.index(gc.LINKS_END)]
    linked = sorted(re.findall(r"\]\((gpu_check/[^)]+\.md)\)", block))
    files = sorted(f"gpu_check/{f.name}" for f in gc.DOCS_MD_DIR.glob("*.md"))
    assert linked == files, f"docs/PERFORMANCE.md links {linked}, docs/gpu_check has {files}"
    if not files:
        assert "none yet" in block


def _run_gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_failed_step_is_reported_and_the_next_still_runs(tmp_path):
    out = tmp_path / "check.json"
    # train_course cannot even import torch in 0.5 s; flops after it must still run
    proc = _run_gpu_check("--dry-run", "--only", "train_course,flops", "--budget",
                          "train_course=0.5", "--out", str(out), "--quiet", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    failed = [ln for ln in lines if ln.startswith("[gpu-check] train_course: FAILED: ")]
    assert len(failed) == 1 and "budget" in failed[0], proc.stdout
    assert any(re.fullmatch(r"\[gpu-check\] flops: ok \(\d+\.\ds\)", ln) for ln in lines), proc.stdout
    assert lines[-1] == "[gpu-check] FAILED steps: train_course"
    res = json.loads(out.read_text())
    assert res["failed"] == ["train_course"]
    assert res["steps"]["flops"]["status"] == "ok"
    assert res["steps"]["train_course"]["budget_s"] == 0.5
    assert list(res["steps"]) == ["train_course", "flops"]  # the script's order, not --only's


@pytest.mark.slow  # 54 to 59 s on the shared 2-core machine, five processes started
def test_dry_run_end_to_end(tmp_path, data_root):
    out = tmp_path / "dry" / "gpu_check.json"
    proc = _run_gpu_check("--dry-run", "--out", str(out), "--data-root", str(data_root),
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    status = {m.group(1): m.group(2) for m in
              re.finditer(r"^\[gpu-check\] (\w+): (ok|FAILED|skipped)", proc.stdout, re.M)}
    assert status == {"env": "ok", "train_step": "ok", "flops": "ok", "gpu_tests": "skipped",
                      "train_course": "ok", "fid": "ok", "bench": "skipped"}, status
    assert "[gpu-check] bench: skipped: no CUDA" in proc.stdout or torch.cuda.is_available()
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["failed"] == []
    steps = res["steps"]
    assert re.search(r"\d+ gpu tests collected", steps["gpu_tests"]["reason"])
    f = steps["flops"]["result"]
    assert f["model"] == "unet_course" and f["parameters"] > 10_000_000
    assert f["train_flops_per_image"] == 3 * f["torch_flop_counter_forward_flops"]
    t = steps["train_course"]["result"]
    assert t["recipe"]["batch_size"] == 512 and t["recipe"]["epochs"] == 25  # the real recipe
    assert t["timed_batches"] == 2 and t["images_per_s"] > 0 and math.isfinite(t["images_per_s"])
    assert t["projected_total_s"] > 25 * t["seconds_per_epoch"] > 0
    assert t["mfu"] is None and "no bf16 dense peak" in t["mfu_note"]  # a CPU is not in the table
    fid = steps["fid"]["result"]
    assert fid["n"] == 32 and fid["sample_time_s"] > 0 and fid["score_time_s"] > 0
    md = Path(res["markdown"])
    assert md.parent == out.parent and md.read_text().startswith("# GPU check: ")
