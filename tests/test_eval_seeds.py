"""eval.py beyond one FID: eval.seeds (mean ± std over sampling seeds, the floor too), precision /
recall / density / coverage and class balance in metrics.json and in the logged summary, the
class-sorted grid, per-step precision/recall, and one-line errors for bad eval.seeds / prdc_k."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from diffexp.config import ConfigError, validate_eval_config, validate_train_config
from diffexp.evaluation import mean_per_step, proxy_log_dict, summarize_seeds
from diffexp.runs.evaluate import summary_metrics
from diffexp.runs.report import cells, collect, write_report
from diffexp.runs.train import train

from .helpers import TINY_MODEL, compose_eval, compose_train, run_cli

NEW = ("precision", "recall", "density", "coverage", "class_tv", "class_confidence")


@pytest.mark.parametrize("override, needle", [
    ("eval.seeds=[]", "eval.seeds must be null (the top-level seed) or a non-empty list"),
    ("eval.seeds=[0,a]", "eval.seeds must be null"),
    ("eval.seeds=[0,0]", "eval.seeds must be null"),
    ("eval.seeds=[-1]", "eval.seeds must be null"),
    ("eval.seeds=3", "e.g. eval.seeds=[0,1,2] (got 3)"),
    ("eval.seeds=[1.5]", "eval.seeds must be null"),
    ("eval.prdc_k=0", "eval.prdc_k must be an int >= 1 and below eval.n_samples=2048 (got 0)"),
    ("eval.prdc_k=2048", "eval.prdc_k must be an int >= 1"),
    ("eval.prdc_k=abc", "eval.prdc_k"),
])
def test_bad_seeds_and_k_name_the_setting(tmp_path, override, needle):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        validate_eval_config(compose_eval([f"ckpt={ckpt}", override]))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_good_seeds_validate(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    c = validate_eval_config(compose_eval([f"ckpt={ckpt}", "eval.seeds=[2,0,1]", "eval.prdc_k=5"]))
    assert c["eval"]["seeds"] == [2, 0, 1] and c["eval"]["prdc_k"] == 5
    assert validate_eval_config(compose_eval([f"ckpt={ckpt}"]))["eval"]["seeds"] is None


def test_cli_empty_seeds_exits_2_with_one_line(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")
    r = run_cli("eval.py", f"ckpt={ckpt}", "eval.seeds=[]", "logger=none", cwd=tmp_path)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1 and "eval.seeds" in err[0], r.stderr


def test_summarize_seeds_closed_form():
    per = [{"seed": 0, "fid": 1.0, "class_hist": [2, 0], "n": 4},
           {"seed": 1, "fid": 3.0, "class_hist": [1, 1], "n": 4}]
    mean, std = summarize_seeds(per)
    assert mean == {"fid": 2.0, "class_hist": [1.5, 0.5]}
    assert std["fid"] == pytest.approx(statistics.stdev([1, 3]))
    assert std["class_hist"] == pytest.approx([statistics.stdev([2, 1]), statistics.stdev([0, 1])])
    assert summarize_seeds(per[:1]) == ({"fid": 1.0, "class_hist": [2.0, 0.0]}, None)
    with pytest.raises(ValueError):
        summarize_seeds([])


def test_mean_per_step_over_seeds():
    rows = [{"seed": s, "step": i, "sigma": 1.0 / i, "fid": 10.0 * i + s, "recall": 0.1 * s}
            for s in (0, 1) for i in (1, 2)]
    out = mean_per_step(rows)
    assert [r["step"] for r in out] == [1, 2] and out[0]["n_seeds"] == 2
    assert out[1]["fid"] == pytest.approx(20.5)
    assert out[1]["fid_seed_std"] == pytest.approx(statistics.stdev([20, 21]))
    assert out[0]["recall"] == pytest.approx(0.05)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("tinyrun")
    c = validate_train_config(compose_train(
        ["data=synthetic", "debug=fast", "train.batch_size=16", "sampler=euler", *TINY_MODEL]))
    train(c, run)
    return run / "checkpoints" / "last.ckpt"


def test_eval_with_seeds_end_to_end(tiny_ckpt, tmp_path, data_root):
    r = run_cli("eval.py", f"ckpt={tiny_ckpt}", "logger=csv", "eval.n_samples=24",
                "eval.batch_size=24", "eval.per_step=true", "sampler.steps=2", "eval.seeds=[0,1]",
                "eval.diagnostics=false", "hydra.run.dir=out", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [0, 1] and len(m["per_seed"]) == 2 and m["k"] == 3
    for key in ("fid", "kid_mean", *NEW):
        vals = [ps[key] for ps in m["per_seed"]]
        assert m[key] == pytest.approx(statistics.mean(vals)), key
        assert m["seed_std"][key] == pytest.approx(statistics.stdev(vals)), key
    for key in ("precision", "recall", "density", "coverage"):
        assert 0 <= m[key] and (m[key] <= 1 or key == "density")
    # the class histogram counts every image; the test split's labels are uniform
    assert all(sum(ps["class_hist"]) == 24 for ps in m["per_seed"])
    assert m["class_hist_reference"] == [0.1] * 10 and len(m["class_names"]) == 10
    # the floor: one real draw per seed, summarised the same way
    fl = m["floor"]
    assert fl["fid"] == pytest.approx(statistics.mean(ps["floor"]["fid"] for ps in m["per_seed"]))
    # the sample std (ddof=1) over the seeds' floors
    assert fl["seed_std"]["recall"] == pytest.approx(
        statistics.stdev(ps["floor"]["recall"] for ps in m["per_seed"]))
    assert m["per_seed"][0]["floor"]["fid"] != m["per_seed"][1]["floor"]["fid"]
    assert (out / "samples.png").is_file() and (out / "samples_by_class.png").is_file()
    rows = list(csv.DictReader(open(out / "per_step.csv")))
    assert [(r["seed"], r["step"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert {"precision", "recall", "density", "coverage"} <= set(rows[0])
    # the logged summary (csv logger here; wandb gets the same dict)
    logged = list(csv.DictReader(open(next((out / "csv").rglob("metrics.csv")))))[0]
    for key in ("eval/precision", "eval/recall", "eval/density", "eval/coverage", "eval/class_tv",
                "eval/class_confidence", "eval/fid_seed_std", "eval/recall_seed_std",
                "eval/floor_recall", "eval/class_hist/Trouser", "eval/n_seeds"):
        assert key in logged, key
    assert float(logged["eval/recall"]) == pytest.approx(m["recall"])
    # the report shows mean ± std over the job's seeds
    (cell,), _ = cells(*collect(out))
    assert cell["n_seeds"] == 2 and cell["fid_std"] == pytest.approx(m["seed_std"]["fid"])
    md = write_report(out)["md"].read_text()
    assert "class_tv" in md and "class_confidence" in md and "recall" in md


def test_summary_metrics_of_one_seed_has_no_std():
    result = {k: 0.5 for k in ("fid", "kid_mean", "kid_std", *NEW, "nfe", "images_per_s",
                               "wall_time_s")}
    result.update(seed_std=None, floor=None, class_names=["T-shirt/top", "b"], class_hist=[3, 1],
                  seeds=[0])
    flat = summary_metrics(result)
    assert flat["eval/recall"] == 0.5 and flat["eval/class_hist/T-shirt_top"] == 3
    assert not any(k.endswith("_seed_std") for k in flat) and flat["eval/n_seeds"] == 1


def test_proxy_log_dict_carries_precision_and_recall():
    m = {"fid": 12.0, "kid_mean": 0.1, "kid_std": 0.01, "precision": 0.6, "recall": 0.4}
    assert proxy_log_dict(m) == {"val/fid": 12.0, "val/kid": 0.1, "val/precision": 0.6,
                                 "val/recall": 0.4}
