"""Smoke test of scripts/bench.py in --quick mode on the CPU: every section is present, every
number is positive and finite, and each ratio is the division of the two measured medians."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics

import pytest

from .helpers import REPO

BENCH = REPO / "scripts" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("diffexp_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_ratio(e: dict, what: str) -> None:
    for key in ("diffexp", "bare", "ratio"):
        assert _positive_finite(e[key]), (what, key, e[key])
    assert e["diffexp"] == pytest.approx(statistics.median(e["diffexp_reps"]), rel=1e-12), what
    assert e["bare"] == pytest.approx(statistics.median(e["bare_reps"]), rel=1e-12), what
    assert e["ratio"] == pytest.approx(e["diffexp"] / e["bare"], rel=1e-12), what
    assert e["pass"] is (e["ratio"] >= e["threshold"]), what
    assert e["threshold"] == 0.95
    assert all(_positive_finite(v) for v in e["diffexp_reps"] + e["bare_reps"]), what
    assert e["cpu_ratio"] == pytest.approx(e["cpu_diffexp"] / e["cpu_bare"], rel=1e-12), what


def test_bench_quick_cpu(tmp_path, data_root, capsys):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(out),
                     "--data-root", str(data_root)])
    assert rc == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "train images/s" in printed and "FID evaluation" in printed

    for section in ("machine", "args", "config", "train", "sampling", "fid", "memory"):
        assert section in res, section
    m = res["machine"]
    assert m["device"] == "cpu" and m["torch_threads"] == 1 and m["cpu"] and m["torch"]

    t = res["train"]
    _check_ratio(t, "train")
    assert len(t["diffexp_reps"]) == len(t["bare_reps"]) == res["args"]["reps"] == 2
    assert t["optimizer"]["same_in_both"] is True
    assert t["optimizer"]["class"] == "Adam"
    # both paths ran the network alike (bench.py refuses a difference): unet_tiny's layout
    assert t["layout"] == {"memory_format": "contiguous", "compile": False}

    from diffexp import sampling

    samplers = res["sampling"]["samplers"]
    assert set(samplers) == set(sampling.SAMPLERS)
    for name, e in samplers.items():
        _check_ratio(e, name)
        assert e["nfe"] == sampling.nfe(name, res["sampling"]["steps"])
        assert _positive_finite(e["images_per_s"])

    f = res["fid"]
    assert f["n"] == res["args"]["fid_n"]
    for key in ("sample_time_s", "score_time_s", "total_time_s", "setup_time_s",
                "sample_images_per_s"):
        assert _positive_finite(f[key]), key
    assert f["total_time_s"] == pytest.approx(f["sample_time_s"] + f["score_time_s"])
    assert f["nfe"] == sampling.nfe(f["sampler"], f["steps"]) <= res["args"]["fid_nfe"]

    peaks = res["memory"]["peaks"]
    for key in ("train_diffexp", "train_bare", "sampling_diffexp", "sampling_bare_forward", "fid"):
        assert _positive_finite(peaks[key]), key


def test_ratio_entry_is_division_of_medians():
    bench = _load_bench()
    e = bench.ratio_entry([3.0, 1.0, 2.0], [4.0, 8.0, 2.0], "x/s")
    assert (e["diffexp"], e["bare"], e["ratio"], e["pass"]) == (2.0, 4.0, 0.5, False)
    assert bench.ratio_entry([1.0], [1.0], "x/s")["pass"] is True


def test_fid_steps_hits_the_nfe_target():
    bench = _load_bench()
    assert bench.fid_steps("ddim", 20) == 20
    assert bench.fid_steps("heun", 20) == 10  # NFE 2N - 1 = 19
    assert bench.fid_steps("euler", 1) == 1


@pytest.mark.parametrize("extra,variants", [([], ("contiguous", "channels_last")),
                                            (["--bf16"], ("fp32", "bf16 autocast"))])
def test_cpu_layout_bench_prints_every_variant_with_its_ratio(capsys, extra, variants):
    """scripts/bench_cpu_layout.py: one row per (part, variant, batch), positive images/s, and the
    ratio column is each row over the first row of its part."""
    spec = importlib.util.spec_from_file_location(
        "bench_cpu_layout", BENCH.with_name("bench_cpu_layout.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--widths", "8", "16", "--attn", "--patch", "2", "--train-batch", "2",
              "--infer-batches", "4", "8", "--threads", "1", "--rounds", "1", *extra])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "images/s" in ln]
    assert len(lines) == 2 + 2 * 2
    assert [ln.split(",")[-1].split()[0] for ln in lines[:2]] == [v.split()[0] for v in variants]
    ips = [float(ln.split("images/s")[0].split()[-1]) for ln in lines]
    ratios = [float(ln.rsplit("x", 1)[1]) for ln in lines]
    assert all(v > 0 for v in ips)
    assert ratios[0] == 1.0 and ratios[2] == 1.0
    assert ratios[1] == pytest.approx(ips[1] / ips[0], rel=0.02, abs=0.01)
    assert ratios[5] == pytest.approx(ips[5] / ips[2], rel=0.02, abs=0.01)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bare_loop_runs_the_network_in_the_modules_memory_format(monkeypatch, one_thread,
                                                                 channels_last):
    """diffexp.benchmarking.bare.train_bare: weights (and input) in channels_last when the module
    would use it (model.channels_last), and the layout reported for the benchmark to compare."""
    import torch

    import diffexp.build
    from diffexp.benchmarking.bare import layout_of, train_bare
    from diffexp.config import validate_train_config
    from diffexp.data import build_data

    from .helpers import TINY_MODEL, compose_train

    c = validate_train_config(compose_train(
        ["data=synthetic", "data.subset=32", "data.val_size=8", "train.batch_size=4", *TINY_MODEL,
         f"model.channels_last={str(channels_last).lower()}"]))
    seen = []
    real = diffexp.build.build_network

    def build_network(*a, **kw):
        net = real(*a, **kw)

        def record(mod, args):
            # a conv weight with several input channels (a 1-channel image is both formats)
            w = next(p for p in mod.parameters() if p.dim() == 4 and p.shape[1] > 1)
            x = args[0]
            seen.append((x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] == 1,
                         w.is_contiguous(memory_format=torch.channels_last)))
        net.register_forward_pre_hook(record)
        return net

    monkeypatch.setattr(diffexp.build, "build_network", build_network)
    res = train_bare(c, build_data(c["data"], train=True), torch.device("cpu"), warmup=2, n=2,
                     seed=0)
    fmt = "channels_last" if channels_last else "contiguous"
    assert res["layout"] == layout_of(c) == {"memory_format": fmt, "compile": False}
    assert len(seen) == 4 and all(s == (True, channels_last) for s in seen)
