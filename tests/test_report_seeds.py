"""``diffexp-report`` with the metrics beyond FID: precision/recall/density/coverage and class
balance columns, mean ± std over a job's eval.seeds (pooled with a swept ``seed``), and
``--baseline`` marking the differences larger than twice their standard error. Fake job folders
with chosen numbers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import matplotlib
import pytest
import yaml

from diffexp.cli.report import main
from diffexp.runs.report import cells, collect, difference, find_baseline, write_report

matplotlib.use("Agg")

METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_tv",
           "class_confidence")


def _scores(fid: float, recall: float) -> dict:
    return {"fid": fid, "kid_mean": fid / 100, "kid_std": 0.002, "precision": 0.7,
            "recall": recall, "density": 0.9, "coverage": 0.8, "class_tv": 0.05,
            "class_confidence": 0.9, "class_hist": [50, 50]}


def _eval_job(root: Path, name: str, overrides: dict, per_seed: list[tuple[float, float]]) -> Path:
    """An eval job folder whose metrics.json has one entry per (fid, recall) in ``per_seed``, laid
    out as cli/eval.py writes it (means at the top, per_seed, seed_std)."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    seeds = list(range(len(per_seed)))
    records = [{"seed": s, **_scores(f, r), "floor": {**_scores(1.0 + 0.1 * s, 0.8)}}
               for s, (f, r) in zip(seeds, per_seed)]

    def mean(key, src=lambda d: d):
        return statistics.mean(src(d)[key] for d in records)

    def std(key):
        return statistics.stdev(d[key] for d in records) if len(records) > 1 else None

    m = {k: mean(k) for k in METRICS}
    m.update(n=512, nfe=20, sampler_name="euler", steps=20, wall_time_s=5.0, seeds=seeds,
             seed=seeds[0], per_seed=records, seed_std={k: std(k) for k in METRICS}
             if len(records) > 1 else None,
             floor={k: mean(k, lambda d: d["floor"]) for k in METRICS})
    (job / "metrics.json").write_text(json.dumps(m))
    return job


A = [(20.0, 0.50), (21.0, 0.52), (22.0, 0.51)]     # sampler=a: FID 21 ± 1
B = [(20.5, 0.30), (21.5, 0.31), (22.5, 0.29)]     # sampler=b: FID +0.5 (noise), recall -0.21
C = [(30.0, 0.50), (30.5, 0.50), (31.0, 0.50)]     # sampler=c: FID +9.25


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, (name, vals) in enumerate((("a", A), ("b", B), ("c", C))):
        _eval_job(root, f"{i}_sampler={name}", {"sampler": name}, vals)
    return root


def test_eval_seeds_of_a_job_give_mean_and_std(sweep):
    rows, swept = collect(sweep)
    assert swept == ["sampler"]
    cell_rows, axes = cells(rows, swept)
    a = next(c for c in cell_rows if c["overrides"]["sampler"] == "a")
    assert a["n_seeds"] == 3 and a["seeds"] == ["0", "1", "2"]
    assert a["fid"] == pytest.approx(21.0) and a["fid_std"] == pytest.approx(1.0)
    assert a["recall"] == pytest.approx(0.51) and a["recall_std"] == pytest.approx(0.01)
    # the floor: several real draws, reported the same way
    assert a["floor_fid"] == pytest.approx(1.1) and a["floor_fid_std"] == pytest.approx(0.1)
    assert a["floor_recall_std"] == pytest.approx(0.0)


def test_a_swept_seed_pools_with_eval_seeds(tmp_path):
    # the same six values, once as 2 jobs x 3 eval.seeds, once as 6 jobs of one seed
    vals = A + B
    pooled = tmp_path / "pooled"
    _eval_job(pooled, "0_seed=0", {"seed": 0, "sampler": "x"}, A)
    _eval_job(pooled, "1_seed=1", {"seed": 1, "sampler": "x"}, B)
    _eval_job(pooled, "2_seed=0,sampler=y", {"seed": 0, "sampler": "y"}, C)
    single = tmp_path / "single"
    for i, v in enumerate(vals):
        _eval_job(single, f"{i}_seed={i}", {"seed": i, "sampler": "x"}, [v])
    _eval_job(single, "9_seed=0,sampler=y", {"seed": 0, "sampler": "y"}, C)
    (cp, *_), _ = cells(*collect(pooled))
    (cs, *_), _ = cells(*collect(single))
    assert cp["n_seeds"] == cs["n_seeds"] == 6
    for m in ("fid", "recall", "precision"):
        assert cp[m] == pytest.approx(cs[m]) and cp[f"{m}_std"] == pytest.approx(cs[f"{m}_std"])
    assert cp["fid_std"] == pytest.approx(statistics.stdev(f for f, _ in vals))


def test_difference_and_its_standard_error():
    base = {"fid": 21.0, "fid_std": 1.0, "fid_n": 3}
    cell = {"fid": 30.5, "fid_std": 0.5, "fid_n": 3}
    d = difference(cell, base, "fid")
    se = math.sqrt(1.0 / 3 + 0.25 / 3)
    assert d["diff"] == pytest.approx(9.5) and d["se"] == pytest.approx(se) and d["significant"]
    near = difference({"fid": 21.5, "fid_std": 1.0, "fid_n": 3}, base, "fid")
    assert near["se"] == pytest.approx(math.sqrt(2 / 3)) and near["significant"] is False
    # one seed on a side: a difference but no test
    one = difference({"fid": 40.0, "fid_std": None, "fid_n": 1}, base, "fid")
    assert one == {"diff": 19.0, "se": None, "significant": None}
    assert difference({"fid": 1.0}, base, "recall") is None


def test_report_shows_new_metrics_and_marks_against_the_baseline(sweep):
    files = write_report(sweep, baseline="sampler=a")
    md = files["md"].read_text()
    cells_part = md.split("## Cells", 1)[1].split("\n## ", 1)[0]
    head = next(line for line in cells_part.splitlines() if line.startswith("| sampler"))
    for col in ("precision", "recall", "density", "coverage", "class_tv", "class_confidence",
                "floor_fid", "floor_recall", "n_seeds"):
        assert col in head, col
    assert "a (baseline)" in cells_part
    assert "21 ± 1 " in cells_part
    base_part = md.split("## Against the baseline", 1)[1]
    row_b = next(line for line in base_part.splitlines() if line.startswith("| b "))
    row_c = next(line for line in base_part.splitlines() if line.startswith("| c "))
    cols = [c.strip() for c in next(line for line in base_part.splitlines()
                                    if line.startswith("| sampler")).strip("|").split("|")]

    def entry(row, col):
        return [c.strip() for c in row.strip().strip("|").split("|")][cols.index(col)]

    # b: FID +0.5 within noise (not marked), recall -0.21 far outside (marked)
    assert "(>2SE)" not in entry(row_b, "fid") and entry(row_b, "fid").startswith("+0.5 ± ")
    assert "(>2SE)" in entry(row_b, "recall") and "-0.21" in entry(row_b, "recall")
    # c: FID +9.25 marked, recall unchanged not marked
    assert "(>2SE)" in entry(row_c, "fid") and "(>2SE)" not in entry(row_c, "recall")
    # per-job table: mean ± std over the job's seeds
    assert "20.5 ± 0.01" not in md and "0.51 ± 0.01" in md
    assert files["precision_recall"].is_file()
    csv_head = files["csv"].read_text().splitlines()[0].split(",")
    assert {"precision", "recall", "n_seeds", "fid_seed_std", "recall_seed_std"} <= set(csv_head)


@pytest.mark.parametrize("spec, needle", [
    ("sampler=zzz", "matches no cell; cells: sampler=a; sampler=b; sampler=c"),
    ("steps=3", "steps is not a swept key other than seed (axes: sampler)"),
    ("nojob", "matches no cell"),
])
def test_bad_baseline_is_one_line_and_exit_2(sweep, spec, needle, capsys):
    with pytest.raises(ValueError, match="--baseline"):
        find_baseline(cells(*collect(sweep))[0], ["sampler"], spec)
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--baseline", spec])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (sweep / "report.md").exists()  # nothing written before the check


def test_baseline_by_job_folder(sweep):
    cell_rows, axes = cells(*collect(sweep))
    assert find_baseline(cell_rows, axes, "2_sampler=c")["overrides"] == {"sampler": "c"}
