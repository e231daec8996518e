"""``diffexp-report``'s picture of a sweep: cells averaged over seeds, the FID heatmap (with facets),
line plots for numeric and categorical keys, the pivot tables in report.md, --x/--y, the model
column, and the wandb summary run. Every sweep here is made of fake job folders with chosen FIDs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import matplotlib
import pytest
import yaml

from diffexp.cli.report import main
from diffexp.runs import report
from diffexp.runs.report import cells, collect, heatmap_axes, log_to_wandb, write_report

matplotlib.use("Agg")


def _job(root: Path, name: str, overrides: dict, fid: float | None = None, *, floor: float = 1.25,
         model: str | None = None, evals: list[str] | None = None, error: str | None = None) -> Path:
    """A multirun job folder: overrides, then error.txt, or summary.json and eval/.../metrics.json."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    if error is not None:
        (job / "error.txt").write_text(error)
        return job
    summary = {"wall_time_s": 50.0, "final_train_loss": 0.1, "final_val_loss": 0.2,
               "parameters": 1000, "epochs": 2}
    if model:
        summary["model"] = {"status": model, "dir": f"/models/{name}"}
    (job / "summary.json").write_text(json.dumps(summary))
    for label in evals or [""]:
        d = job / "eval" / label
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(
            {"fid": fid, "kid_mean": fid / 100, "kid_std": 0.002,
             "floor": {"fid": floor, "kid_mean": 0.0}, "n": 512, "nfe": 20, "sampler_name": "euler",
             "steps": 20, "wall_time_s": 5.0}))
    return job


def _fid(scale: float, rho: int, seed: int, schedule: str = "cosine") -> float:
    return 10 * scale + rho + 0.5 * seed ** 2 + (5.0 if schedule == "linear" else 0.0)


def _floor(seed: int) -> float:
    return 1.25 + 0.02 * seed


SCALES = [2, 0.5]  # job order on purpose not numeric order
RHOS = [3, 7]
SEEDS = [0, 1, 2]


def _seed_sweep(root: Path, *, failed: bool = True) -> Path:
    """data.scale x grid.rho x seed (12 jobs), plus one failed job at data.scale=4."""
    i = 0
    for scale in SCALES:
        for rho in RHOS:
            for seed in SEEDS:
                ov = {"data.scale": scale, "grid.rho": rho, "seed": seed}
                _job(root, f"{i}_data.scale={scale},grid.rho={rho},seed={seed}", ov,
                     _fid(scale, rho, seed), floor=_floor(seed))
                i += 1
    if failed:
        _job(root, f"{i}_data.scale=4,grid.rho=3,seed=0", {"data.scale": 4, "grid.rho": 3, "seed": 0},
             error="RuntimeError: CUDA out of memory")
    return root


def _three_key_sweep(root: Path) -> Path:
    """schedule (categorical, linear first) x data.scale x grid.rho, one seed."""
    i = 0
    for schedule in ["linear", "cosine"]:
        for scale in SCALES:
            for rho in RHOS:
                _job(root, f"{i}_schedule={schedule},data.scale={scale},grid.rho={rho}",
                     {"schedule": schedule, "data.scale": scale, "grid.rho": rho},
                     _fid(scale, rho, 0, schedule))
                i += 1
    return root


def _md_tables(md: str, heading: str) -> list[list[list[str]]]:
    """The markdown tables that follow ``heading`` (up to the next ``## `` heading), cells split."""
    part = md.split(heading, 1)[1].split("\n## ", 1)[0]
    tables, current = [], []
    for line in part.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _pm(values: list[float]) -> str:
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.4g}"


def test_cells_average_over_seeds_and_leave_failed_jobs_out(tmp_path):
    rows, swept = collect(_seed_sweep(tmp_path))
    assert swept == ["data.scale", "grid.rho", "seed"]
    cell_rows, axes = cells(rows, swept)
    assert axes == ["data.scale", "grid.rho"]  # seed is no axis
    assert len(cell_rows) == 4
    # ordered numerically by data.scale, then grid.rho, although the jobs ran 2 before 0.5
    assert [tuple(c["overrides"].values()) for c in cell_rows] == [
        ("0.5", "3"), ("0.5", "7"), ("2", "3"), ("2", "7")]
    for c in cell_rows:
        scale, rho = float(c["overrides"]["data.scale"]), int(c["overrides"]["grid.rho"])
        fids = [_fid(scale, rho, s) for s in SEEDS]
        assert c["n_seeds"] == 3 and sorted(c["seeds"]) == ["0", "1", "2"]
        assert c["fid"] == pytest.approx(statistics.mean(fids))
        assert c["fid_std"] == pytest.approx(statistics.stdev(fids))
        assert c["kid_mean"] == pytest.approx(statistics.mean(f / 100 for f in fids))
        assert c["kid_mean_std"] == pytest.approx(statistics.stdev(f / 100 for f in fids))
        assert c["floor_fid"] == pytest.approx(statistics.mean(_floor(s) for s in SEEDS))
        assert c["floor_fid_std"] == pytest.approx(statistics.stdev(_floor(s) for s in SEEDS))
    # the failed job is a row, but in no cell
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["overrides"]["data.scale"] == "4"
    assert all(c["overrides"]["data.scale"] != "4" for c in cell_rows)
    assert sum(c["n_seeds"] for c in cell_rows) == 12


def test_one_seed_has_no_std(tmp_path):
    _job(tmp_path, "0_x=1", {"x": 1, "seed": 0}, 10.0)
    _job(tmp_path, "1_x=2", {"x": 2, "seed": 0}, 20.0)
    _job(tmp_path, "2_x=2", {"x": 2, "seed": 1}, 24.0)
    cell_rows, axes = cells(*collect(tmp_path))
    assert axes == ["x"]
    by = {c["overrides"]["x"]: c for c in cell_rows}
    assert by["1"]["fid"] == 10.0 and by["1"]["fid_std"] is None and by["1"]["n_seeds"] == 1
    assert by["2"]["fid"] == 22.0 and by["2"]["fid_std"] == pytest.approx(statistics.stdev([20, 24]))


def test_report_with_seeds_two_keys_heatmap_pivot_and_lines(tmp_path):
    root = _seed_sweep(tmp_path / "sweep")
    files = write_report(root)
    assert files["heatmap"] == root / "heatmap.png" and files["heatmap"].stat().st_size > 1000
    assert files["fid_vs_data.scale"].is_file() and files["fid_vs_grid.rho"].is_file()
    assert not (root / "fid_vs_seed.png").exists() and "fid_vs_seed" not in files
    md = files["md"].read_text()
    assert "13 job(s), 12 ok, 1 failed." in md
    # per-job table: every job, the failed one with its error
    jobs = _md_tables(md, "# Report")[0]
    assert len(jobs) == 1 + 13 and "seed" in jobs[0]
    failed_row = next(r for r in jobs[1:] if r[1] == "failed")
    assert "CUDA out of memory" in failed_row[jobs[0].index("error")]
    # cells table: mean ± std and the number of seeds, no seed column, no failed job
    cell_table = _md_tables(md, "## Cells")[0]
    assert cell_table[0] == ["data.scale", "grid.rho", "fid", "kid_mean", "floor_fid", "n_seeds"]
    assert len(cell_table) == 1 + 4 and all(r[0] != "4" for r in cell_table[1:])
    first = cell_table[1]
    assert first[:2] == ["0.5", "3"] and first[-1] == "3"
    assert first[2] == _pm([_fid(0.5, 3, s) for s in SEEDS])
    # pivot: rows grid.rho, columns data.scale (numeric order), mean ± std in each cell
    (pivot,) = _md_tables(md, "## FID pivot")
    assert pivot[0] == ["grid.rho \\ data.scale", "0.5", "2"]
    assert [r[0] for r in pivot[1:]] == ["3", "7"]
    for r in pivot[1:]:
        for scale, got in zip([0.5, 2], r[1:]):
            assert got == _pm([_fid(scale, int(r[0]), s) for s in SEEDS])
    # the heatmap's figure: one panel, the same numbers, the floor in the title
    import matplotlib.pyplot as plt

    cell_rows, axes = cells(*collect(root))
    hm = heatmap_axes(cell_rows, axes)
    assert hm == ("data.scale", "grid.rho", [])
    fig = report._heatmap_figure(plt, cell_rows, *hm, True)
    panel = fig.axes[0]
    texts = {t.get_text() for t in panel.texts}
    assert f"{statistics.mean(_fid(2, 7, s) for s in SEEDS):.4g}\n± " \
           f"{statistics.stdev(_fid(2, 7, s) for s in SEEDS):.4g}" in texts
    assert f"floor {statistics.mean(_floor(s) for s in SEEDS):.4g}" in fig._suptitle.get_text()
    plt.close(fig)


def test_floor_range_in_title_when_floors_differ(tmp_path):
    _job(tmp_path, "0", {"a": 1, "b": "u"}, 10.0, floor=1.2)
    _job(tmp_path, "1", {"a": 2, "b": "v"}, 20.0, floor=1.4)
    import matplotlib.pyplot as plt

    cell_rows, axes = cells(*collect(tmp_path))
    fig = report._heatmap_figure(plt, cell_rows, *heatmap_axes(cell_rows, axes), False)
    assert "floor 1.2–1.4" in fig._suptitle.get_text()
    plt.close(fig)


def test_three_keys_make_facets_and_categorical_lines(tmp_path):
    import matplotlib.pyplot as plt

    root = _three_key_sweep(tmp_path)
    files = write_report(root)
    assert files["heatmap"].is_file()
    for key in ("schedule", "data.scale", "grid.rho"):
        assert files[f"fid_vs_{key}"] == root / f"fid_vs_{key}.png" and files[f"fid_vs_{key}"].is_file()
    md = files["md"].read_text()
    assert "±" not in md.split("## Cells", 1)[1]  # one seed: no std anywhere
    # one pivot per schedule, in job order (linear first), with the right number in each cell
    pivot_part = md.split("## FID pivot", 1)[1]
    assert pivot_part.index("### schedule=linear") < pivot_part.index("### schedule=cosine")
    pivots = _md_tables(md, "## FID pivot")
    assert len(pivots) == 2
    for schedule, pivot in zip(["linear", "cosine"], pivots):
        assert pivot[0] == ["grid.rho \\ data.scale", "0.5", "2"]
        for r in pivot[1:]:
            assert r[1:] == [f"{_fid(s, int(r[0]), 0, schedule):.4g}" for s in (0.5, 2)]
    # the heatmap: one panel per schedule, one colour scale for both
    cell_rows, axes = cells(*collect(root))
    hm = heatmap_axes(cell_rows, axes)
    assert hm == ("data.scale", "grid.rho", ["schedule"])
    fig = report._heatmap_figure(plt, cell_rows, *hm, False)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["schedule=linear", "schedule=cosine"]
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in panels}
    fids = [c["fid"] for c in cell_rows]
    assert norms == {(min(fids), max(fids))}
    assert f"{_fid(0.5, 3, 0, 'linear'):.4g}" in {t.get_text() for t in panels[0].texts}
    assert f"{_fid(0.5, 3, 0, 'cosine'):.4g}" in {t.get_text() for t in panels[1].texts}
    plt.close(fig)
    # categorical line plot: schedule on a categorical axis, one line per (data.scale, grid.rho)
    fig = report._line_figure(plt, cell_rows, axes, "schedule", False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["linear", "cosine"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["data.scale=0.5 grid.rho=3", "data.scale=0.5 grid.rho=7",
                      "data.scale=2 grid.rho=3", "data.scale=2 grid.rho=7", "real-vs-real floor"]
    line = ax.containers[0].lines[0]
    assert list(line.get_xdata()) == [0, 1]
    assert list(line.get_ydata()) == [_fid(0.5, 3, 0, "linear"), _fid(0.5, 3, 0, "cosine")]
    plt.close(fig)
    # numeric line plot: data.scale on a numeric axis
    fig = report._line_figure(plt, cell_rows, axes, "data.scale", False)
    line = fig.axes[0].containers[0].lines[0]
    assert list(line.get_xdata()) == [0.5, 2.0]
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "grid.rho=3 schedule=linear"
    plt.close(fig)


def test_one_key_has_lines_with_error_bars_but_no_heatmap(tmp_path):
    import matplotlib.pyplot as plt

    for i, (x, seed) in enumerate([(1, 0), (1, 1), (3, 0), (3, 1)]):
        _job(tmp_path, f"{i}_x={x},seed={seed}", {"x": x, "seed": seed}, 10.0 * x + seed)
    files = write_report(tmp_path)
    assert "heatmap" not in files and not (tmp_path / "heatmap.png").exists()
    assert files["fid_vs_x"].is_file() and not (tmp_path / "fid_vs_seed.png").exists()
    md = files["md"].read_text()
    assert "## Cells" in md and "## FID pivot" not in md
    first = _md_tables(md, "## Cells")[0][1]
    assert first == ["1", _pm([10.0, 11.0]), _pm([0.1, 0.11]), "1.25 ± 0", "2"]
    cell_rows, axes = cells(*collect(tmp_path))
    assert heatmap_axes(cell_rows, axes) is None
    fig = report._line_figure(plt, cell_rows, axes, "x", True)
    bars = fig.axes[0].containers[0]
    assert bars.has_yerr
    assert list(bars.lines[0].get_ydata()) == [10.5, 30.5]
    plt.close(fig)


def test_x_and_y_choose_the_axes(tmp_path, capsys):
    root = _three_key_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    files = write_report(root, out, x="schedule", y="data.scale")
    assert files["heatmap"] == out / "heatmap.png" and files["heatmap"].is_file()
    md = files["md"].read_text()
    pivots = _md_tables(md, "## FID pivot")
    assert "### grid.rho=3" in md and "### grid.rho=7" in md and len(pivots) == 2
    for rho, pivot in zip([3, 7], pivots):
        assert pivot[0] == ["data.scale \\ schedule", "linear", "cosine"]
        assert [r[0] for r in pivot[1:]] == ["0.5", "2"]
        for r in pivot[1:]:
            assert r[1:] == [f"{_fid(float(r[0]), rho, 0, s):.4g}" for s in ("linear", "cosine")]
    # the same from the command line, and only --y: x is then the first numeric other key
    main([str(root), "--out", str(tmp_path / "cli"), "--y", "data.scale"])
    md = (tmp_path / "cli" / "report.md").read_text()
    assert "| data.scale \\ grid.rho | 3 | 7 |" in md and "### schedule=linear" in md
    assert "[diffexp] heatmap:" in capsys.readouterr().out
    # a key that is no axis stops before anything is written
    with pytest.raises(SystemExit) as e:
        main([str(root), "--out", str(tmp_path / "bad"), "--x", "seed"])
    assert e.value.code == 2 and "seed" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "report.md").exists()
    with pytest.raises(ValueError, match="not a swept key"):
        write_report(root, tmp_path / "bad", x="nope")


def test_default_x_is_the_first_numeric_key(tmp_path):
    i = 0
    for backbone in ["unet", "dit"]:
        for scale in [1, 0.5]:
            _job(tmp_path, f"{i}", {"backbone": backbone, "data.scale": scale}, 10.0 + i)
            i += 1
    cell_rows, axes = cells(*collect(tmp_path))
    assert axes == ["backbone", "data.scale"]
    assert heatmap_axes(cell_rows, axes) == ("data.scale", "backbone", [])
    assert heatmap_axes(cell_rows, axes, x="backbone") == ("backbone", "data.scale", [])
    md = write_report(tmp_path)["md"].read_text()
    (pivot,) = _md_tables(md, "## FID pivot")
    assert pivot == [["backbone \\ data.scale", "0.5", "1"], ["unet", "11", "10"], ["dit", "13", "12"]]


def test_model_status_column(tmp_path):
    _job(tmp_path, "0_x=1", {"x": 1}, 10.0, model="trained", evals=["euler", "heun"])
    _job(tmp_path, "1_x=2", {"x": 2}, 20.0, model="reused", evals=["euler", "heun"])
    _job(tmp_path, "2_x=3", {"x": 3}, 30.0, model="reused", evals=["euler", "heun"])
    rows, _ = collect(tmp_path)
    assert [r["model"] for r in rows] == ["trained"] * 2 + ["reused"] * 4
    files = write_report(tmp_path)
    md = files["md"].read_text()
    assert "6 job(s), 6 ok, 0 failed. Models: 1 trained, 2 reused." in md  # counted per job
    jobs = _md_tables(md, "# Report")[0]
    col = jobs[0].index("model")
    assert [r[col] for r in jobs[1:]] == ["trained"] * 2 + ["reused"] * 4
    with open(files["csv"]) as f:
        got = list(csv.DictReader(f))
    assert [r["model"] for r in got] == ["trained"] * 2 + ["reused"] * 4
    assert got[0]["model_dir"] == "/models/0_x=1"
    # a reusing job's wall time is its own (job_wall_time_s), not the model's training plus eval
    assert [r["wall_time_s"] for r in rows] == [55.0] * 6  # 50 s training + 5 s eval
    summary = json.loads((tmp_path / "1_x=2" / "summary.json").read_text())
    (tmp_path / "1_x=2" / "summary.json").write_text(json.dumps({**summary,
                                                                 "job_wall_time_s": 7.5}))
    rows, _ = collect(tmp_path)
    assert [r["wall_time_s"] for r in rows] == [55.0] * 2 + [7.5] * 2 + [55.0] * 2
    assert rows[2]["train_s"] == 50.0  # the model's training time stays on record
    # without the record, no column
    _job(tmp_path / "old", "0_x=1", {"x": 1}, 10.0)
    assert "model" not in _md_tables(write_report(tmp_path / "old")["md"].read_text(), "# Report")[0][0]


def test_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert report._wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert report._wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report._wandb_mode("auto") == "offline"  # the environment wins
    assert report._wandb_mode("online") == "online"


def test_log_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = _seed_sweep(tmp_path / "sweep_scale_rho", failed=False)
    files = write_report(root)
    rows, swept = collect(root)
    run_dir = log_to_wandb(root, files, rows, swept)
    runs = list((root / "wandb").glob("offline-run-*"))
    assert [p.resolve() for p in runs] == [run_dir.resolve()]
    media = run_dir / "files" / "media"
    table = json.loads(next((media / "table").glob("cells_*.table.json")).read_text())
    assert table["columns"][:4] == ["data.scale", "grid.rho", "fid", "fid_std"]
    assert "n_seeds" in table["columns"] and len(table["data"]) == 4
    first = dict(zip(table["columns"], table["data"][0]))
    assert first["data.scale"] == 0.5 and first["grid.rho"] == 3 and first["n_seeds"] == 3
    assert first["fid"] == pytest.approx(statistics.mean(_fid(0.5, 3, s) for s in SEEDS))
    images = {p.name.split("_0_")[0] for p in (media / "images").glob("*.png")}
    assert {"heatmap", "fid_vs_data.scale", "fid_vs_grid.rho"} <= images
    record = next(run_dir.glob("*.wandb")).read_bytes()
    assert b"fid_best" in record and b"report-sweep_scale_rho" in record
    # nothing in the report folder looks like a job to the next report
    assert len(collect(root)[0]) == 12
