"""bf16 on the CPU: the autocast a run's precision asks for, sampling under it (fp32 around the
network), eval.py's eval.precision and the warning for CPUs that would emulate bf16."""

import pytest
import torch

from diffexp import precision
from diffexp.config import ConfigError, validate_train_config
from diffexp.module import DiffusionModule
from diffexp.runs.evaluate import run_eval
from diffexp.runs.train import train

from .helpers import TINY_MODEL, compose_train, eval_config

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _module(prec: str) -> DiffusionModule:
    c = validate_train_config(compose_train(
        ["data=synthetic", "logger=none", *TINY_MODEL, "trainer.accelerator=cpu",
         f"trainer.precision={prec}", "train.batch_size=16", "sampler=dpmpp_2m",
         "sampler.steps=4"]))
    torch.manual_seed(0)
    m = DiffusionModule.from_config(c)
    with torch.no_grad():  # the output layer starts at zero, which any precision computes exactly
        for p in m.net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    return m


@pytest.mark.parametrize("prec,dtype", [("bf16-mixed", torch.bfloat16),
                                        ("bf16-true", torch.bfloat16),
                                        ("32-true", torch.float32)])
def test_autocast_follows_the_precision_on_the_cpu(prec, dtype):
    conv = torch.nn.Conv2d(1, 4, 3)
    with precision.autocast("cpu", prec):
        out = conv(torch.randn(2, 1, 8, 8))
    assert out.dtype == dtype


def test_bf16_sampling_on_the_cpu_runs_the_network_in_bf16_and_stays_close_to_fp32():
    m = _module("32-true")
    assert m.precision == "32-true"
    dtypes = []
    m.net.register_forward_hook(lambda mod, inputs, out: dtypes.append(out.dtype))
    x32, _, nfe = m.generate(16, seed=3, use_ema=False)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    m.precision = "bf16-mixed"  # a runtime choice, as eval.precision sets it
    x16, _, nfe16 = m.generate(16, seed=3, use_ema=False)
    assert set(dtypes) == {torch.bfloat16} and nfe16 == nfe == 4
    # the sampler's arithmetic stays fp32: the images come back in fp32
    assert x16.dtype == x32.dtype == torch.float32
    diff = (x16 - x32).abs().mean().item()
    scale = x32.abs().mean().item()
    # bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operation): the samples
    # differ, by about that order over a few network evaluations, not by the sample scale
    assert 0 < diff < 0.02 * scale, (diff, scale)  # measured: 0.004 x the scale


def test_a_bf16_run_samples_in_bf16():
    m = _module("bf16-mixed")
    assert m.precision == "bf16-mixed"
    dtypes = []
    m.net.register_forward_hook(lambda mod, inputs, out: dtypes.append(out.dtype))
    m.generate(4, seed=0, use_ema=False)
    assert set(dtypes) == {torch.bfloat16}


def test_cpu_bf16_warning_only_where_bf16_would_be_emulated(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not precision.cpu_has_native_bf16()
    msg = precision.cpu_bf16_warning("bf16-mixed", "cpu", "trainer.precision")
    assert msg.startswith("trainer.precision=bf16-mixed on a CPU without bf16 instructions")
    assert "trainer.precision=32-true" in msg and "\n" not in msg
    assert precision.cpu_bf16_warning("32-true", "cpu", "trainer.precision") is None
    assert precision.cpu_bf16_warning("bf16-mixed", "cuda", "trainer.precision") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.cpu_has_native_bf16()
    assert precision.cpu_bf16_warning("bf16-mixed", "cpu", "trainer.precision") is None


@pytest.mark.parametrize("given,meant", [("ckpt", "ckpt"), ("32-true", "32-true"), ("32", "32-true"),
                                         ("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed")])
def test_eval_precision_validates(tmp_path, given, meant):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    assert eval_config(f"ckpt={ckpt}", f"eval.precision={given}")["eval"]["precision"] == meant


@pytest.mark.parametrize("bad", ["16-mixed", "fp8", "auto"])
def test_bad_eval_precision_names_the_setting_and_the_choices(tmp_path, bad):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        eval_config(f"ckpt={ckpt}", f"eval.precision={bad}")
    msg = str(e.value)
    assert msg.startswith("eval.precision") and "ckpt" in msg and "bf16-mixed" in msg
    assert "\n" not in msg


def test_eval_precision_overrides_the_checkpoints(tmp_path, data_root):
    """A run trained in fp32, scored as trained and in bf16: the metrics record which, and the
    bf16 scores differ from the fp32 ones (the network really ran in bf16) by a small amount."""
    c = validate_train_config(compose_train(
        ["data=synthetic", "debug=fast", "logger=none", "train.batch_size=16", *TINY_MODEL,
         "trainer.accelerator=cpu", "sampler=euler", "sampler.steps=3"]))
    train(c, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    base = [f"ckpt={ckpt}", "logger=none", "eval.n_samples=32", "eval.batch_size=16",
            "eval.floor=false", "eval.diagnostics=false", f"data_root={data_root}"]
    as_trained = run_eval(eval_config(*base), tmp_path / "fp32")
    in_bf16 = run_eval(eval_config(*base, "eval.precision=bf16-mixed"), tmp_path / "bf16")
    assert (as_trained["network_precision"], in_bf16["network_precision"]) == ("32-true", "bf16-mixed")
    assert in_bf16["fid"] != as_trained["fid"]
    assert abs(in_bf16["fid"] - as_trained["fid"]) < 0.1 * as_trained["fid"]
