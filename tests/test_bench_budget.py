"""The two load benchmarks run end to end at a tiny size and report what they measured:
scripts/bench_budget.py (a budgeted run idle and beside CPU burners; its JSON rows agree with the
runs' own summaries, and its table's ratios are the rows' divisions) and
scripts/bench_threads_load.py (one cell's median and max, one as large as the other)."""

from __future__ import annotations

import json
import re

import pytest

from .helpers import REPO, run_cli

pytestmark = pytest.mark.slow  # two budgeted runs of some 20 s each, with start-up


def test_bench_budget_rows_are_the_runs_own_numbers(tmp_path):
    out_dir = tmp_path / "bench"
    tiny = ["data=synthetic", "data.subset=400", "data.val_size=40", "model.widths=[16,32]",
            "model.attn_levels=[1]", "train.n_sample_images=4", "sampler.steps=2", "data.pad=2"]
    r = run_cli("scripts/bench_budget.py", "--out", str(out_dir), "--budget", "12",
                "--burst-s", "4", "--conditions", "idle,burst", "--no-eval", "--extra", *tiny,
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((out_dir / "bench_budget.json").read_text())
    rows = {row["label"]: row for row in record["conditions"]}
    assert set(rows) == {"idle", "burst"} and record["budget_s"] == 12.0
    for label, row in rows.items():
        summary = json.loads((out_dir / label / "summary.json").read_text())
        tb = summary["time_budget"]
        assert row["steps"] == summary["global_step"] == tb["steps"] == row["planned"]
        assert row["train_s"] == tb["train_s"] > 0
        assert row["train_over_budget"] == pytest.approx(tb["train_s"] / 12.0, abs=1e-3)
        assert row["fid"] is None  # --no-eval
    # the printed table: each run's steps against the idle run's
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("| burst |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[7]) == pytest.approx(rows["burst"]["steps"] / rows["idle"]["steps"],
                                            abs=1e-3)


def test_bench_threads_load_reports_one_cell():
    r = run_cli("scripts/bench_threads_load.py", "--threads", "1", "--burners", "0",
                "--steps", "3", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"\| 1 \| 0 \| ([0-9.]+) \| ([0-9.]+) \| 1\.00x \|", r.stdout)
    assert m, r.stdout
    median, worst = float(m.group(1)), float(m.group(2))
    assert 0 < median <= worst
    assert (REPO / "scripts" / "bench_threads_load.py").is_file()
