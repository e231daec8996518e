"""The report of a folder of runs (``diffexp-report DIR``): the jobs of a multirun (or any folder
of runs) gathered into tables and plots.

A *job* is a folder holding ``.hydra/overrides.yaml``, ``metrics.json`` (eval), ``summary.json``
(train) or ``error.txt`` (a failed job). Each job becomes one row: its overrides, its status, and
its final numbers (FID, KID +- std, floor, NFE, model size, epochs, device, loss, wall times, and
whether the job trained its model or reused one trained earlier in the sweep). Train jobs that ran
an evaluation at the end keep it in ``eval/metrics.json`` inside their folder, or, with
``eval.samplers``, in ``eval/<label>/metrics.json``: one row per label then, with the label in the
``eval`` column.

Rows that differ only in ``seed`` form one *cell* (:func:`cells`): the mean and sample std (ddof=1)
over seeds of FID, KID, precision, recall, density, coverage, class TV, classifier confidence and
the floor, and the number of seeds. A job evaluated with several ``eval.seeds`` brings each seed's
values (``per_seed`` in its metrics.json), so both ways of sweeping the sampling seed, and their
mix, give the same statistics. The other swept keys are the *axes* of the picture; ``seed`` never
is one. ``--baseline SPEC`` picks one cell (``key=value,...`` over the axes, or a job folder) and
adds a table of every other cell's differences from it, marking those larger than twice their
combined standard error, ``2 sqrt(s1^2/n1 + s2^2/n2)``.

Writes into DIR (or ``--out``):

- ``report.md``: the per-job table (failed jobs included), the cell table and, with two or more
  axes, a pivot table of FID per cell (one per facet);
- ``report.csv``: the per-job table;
- ``heatmap.png`` (two or more axes): FID per cell, annotated with its value (mean ± std over
  seeds), lower is greener, one colour scale for all panels, the real-vs-real floor in the title.
  ``--x``/``--y`` pick its axes (default: x the first numeric axis, y the first other one); any
  further axes become facets, one panel per combination of their values;
- ``fid_vs_<key>.png`` for every axis with two or more values: FID against that key (numeric or
  categorical), one line per combination of the other axes, error bars over seeds;
- ``fid_vs_nfe.png`` (one line per sampler) when the jobs are evaluations;
- ``precision_recall.png`` when the jobs have precision and recall: one point per cell (± std over
  seeds) and the real-vs-real floor.

Numeric values are ordered numerically; categorical ones keep the order in which they first appear
in the jobs. ``--wandb`` also logs a summary run (:func:`log_to_wandb`): the cell table, the plots
and the best FID, grouped with the sweep's training runs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from ..files import atomic_write_csv, atomic_write_text

__all__ = ["collect", "cells", "value_order", "heatmap_axes", "write_report", "log_to_wandb"]

COLUMNS = ["job", "status", "model", "fid", "kid_mean", "kid_std", "floor_fid", "floor_kid",
           "precision", "recall", "density", "coverage", "class_tv", "class_confidence",
           "floor_precision", "floor_recall", "n_seeds", "n", "nfe", "sampler", "steps",
           "parameters", "epochs", "device", "final_train_loss", "final_val_loss", "train_s",
           "eval_s", "wall_time_s", "error"]

#: the metrics averaged over the seeds of a cell (one that no job has stays out of the tables)
CELL_METRICS = ("fid", "kid_mean", "floor_fid", "precision", "recall", "density", "coverage",
                "class_tv", "class_confidence", "floor_precision", "floor_recall")
#: metrics.json keys behind the floor_* metrics
FLOOR_KEYS = {"floor_fid": "fid", "floor_kid": "kid_mean", "floor_precision": "precision",
              "floor_recall": "recall"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _overrides(job: Path) -> dict[str, str]:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return {}
    out = {}
    for item in yaml.safe_load(f.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _job_dirs(root: Path) -> list[Path]:
    markers = {"metrics.json", "summary.json", "error.txt", "overrides.yaml"}
    jobs = set()
    for p in root.rglob("*"):
        if p.name in markers and p.is_file():
            job = p.parent.parent if p.parent.name == ".hydra" else p.parent
            if any(p.name == "eval" and (p.parent / "summary.json").exists()
                   for p in (job, job.parent)):
                continue  # a train job's own end-of-run evaluation: reported with the job
            jobs.add(job)
    return sorted(jobs, key=lambda j: (len(j.parts), _num_prefix(j.name), str(j)))


def _num_prefix(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def _end_evals(job: Path) -> list[tuple[str, dict | None]]:
    """A train job's end-of-run evaluations: [("", eval/metrics.json)] or one per eval/<label>/."""
    single = _read_json(job / "eval" / "metrics.json")
    if single is not None:
        return [("", single)]
    labelled = sorted((d.name, _read_json(d / "metrics.json"))
                      for d in (job / "eval").glob("*") if (d / "metrics.json").is_file())
    return labelled or [("", None)]


def collect(root: str | Path) -> tuple[list[dict], list[str]]:
    """Rows (one per job, or per job and end-of-run sampler) and the swept keys (overrides that
    vary between rows; ``eval`` is the end-of-run sampler label)."""
    root = Path(root)
    rows = []
    for job in _job_dirs(root):
        ov = _overrides(job)
        summary = _read_json(job / "summary.json")
        own = _read_json(job / "metrics.json")
        evals = [("", own)] if own is not None or summary is None else _end_evals(job)
        err = (job / "error.txt").read_text().strip() if (job / "error.txt").exists() else ""
        for label, metrics in evals:
            name = str(job.relative_to(root)) if job != root else "."
            row = {"job": name, "overrides": {**ov, **({"eval": label} if label else {})}}
            if err:
                row["status"], row["error"] = "failed", err
            elif metrics or summary:
                row["status"] = "ok"
            else:
                row["status"], row["error"] = "failed", "no result written (killed or still running)"
            if metrics:
                fl = metrics.get("floor") or {}
                model = metrics.get("model") or {}
                row.update({m: metrics.get(m) for m in CELL_METRICS if not m.startswith("floor")})
                row.update({m: fl.get(k) for m, k in FLOOR_KEYS.items()})
                row.update(_seed_stats(metrics))
                row.update(kid_std=metrics.get("kid_std"), n=metrics.get("n"),
                           nfe=metrics.get("nfe"), sampler=metrics.get("sampler_name"),
                           steps=metrics.get("steps"), parameters=model.get("parameters"),
                           epochs=model.get("epochs"), device=metrics.get("device"),
                           host=metrics.get("host"),
                           eval_s=metrics.get("wall_time_s"),
                           wall_time_s=metrics.get("wall_time_s"))
            if summary:
                row.update(final_train_loss=summary.get("final_train_loss"),
                           final_val_loss=summary.get("final_val_loss"),
                           train_s=summary.get("wall_time_s"))
                for key in ("parameters", "epochs", "device", "host"):
                    if row.get(key) is None:
                        row[key] = summary.get(key)
                trained = summary.get("model")
                if isinstance(trained, dict) and trained.get("status"):
                    row["model"], row["model_dir"] = trained["status"], trained.get("dir")
                row["wall_time_s"] = summary.get("wall_time_s") if not metrics else (
                    (summary.get("wall_time_s") or 0) + (metrics.get("wall_time_s") or 0))
                if summary.get("job_wall_time_s") is not None:
                    # a job of a shared-model sweep: what it took itself (train_s stays the
                    # model's training time, which a reusing job did not spend)
                    row["wall_time_s"] = summary["job_wall_time_s"]
            rows.append(row)
    keys = sorted({k for r in rows for k in r["overrides"]})
    swept = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    return rows, swept


def _seed_stats(metrics: dict) -> dict:
    """A job's per-seed values of every cell metric (``seed_values``), the std over its
    ``eval.seeds`` (``<metric>_seed_std``) and ``n_seeds`` (None for a single seed)."""
    per_seed = metrics.get("per_seed") or []
    if len(per_seed) < 2:
        return {}
    values = {}
    for m in CELL_METRICS:
        src = [(ps.get("floor") or {}) if m in FLOOR_KEYS else ps for ps in per_seed]
        key = FLOOR_KEYS.get(m, m)
        vals = [d.get(key) for d in src if d.get(key) is not None]
        if vals:
            values[m] = vals
    out = {"seed_values": values, "n_seeds": len(per_seed),
           "eval_seeds": [str(ps.get("seed", "")) for ps in per_seed]}
    out.update({f"{m}_seed_std": _mean_std(v)[1] for m, v in values.items()})
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _pm(mean, std) -> str:
    """``mean ± std``, or ``mean`` alone when there is no std (one seed)."""
    if mean is None:
        return ""
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {_fmt(std)}"


def _md(v) -> str:
    return _fmt(v).replace("|", "\\|")


def _mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the values that are numbers; std is None below two values."""
    vals = [f for f in (_float(v) for v in values) if f is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    if not all(math.isfinite(v) for v in vals):
        return mean, math.nan
    return mean, statistics.stdev(vals)


def _is_numeric(values) -> bool:
    values = list(values)
    return bool(values) and all(_float(v) is not None for v in values)


def value_order(values) -> list[str]:
    """The distinct values, sorted numerically when all are numbers, else in order of appearance."""
    distinct = list(dict.fromkeys(values))
    if _is_numeric(distinct):
        distinct.sort(key=_float)
    return distinct


def cells(rows: list[dict], swept: list[str]) -> tuple[list[dict], list[str]]:
    """Group the ok rows that have a FID into *cells*: rows whose overrides differ only in ``seed``.

    Returns ``(cell_rows, axes)``. ``axes`` are the swept keys other than ``seed``, in ``swept``'s
    order. Each cell row has ``overrides`` (axis -> value, ``""`` where a row lacks the key), the
    mean over its seeds of every :data:`CELL_METRICS` entry (``fid``, ``kid_mean``, ``floor_fid``,
    ``precision``, ...; None where no row has it), their sample std (ddof=1) as ``fid_std``,
    ``kid_mean_std``, ... (None with a single seed), the number of values as ``fid_n``, ...,
    ``n_seeds``, ``seeds`` and ``jobs``. A row evaluated with several ``eval.seeds`` adds each
    seed's value. Cells are ordered by their axis values (see :func:`value_order`)."""
    axes = [k for k in swept if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") != "ok" or _float(r.get("fid")) is None:
            continue
        groups.setdefault(tuple(r["overrides"].get(k, "") for k in axes), []).append(r)
    out = []
    for key, rs in groups.items():
        seeds = [s for r in rs for s in (r.get("eval_seeds") or [r["overrides"].get("seed", "")])]
        cell = {"overrides": dict(zip(axes, key)), "n_seeds": len(seeds), "seeds": seeds,
                "jobs": [r["job"] for r in rs]}
        for m in CELL_METRICS:
            # a job with several eval.seeds adds each seed's value, one without its own value
            vals = [v for r in rs for v in (r.get("seed_values") or {}).get(m, [r.get(m)])]
            cell[m], cell[f"{m}_std"] = _mean_std(vals)
            cell[f"{m}_n"] = sum(_float(v) is not None for v in vals)
        out.append(cell)
    orders = {k: value_order(c["overrides"][k] for c in out) for k in axes}
    out.sort(key=lambda c: tuple(orders[k].index(c["overrides"][k]) for k in axes))
    return out, axes


def heatmap_axes(cell_rows: list[dict], axes: list[str], x: str | None = None,
                 y: str | None = None) -> tuple[str, str, list[str]] | None:
    """``(x, y, facet_keys)`` of the heatmap, or None with fewer than two axes.

    By default x is the first axis whose values are all numbers (else the first axis) and y the
    first other axis; the remaining axes are facets. Raises ValueError for a key that is no axis."""
    for opt, key in (("--x", x), ("--y", y)):
        if key is not None and key not in axes:
            why = "seed is averaged over, not an axis" if key == "seed" else "not a swept key"
            raise ValueError(f"{opt} {key}: {why} (axes: {', '.join(axes) or 'none'})")
    if x is not None and x == y:
        raise ValueError(f"--x and --y both name {x}")
    if len(axes) < 2:
        return None
    if x is None:
        numeric = [k for k in axes if k != y and _is_numeric(c["overrides"][k] for c in cell_rows)]
        x = numeric[0] if numeric else next(k for k in axes if k != y)
    if y is None:
        y = next(k for k in axes if k != x)
    return x, y, [k for k in axes if k not in (x, y)]


def _facets(cell_rows: list[dict], keys: list[str]) -> list[tuple[str, list[dict]]]:
    """[(title "k=v k2=v2", cells)] for each combination of the facet keys' values that occurs."""
    orders = {k: value_order(c["overrides"][k] for c in cell_rows) for k in keys}
    groups: dict[tuple, list[dict]] = {}
    for c in cell_rows:
        groups.setdefault(tuple(c["overrides"][k] for k in keys), []).append(c)
    combos = sorted(groups, key=lambda t: tuple(orders[k].index(v) for k, v in zip(keys, t)))
    return [(" ".join(f"{k}={v}" for k, v in zip(keys, t)), groups[t]) for t in combos]


def _floor_text(cell_rows: list[dict]) -> str:
    """"floor F" (the cells' floors agree) or "floor a–b" (they differ)."""
    floors = [c["floor_fid"] for c in cell_rows if c.get("floor_fid") is not None]
    if not floors:
        return ""
    lo, hi = _fmt(min(floors)), _fmt(max(floors))
    return f"real-vs-real floor {lo}" if lo == hi else f"real-vs-real floor {lo}–{hi}"


def _pivot_md(cell_rows: list[dict], x: str, y: str, facet_keys: list[str], seeds: bool) -> list[str]:
    xs = value_order(c["overrides"][x] for c in cell_rows)
    ys = value_order(c["overrides"][y] for c in cell_rows)
    lines = ["", "## FID pivot", "",
             f"FID per cell: rows {y}, columns {x}"
             + (" (mean ± std over seeds)" if seeds else "")
             + (f", one table per {', '.join(facet_keys)}" if facet_keys else "") + "."]
    for title, cs in _facets(cell_rows, facet_keys):
        grid = {(c["overrides"][y], c["overrides"][x]): c for c in cs}
        if title:
            lines += ["", f"### {_md(title)}"]
        lines += ["", "| " + " | ".join([_md(f"{y} \\ {x}")] + [_md(v) for v in xs]) + " |",
                  "|" + "---|" * (len(xs) + 1)]
        for yv in ys:
            vals = [_pm(grid[yv, xv]["fid"], grid[yv, xv]["fid_std"]) if (yv, xv) in grid else ""
                    for xv in xs]
            lines.append("| " + " | ".join([_md(yv)] + [v.replace("|", "\\|") for v in vals]) + " |")
    return lines


def _shown_metrics(cell_rows: list[dict]) -> list[str]:
    """The cell metrics that at least one cell has (old metrics.json files lack precision etc.)."""
    return [m for m in CELL_METRICS if any(c.get(m) is not None for c in cell_rows)]


def _cells_md(cell_rows: list[dict], axes: list[str], seeds: bool,
              baseline: dict | None = None) -> list[str]:
    lines = ["", "## Cells", ""]
    lines.append("Rows that differ only in seed form one cell: mean ± sample std (ddof=1) over its "
                 "seeds." if seeds else "One cell per combination of the swept keys.")
    metrics = _shown_metrics(cell_rows)
    heads = axes + metrics + (["n_seeds"] if seeds else [])
    lines += ["", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for c in cell_rows:
        vals = [_md(c["overrides"][k]) for k in axes]
        if c is baseline and vals:
            vals[0] += " (baseline)"
        vals += [_pm(c[m], c[f"{m}_std"]) for m in metrics]
        vals += [str(c["n_seeds"])] if seeds else []
        lines.append("| " + " | ".join(vals) + " |")
    best = min((c for c in cell_rows if not math.isnan(c["fid"])), key=lambda c: c["fid"], default=None)
    if best is not None:
        where = " ".join(f"{k}={best['overrides'][k]}" for k in axes)
        n = f", {best['n_seeds']} seed(s)" if seeds else ""
        lines += ["", f"Lowest FID cell: {_pm(best['fid'], best['fid_std'])}"
                  + (f" ({where}{n})" if where or n else "") + "."]
    return lines


def find_baseline(cell_rows: list[dict], axes: list[str], spec: str) -> dict:
    """The one cell that ``spec`` names: ``key=value[,key=value...]`` over the axes, or the name
    of a job folder in it. ValueError (one line, with the choices) when none or several match."""
    def label(c):
        return ",".join(f"{k}={c['overrides'][k]}" for k in axes) or c["jobs"][0]

    choices = "; ".join(label(c) for c in cell_rows) or "none"
    by_job = [c for c in cell_rows if spec in c["jobs"]]  # job folders have "=" in their names
    if by_job:
        return by_job[0]
    if "=" in spec:
        want = dict(part.split("=", 1) for part in spec.split(",") if part)
        unknown = [k for k in want if k not in axes]
        if unknown:
            raise ValueError(f"--baseline {spec}: {unknown[0]} is not a swept key other than "
                             f"seed (axes: {', '.join(axes) or 'none'})")
        found = [c for c in cell_rows if all(c["overrides"][k] == v for k, v in want.items())]
    else:
        found = []
    if len(found) != 1:
        how = "matches no cell" if not found else f"matches {len(found)} cells"
        raise ValueError(f"--baseline {spec} {how}; cells: {choices}")
    return found[0]


def difference(cell: dict, base: dict, metric: str) -> dict | None:
    """``cell - base`` in ``metric``, its standard error ``sqrt(s1^2/n1 + s2^2/n2)`` (the std of a
    difference of two independent means) and whether ``|diff| > 2 SE``; SE is None unless both
    sides have a std over at least two seeds. None where either side lacks the metric."""
    if cell.get(metric) is None or base.get(metric) is None:
        return None
    diff = cell[metric] - base[metric]
    s1, s2 = cell.get(f"{metric}_std"), base.get(f"{metric}_std")
    n1, n2 = cell.get(f"{metric}_n", 0), base.get(f"{metric}_n", 0)
    if s1 is None or s2 is None or n1 < 2 or n2 < 2:
        return {"diff": diff, "se": None, "significant": None}
    se = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    return {"diff": diff, "se": se, "significant": abs(diff) > 2 * se}


def _signed(v: float) -> str:
    return ("+" if v >= 0 else "") + _fmt(v)


def _baseline_md(cell_rows: list[dict], axes: list[str], base: dict, spec: str) -> list[str]:
    metrics = _shown_metrics(cell_rows)
    lines = ["", "## Against the baseline", "",
             f"Baseline: {_md(spec)}. Each entry is cell − baseline ± its standard error "
             "sqrt(s1²/n1 + s2²/n2) over seeds; bold and marked (>2SE) where the difference exceeds "
             "twice its standard error; no ± where a side has fewer than two seeds (no test).",
             "", "| " + " | ".join(axes + metrics) + " |", "|" + "---|" * (len(axes) + len(metrics))]
    for c in cell_rows:
        if c is base:
            continue
        vals = [_md(c["overrides"][k]) for k in axes]
        for m in metrics:
            d = difference(c, base, m)
            if d is None:
                vals.append("")
            elif d["se"] is None:
                vals.append(_signed(d["diff"]))
            else:
                text = f"{_signed(d['diff'])} ± {_fmt(d['se'])}"
                vals.append(f"**{text}** (>2SE)" if d["significant"] else text)
        lines.append("| " + " | ".join(vals) + " |")
    return lines


def write_report(root: str | Path, out: str | Path | None = None, *, x: str | None = None,
                 y: str | None = None, baseline: str | None = None) -> dict[str, Path]:
    """Write report.md, report.csv and the plots of the jobs under ``root`` into ``out`` (default
    ``root``); ``x``/``y`` choose the heatmap's axes, ``baseline`` (see :func:`find_baseline`)
    the cell the others are compared with. Returns {name: path}."""
    return _write_report(root, out, x, y, baseline)[0]


def _write_report(root, out, x, y, baseline=None) -> tuple[dict[str, Path], list[dict], list[str]]:
    root = Path(root)
    out = Path(out) if out else root
    rows, swept = collect(root)
    if not rows:
        raise SystemExit(f"error: no jobs found under {root} (no metrics.json / summary.json / "
                         f".hydra/overrides.yaml)")
    cell_rows, axes = cells(rows, swept)
    hm = heatmap_axes(cell_rows, axes, x, y)  # before writing anything: a bad --x/--y stops here
    base = find_baseline(cell_rows, axes, baseline) if baseline else None  # likewise
    seeds = "seed" in swept or any((r.get("n_seeds") or 1) > 1 for r in rows)
    out.mkdir(parents=True, exist_ok=True)
    mcol = "model_status" if "model" in swept else "model"  # a `model=` override is a column too

    def value(r, c):
        if c in swept:
            return r["overrides"].get(c, "")
        return r.get("model") if c == mcol else r.get(c)

    def shown(r, c):
        """The per-job table's text: ± the std over a job's eval.seeds where it has several."""
        if c == "kid_mean" and r.get("kid_std") is not None and r.get("kid_mean_seed_std") is None:
            return f"{_fmt(r['kid_mean'])} ± {_fmt(r['kid_std'])}"
        if r.get(f"{c}_seed_std") is not None and c not in swept:
            return _pm(r.get(c), r[f"{c}_seed_std"])
        return value(r, c)

    cols = ["job", "status"] + [c for c in swept if c not in ("job", "status")] + [
        c for c in (mcol if c == "model" else c for c in COLUMNS) if c not in swept
        and c not in ("job", "status") and any(value(r, c) is not None for r in rows)]
    seed_std_cols = [f"{m}_seed_std" for m in CELL_METRICS
                     if any(r.get(f"{m}_seed_std") is not None for r in rows)]
    csv_cols = cols + seed_std_cols + (["model_dir"] if any(r.get("model_dir") for r in rows) else [])
    files = {}
    atomic_write_csv(out / "report.csv",
                     ([value(r, c) if value(r, c) is not None else "" for c in csv_cols] for r in rows),
                     header=csv_cols)
    files["csv"] = out / "report.csv"

    models = list({r["job"]: r["model"] for r in rows if r.get("model")}.values())  # one per job
    model_note = ""
    if models:
        kinds = list(dict.fromkeys(["trained", "reused", *models]))
        model_note = " Models: " + ", ".join(f"{models.count(s)} {s}" for s in kinds) + "."
    lines = [f"# Report: {root}", "", f"{len(rows)} job(s), "
             f"{sum(r['status'] == 'ok' for r in rows)} ok, "
             f"{sum(r['status'] == 'failed' for r in rows)} failed."
             + model_note + (f" Swept: {', '.join(swept)}." if swept else ""), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_md(shown(r, c)) for c in cols) + " |")
    if any(r.get("n_seeds") for r in rows):
        lines += ["", "Jobs evaluated with several eval.seeds show mean ± std over those seeds "
                  "(n_seeds); kid_mean of a single seed shows ± its std over KID subsets."]
    ok = [r for r in rows if r["status"] == "ok" and r.get("fid") is not None]
    if ok:
        best = min(ok, key=lambda r: _float(r["fid"]) if _float(r["fid"]) is not None else math.inf)
        lines += ["", f"Lowest FID: {_fmt(best['fid'])} ({best['job']})."]
        floors = [r["floor_fid"] for r in ok if r.get("floor_fid") is not None]
        if floors:
            lines.append(f"Real-vs-real floor at the same n: {_fmt(min(floors))} to "
                         f"{_fmt(max(floors))}.")
    if cell_rows:
        lines += _cells_md(cell_rows, axes, seeds, base)
        if base is not None:
            lines += _baseline_md(cell_rows, axes, base, baseline)
        if hm is not None:
            lines += _pivot_md(cell_rows, *hm, seeds)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    files["md"] = out / "report.md"
    files.update(_plots(ok, swept, out, cell_rows, axes, hm))
    return files, rows, swept


def _plots(ok: list[dict], swept: list[str], out: Path, cell_rows: list[dict], axes: list[str],
           hm: tuple[str, str, list[str]] | None) -> dict[str, Path]:
    if not ok:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import save_figure

    files = {}
    if any(r.get("nfe") for r in ok):
        by = defaultdict(list)
        for r in ok:
            others = [f"{k}={r['overrides'][k]}" for k in swept
                      if k in r["overrides"] and k not in ("sampler", "sampler.steps", "eval")]
            by[" ".join([str(r.get("sampler"))] + others)].append(r)
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rs in sorted(by.items()):
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o-", label=label)
        floors = [r["floor_fid"] for r in ok if r.get("floor_fid") is not None]
        if floors:
            ax.axhline(sum(floors) / len(floors), color="gray", ls="--", label="real-vs-real floor")
        ax.set_xscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("FID")
        ax.legend(fontsize=7)
        files["fid_vs_nfe"] = save_figure(fig, out / "fid_vs_nfe.png")
    seeds = "seed" in swept or any(c["n_seeds"] > 1 for c in cell_rows)  # or eval.seeds
    if hm is not None and cell_rows:
        fig = _heatmap_figure(plt, cell_rows, *hm, seeds)
        if fig is not None:
            files["heatmap"] = save_figure(fig, out / "heatmap.png")
    for key in axes:
        fig = _line_figure(plt, cell_rows, axes, key, seeds)
        if fig is not None:
            safe = key.replace("/", "_")
            files[f"fid_vs_{safe}"] = save_figure(fig, out / f"fid_vs_{safe}.png")
    fig = _precision_recall_figure(plt, cell_rows, axes)
    if fig is not None:
        files["precision_recall"] = save_figure(fig, out / "precision_recall.png")
    return files


def _precision_recall_figure(plt, cell_rows, axes):
    """Recall (diversity) against precision (fidelity), one point per cell with its std over seeds
    as error bars, and the real-vs-real floor: FID's two ingredients pulled apart."""
    pts = [c for c in cell_rows if c.get("precision") is not None and c.get("recall") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for c in pts:
        label = " ".join(f"{k}={c['overrides'][k]}" for k in axes) or c["jobs"][0]
        ax.errorbar(c["recall"], c["precision"], xerr=c.get("recall_std"),
                    yerr=c.get("precision_std"), fmt="o", capsize=3, label=label)
    floors = [c for c in pts if c.get("floor_precision") is not None
              and c.get("floor_recall") is not None]
    if floors:
        ax.plot([sum(c["floor_recall"] for c in floors) / len(floors)],
                [sum(c["floor_precision"] for c in floors) / len(floors)], "k*", ms=12,
                label="real-vs-real floor")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("recall (diversity)")
    ax.set_ylabel("precision (fidelity)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _heatmap_figure(plt, cell_rows, x, y, facet_keys, seeds):
    import numpy as np
    from matplotlib import colormaps, colors

    fids = [c["fid"] for c in cell_rows if math.isfinite(c["fid"])]
    if not fids:
        return None
    lo, hi = min(fids), max(fids)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    # one scale for every panel; logarithmic when FID spans more than a factor of 10
    norm = colors.LogNorm(lo, hi) if lo > 0 and hi / lo > 10 else colors.Normalize(lo, hi)
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="#e0e0e0")  # green = low FID = better
    xs = value_order(c["overrides"][x] for c in cell_rows)
    ys = value_order(c["overrides"][y] for c in cell_rows)
    facets = _facets(cell_rows, facet_keys)
    ncols = min(len(facets), 3)
    nrows = -(-len(facets) // ncols)
    pw = max(3.2, 0.95 * len(xs) + 1.6)
    ph = max(2.4, (0.75 if seeds else 0.5) * len(ys) + 1.2)
    fig, axs = plt.subplots(nrows, ncols, figsize=(pw * ncols + 1.0, ph * nrows + 0.4), squeeze=False,
                            layout="constrained")
    size = 8 if len(xs) <= 6 else 6
    im = None
    for ax, (title, cs) in zip(axs.flat, facets):
        grid = np.full((len(ys), len(xs)), np.nan)
        for c in cs:
            i, j = ys.index(c["overrides"][y]), xs.index(c["overrides"][x])
            grid[i, j] = c["fid"]
            text = _fmt(c["fid"]) + (f"\n± {_fmt(c['fid_std'])}" if c["fid_std"] is not None else "")
            colour = "black"
            if math.isfinite(c["fid"]):
                r, g, b, _ = cmap(norm(c["fid"]))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=30 if max(len(v) for v in xs) > 6 else 0)
        ax.set_yticks(range(len(ys)))
        ax.set_yticklabels(ys)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if title:
            ax.set_title(title, fontsize=9)
    for ax in list(axs.flat)[len(facets):]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axs.flat[:len(facets)]), label="FID (lower is better)")
    n = sorted({c["n_seeds"] for c in cell_rows})
    over = (f", mean ± std over {n[0] if len(n) == 1 else f'{n[0]}–{n[-1]}'} seeds" if seeds else "")
    floor = _floor_text(cell_rows)
    fig.suptitle(f"FID{over}" + (f" ({floor})" if floor else ""), fontsize=10)
    return fig


def _line_figure(plt, cell_rows, axes, key, seeds):
    xs = value_order(c["overrides"][key] for c in cell_rows)
    if len(xs) < 2:
        return None
    numeric = _is_numeric(xs)
    rest = [k for k in axes if k != key]
    lines = _facets(cell_rows, rest)  # one line per combination of the other axes
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, cs in lines:
        cs = sorted(cs, key=lambda c: xs.index(c["overrides"][key]))
        px = [_float(c["overrides"][key]) if numeric else xs.index(c["overrides"][key]) for c in cs]
        py = [c["fid"] for c in cs]
        err = [c["fid_std"] if c["fid_std"] is not None else math.nan for c in cs] if seeds else None
        ax.errorbar(px, py, yerr=err, fmt="o-", capsize=3 if seeds else 0, label=label or None)
    floor = [c["floor_fid"] for c in cell_rows if c.get("floor_fid") is not None]
    if floor:
        ax.axhline(sum(floor) / len(floor), color="gray", ls="--", label="real-vs-real floor")
    if numeric:
        vals = [_float(v) for v in xs]
        if vals[0] > 0 and vals[-1] / vals[0] >= 10:
            ax.set_xscale("log")
        if len(xs) <= 12:
            ax.set_xticks(vals)
            ax.set_xticklabels(xs)
            ax.minorticks_off()
    else:
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=30 if max(len(v) for v in xs) > 8 else 0)
        ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel("FID" + (" (mean ± std over seeds)" if seeds else ""))
    if rest or floor:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i] == "real-vs-real floor")
        ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7,
                  loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def _wandb_mode(mode: str = "auto") -> str:
    """``mode`` itself unless "auto"; then ``$WANDB_MODE`` if set, else "online" with an API key
    (``WANDB_API_KEY`` or a netrc entry), else "offline"."""
    if mode != "auto":
        return mode
    from .env import _wandb_logged_in

    return os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")


def log_to_wandb(root: str | Path, files: dict[str, Path], rows: list[dict], swept: list[str], *,
                 project: str = "diffexp", entity: str | None = None, group: str | None = None,
                 mode: str = "auto") -> Path:
    """Log the report of ``root`` as one wandb run and return the run's folder.

    The run (``job_type="report"``, name ``report-<folder>``, group ``group`` or the folder's name,
    the group the sweep's training runs use) carries the cell table (``cells``), the heatmap and
    line plots among ``files`` as images, and ``fid_best`` in its summary. ``mode="auto"``:
    ``$WANDB_MODE`` if set, else online with an API key (env or netrc), else offline. The run's
    files go under ``root`` (``root/wandb/``)."""
    import wandb

    root = Path(root).resolve()
    mode = _wandb_mode(mode)
    cell_rows, axes = cells(rows, swept)
    numeric = {k: _is_numeric(c["overrides"][k] for c in cell_rows) for k in axes}

    def axis_value(k, v):
        if not numeric[k]:
            return v
        f = _float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f

    stats = ["fid", "fid_std", "kid_mean", "kid_mean_std", "floor_fid", "floor_fid_std", "n_seeds"]
    stats += [s for m in _shown_metrics(cell_rows) if m not in stats for s in (m, f"{m}_std")]
    table = wandb.Table(columns=axes + stats + ["jobs"], data=[
        [axis_value(k, c["overrides"][k]) for k in axes] + [c[s] for s in stats]
        + [", ".join(c["jobs"])] for c in cell_rows])
    try:
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
    except Exception:  # older wandb: no x_disable_stats
        settings = wandb.Settings(silent=True, console="off")
    run = wandb.init(project=project, entity=entity, group=group or root.name, job_type="report",
                     name=f"report-{root.name}", dir=str(root), mode=mode, settings=settings,
                     config={"report_dir": str(root), "swept": swept, "axes": axes,
                             "jobs": len(rows), "failed": sum(r["status"] == "failed" for r in rows)})
    payload = {"cells": table}
    for name, path in files.items():
        if ((name in ("heatmap", "precision_recall") or name.startswith("fid_vs_"))
                and Path(path).is_file()):
            payload[name] = wandb.Image(str(path))
    run.log(payload)
    finite = [c for c in cell_rows if math.isfinite(c["fid"])]
    if finite:
        best = min(finite, key=lambda c: c["fid"])
        run.summary["fid_best"] = best["fid"]
        run.summary["fid_best_std"] = best["fid_std"]
        run.summary["fid_best_cell"] = " ".join(f"{k}={v}" for k, v in best["overrides"].items())
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
