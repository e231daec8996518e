"""Checks that need a CUDA GPU (marker ``gpu``; skipped without one; ``make gpu-check`` runs them).

Each builds tiny models on synthetic data through the real config tree and compares the GPU with
an independent truth: the CPU running the same thing (per-sample noise, samplers, a checkpoint),
eager mode (model.compile), or what the configuration asks for (bf16 autocast, fused Adam, the
memory format, no host syncs in a training step). Failure messages carry the measured numbers,
so one run in a short GPU window says how far off a failing check was.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import pytorch_lightning as pl
import torch

from diffexp import sampling
from diffexp.module import DiffusionModule, load_module
from diffexp.objectives import make_denoiser
from diffexp.runs.train import train

from .helpers import TINY_MODEL, train_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda"
ACCELERATOR = "gpu"

OBJECTIVES = {
    "eps": ["objective=eps"],
    "x0": ["objective=x0"],
    "v": ["objective=v"],
    "karras": ["objective=karras", "schedule=karras"],
    # the schedule's alpha_bar instead of a noise-level predictor (which would need its own run)
    "no_t": ["objective=no_t", "objective.use_predicted_noise_level=false"],
}


# A tiny bf16-mixed GPU run: three optimizer steps (OneCycle needs three), no logger, and no
# end-of-run evaluation (on a GPU it would sample and score 2,048 images; none of these tests is
# about it: scripts/gpu_check.py's full_run evaluates on the GPU).
RUN = ["data=synthetic", "logger=none", *TINY_MODEL, f"trainer.accelerator={ACCELERATOR}",
       "trainer.precision=bf16-mixed", "train.eval_at_end=false", "train.batch_size=16",
       "train.epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
       "train.n_sample_images=8", "sampler.steps=2"]


@contextlib.contextmanager
def _no_tf32():
    """fp32 comparisons with the CPU: cuDNN convolutions default to TF32 (10-bit mantissa)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _bf16_autocast():
    return torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16)


#: for comparing samples: Karras' x0_hat = c_skip x + c_out F stays at the data's scale with random
#: weights (an eps model's x - sigma eps_hat keeps the start noise, |x0| ~ 600 on the cosine grid)
KARRAS = ["objective=karras", "schedule=karras", "objective.sigma_data=0.5"]


def _random_output_module(*extra: str) -> DiffusionModule:
    """A module on the CPU whose zero-initialised output layer is given small random weights, so
    the denoiser is not the identity and comparisons compare something."""
    torch.manual_seed(0)
    m = DiffusionModule.from_config(train_config(*RUN, *extra))
    for net in (m.net, m.ema.shadow):
        torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    return m.eval()


class StepProbe(pl.Callback):
    """Records, per training step, the optimizer's ``fused`` flag, the dtype the network computed
    in, the loss; the memory format of a 3x3 conv weight (16 in, 16 out, so the two formats
    differ); and whether the weights moved."""

    def __init__(self):
        self.fused, self.out_dtypes, self.losses = [], [], []
        self.channels_last = self.weight_device = self._before = self._hook = None
        self.moved = False

    def on_train_start(self, trainer, module):
        w = module.net.down[0].res.conv1.weight
        self.weight_device = w.device.type
        self.channels_last = w.is_contiguous(memory_format=torch.channels_last)
        self._before = w.detach().clone()
        self._hook = module.net.register_forward_hook(
            lambda mod, inputs, out: self.out_dtypes.append(out.dtype))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.fused.append(trainer.optimizers[0].defaults.get("fused"))
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, module):
        self._hook.remove()
        self.moved = not torch.equal(module.net.down[0].res.conv1.weight.detach(), self._before)


@pytest.mark.parametrize("objective,channels_last", [
    *[(name, True) for name in OBJECTIVES],  # the course models' layout
    ("eps", False), ("karras", False),
])
def test_bf16_training_steps_with_fused_adam(tmp_path, objective, channels_last):
    probe = StepProbe()
    c = train_config(*RUN, *OBJECTIVES[objective], f"model.channels_last={str(channels_last).lower()}")
    s = train(c, tmp_path / "run", callbacks=[probe])
    assert (s["device"], s["precision"], s["global_step"]) == (ACCELERATOR, "bf16-mixed", 3)
    assert probe.fused == [True, True, True], probe.fused
    assert probe.weight_device == torch.device(DEVICE).type
    assert probe.channels_last is channels_last
    # every forward pass (training and validation) ran under bf16 autocast
    assert probe.out_dtypes and set(probe.out_dtypes) == {torch.bfloat16}, set(probe.out_dtypes)
    assert all(torch.isfinite(torch.tensor(probe.losses))), probe.losses
    assert probe.moved, "the optimizer steps did not change the weights"
    m = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    bad = [k for k, v in m.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    assert not bad, f"non-finite tensors in the checkpoint: {bad}"
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def test_compiled_forward_matches_eager_in_bf16():
    m = _random_output_module("model.compile=true", "model.channels_last=true").to(DEVICE)
    assert m._train_forward is not m.net
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(8, 1, 32, 32, generator=g) * 2 - 1
    sigma = torch.linspace(0.05, 3.0, 8)
    x = (x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)).to(DEVICE)
    sigma = sigma.to(DEVICE)
    eager, compiled = make_denoiser(m.net, m.objective), make_denoiser(m._train_forward, m.objective)
    with torch.no_grad():
        with _no_tf32():
            ref = eager(x, sigma)  # fp32: the truth both bf16 results are measured against
        with _bf16_autocast():
            den_e, den_c = eager(x, sigma), compiled(x, sigma)

    def rel(a):  # relative L2 error of the network's part of the estimate, x0_hat - x
        return ((a - ref).norm() / (ref - x).norm()).item()

    # "within bf16 tolerance": bf16 keeps 8 significant bits, and fused kernels round at other
    # places than eager ones, so compiled and eager differ by about bf16's own error; the compiled
    # forward must be as close to fp32 as eager bf16 is (a wrong graph would be off by ~100%)
    err_e, err_c = rel(den_e), rel(den_c)
    assert err_e < 5e-2, f"eager bf16 vs fp32: relative error {err_e:.2e}"
    assert err_c < 2 * err_e + 1e-3, (f"compiled bf16 vs fp32: relative error {err_c:.2e}, eager "
                                      f"bf16 {err_e:.2e}")
    # and the compiled graph trains: a backward pass gives finite gradients for every weight
    inp, cond = m.objective.net_input(x, sigma)
    with _bf16_autocast():
        loss = m._train_forward(inp.contiguous(memory_format=torch.channels_last), cond).float()
        loss = loss.pow(2).mean()
    loss.backward()
    missing = [n for n, p in m.net.named_parameters()
               if p.grad is None or not p.grad.isfinite().all()]
    assert not missing, f"no finite gradient for {missing[:5]}"


def test_per_sample_noise_on_cuda_equals_the_cpu_stream():
    shape = (1, 32, 32)
    for dtype in (torch.float32, torch.float64):
        on_gpu = sampling.PerSampleNoise(7, range(3, 3 + 64))
        on_cpu = sampling.PerSampleNoise(7, range(3, 3 + 64))
        # successive draws (start noise, then each step's) through pinned, non-blocking copies;
        # all compared only after the last one was queued, so a reused buffer would show
        drawn = [(on_gpu.randn(shape, dtype=dtype, device=DEVICE), on_cpu.randn(shape, dtype=dtype))
                 for _ in range(5)]
        for k, (a, b) in enumerate(drawn):
            assert a.device.type == torch.device(DEVICE).type and a.dtype == dtype
            assert torch.equal(a.cpu(), b), f"draw {k} ({dtype}) differs from the CPU stream"


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde",
                                  "ddpm"])
def test_sampler_on_gpu_matches_cpu(name):
    m_cpu = _random_output_module(*KARRAS)
    m_gpu = copy.deepcopy(m_cpu).to(DEVICE)
    kw = dict(n=8, shape=m_cpu.image_shape, seed=3, sampler=name, steps=6, batch_size=4)
    with torch.no_grad(), _no_tf32():
        a = sampling.sample(m_cpu.denoiser(), m_cpu.schedule, device="cpu", **kw).x0
        b = sampling.sample(m_gpu.denoiser(), m_gpu.schedule, device=DEVICE, **kw).x0
    assert b.device.type == torch.device(DEVICE).type
    err = (b.cpu() - a).abs().max().item()
    # fp32 on both sides; the ODE shrinks an early error with sigma, so what is left is the
    # rounding of the last steps
    assert err < 2e-3, f"{name}: GPU vs CPU samples differ by up to {err:.3e}"


def test_bf16_generation_on_gpu_close_to_fp32_on_cpu():
    """module.generate as evaluation runs it: bf16 autocast on the GPU, fp32 on the CPU."""
    m_cpu = _random_output_module(*KARRAS, "sampler=ddim", "sampler.steps=10")
    m_gpu = copy.deepcopy(m_cpu).to(DEVICE)
    m_cpu.precision = "32-true"  # a bf16 run samples in bf16 on the CPU too; here the fp32 truth
    a, _, _ = m_cpu.generate(16, seed=5, batch_size=8)
    b, _, _ = m_gpu.generate(16, seed=5, batch_size=8)
    diff = (b.cpu() - a).abs()
    assert torch.isfinite(b).all() and a.abs().mean() > 0.1  # samples at the data's scale
    # CPU bf16 autocast against fp32, the same comparison: mean 1.4e-3, max 1.3e-2
    assert diff.mean().item() < 2e-2, (f"bf16 GPU vs fp32 CPU: mean |difference| "
                                       f"{diff.mean().item():.3e}, max {diff.max().item():.3e}")


def test_gpu_checkpoint_loads_and_samples_on_cpu(tmp_path):
    c = train_config(*RUN, "objective=karras", "schedule=karras", "model.channels_last=true",
                     "sampler=heun", "sampler.steps=3")
    train(c, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    m_cpu = load_module(ckpt, map_location="cpu")
    assert {t.device.type for t in m_cpu.state_dict().values()} == {"cpu"}
    assert m_cpu.cfg["trainer"]["precision"] == "bf16-mixed"  # written by the GPU run
    assert m_cpu.precision == "bf16-mixed"  # and sampled as trained, unless told otherwise:
    m_cpu.precision = "32-true"  # fp32 here, to compare with fp32 on the GPU below
    x_cpu, u8, nfe = m_cpu.generate(8, seed=1)
    assert x_cpu.dtype == torch.float32 and torch.isfinite(x_cpu).all()
    assert u8.dtype == torch.uint8 and u8.shape == (8, 1, 28, 28)
    assert nfe == sampling.nfe("heun", 3)
    # the same weights on the GPU, in fp32, sample the same images
    m_gpu = load_module(ckpt, map_location="cpu").to(DEVICE)
    m_gpu.precision = "32-true"
    with _no_tf32():
        x_gpu, _, _ = m_gpu.generate(8, seed=1)
    err = (x_gpu.cpu() - x_cpu).abs().max().item()
    assert err < 2e-3, f"checkpoint sampled on GPU vs CPU: max |difference| {err:.3e}"


class SyncGuard(pl.Callback):
    """CUDA's sync debug mode set to "error" from the start of the second training step to the end
    of the last: a synchronising CUDA call there (``.item()``, a blocking copy, ``nonzero``, ...)
    raises at its call site. The first step (optimizer state, logging keys, the batch-size
    tensors) and the epoch's end (loss history, sample grid, checkpoint) may sync."""

    def __init__(self, n_steps: int):
        self.n_steps, self.guarded = n_steps, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx >= 1:
            torch.cuda.set_sync_debug_mode("error")
            self.guarded += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.n_steps - 1:
            torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, module, exception):
        torch.cuda.set_sync_debug_mode("default")


def test_no_host_sync_in_steady_state_training_steps(tmp_path):
    n = 6
    guard = SyncGuard(n)
    c = train_config(*RUN, f"trainer.limit_train_batches={n}", "trainer.limit_val_batches=0",
                     "trainer.log_every_n_steps=50")  # a logger's conversion to numbers syncs
    try:
        s = train(c, tmp_path / "run", callbacks=[guard])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert s["global_step"] == n and guard.guarded == n - 1
