"""``diffexp-report DIR``: gather the jobs of a multirun (or any folder of runs) into tables and plots.

A *job* is a folder holding ``.hydra/overrides.yaml``, ``metrics.json`` (eval), ``summary.json``
(train) or ``error.txt`` (a failed job). Each job becomes one row: its overrides, its status, and
its final numbers (FID, KID +- std, floor, NFE, model size, epochs, device, loss, wall times).
Train jobs that ran an evaluation at the end keep it in ``eval/metrics.json`` inside their folder,
or, with ``eval.samplers``, in ``eval/<label>/metrics.json``: one row per label then, with the
label in the ``eval`` column.

Writes ``report.md``, ``report.csv`` and plots into DIR (or ``--out``): ``fid_vs_nfe.png`` (one
line per sampler) when the jobs are evaluations, and ``fid_vs_<param>.png`` for every swept
parameter with numeric values.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import yaml

__all__ = ["collect", "write_report", "main"]

COLUMNS = ["job", "status", "fid", "kid_mean", "kid_std", "floor_fid", "floor_kid", "n", "nfe",
           "sampler", "steps", "parameters", "epochs", "device", "final_train_loss",
           "final_val_loss", "train_s", "eval_s", "wall_time_s", "error"]


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
                row.update(fid=metrics.get("fid"), kid_mean=metrics.get("kid_mean"),
                           kid_std=metrics.get("kid_std"), floor_fid=fl.get("fid"),
                           floor_kid=fl.get("kid_mean"), n=metrics.get("n"),
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
                row["wall_time_s"] = summary.get("wall_time_s") if not metrics else (
                    (summary.get("wall_time_s") or 0) + (metrics.get("wall_time_s") or 0))
            rows.append(row)
    keys = sorted({k for r in rows for k in r["overrides"]})
    swept = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    return rows, swept


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


def write_report(root: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    root = Path(root)
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    rows, swept = collect(root)
    if not rows:
        raise SystemExit(f"error: no jobs found under {root} (no metrics.json / summary.json / "
                         f".hydra/overrides.yaml)")
    cols = swept + [c for c in COLUMNS if c not in swept and (
        c in ("job", "status") or any(r.get(c) is not None for r in rows))]
    cols = ["job", "status"] + [c for c in cols if c not in ("job", "status")]
    files = {}
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r["overrides"].get(c, "") if c in swept else r.get(c, "") for c in cols])
    files["csv"] = out / "report.csv"

    lines = [f"# Report: {root}", "", f"{len(rows)} job(s), "
             f"{sum(r['status'] == 'ok' for r in rows)} ok, "
             f"{sum(r['status'] == 'failed' for r in rows)} failed."
             + (f" Swept: {', '.join(swept)}." if swept else ""), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r["overrides"].get(c, "") if c in swept else r.get(c)
            if c == "kid_mean" and r.get("kid_std") is not None:
                v = f"{_fmt(r['kid_mean'])} ± {_fmt(r['kid_std'])}"
            cells.append(_fmt(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    ok = [r for r in rows if r["status"] == "ok" and r.get("fid") is not None]
    if ok:
        best = min(ok, key=lambda r: r["fid"])
        lines += ["", f"Lowest FID: {_fmt(best['fid'])} ({best['job']})."]
        floors = [r["floor_fid"] for r in ok if r.get("floor_fid") is not None]
        if floors:
            lines.append(f"Real-vs-real floor at the same n: {_fmt(min(floors))} to "
                         f"{_fmt(max(floors))}.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    files["md"] = out / "report.md"
    files.update(_plots(ok, swept, out))
    return files


def _plots(ok: list[dict], swept: list[str], out: Path) -> dict[str, Path]:
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
    for key in swept:
        pts = [(_float(r["overrides"].get(key)), r["fid"]) for r in ok]
        if any(x is None for x, _ in pts) or len({x for x, _ in pts}) < 2:
            continue
        rest = [k for k in swept if k != key]
        groups = defaultdict(list)
        for r in ok:
            groups[" ".join(f"{k}={r['overrides'].get(k)}" for k in rest)].append(
                (_float(r["overrides"][key]), r["fid"]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, p in sorted(groups.items()):
            p.sort()
            ax.plot([x for x, _ in p], [y for _, y in p], "o-", label=label or None)
        ax.set_xlabel(key)
        ax.set_ylabel("FID")
        if rest:
            ax.legend(fontsize=7)
        safe = key.replace("/", "_")
        files[f"fid_vs_{safe}"] = save_figure(fig, out / f"fid_vs_{safe}.png")
    return files


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="diffexp-report", description=__doc__.splitlines()[0])
    p.add_argument("dir", help="a multirun folder (or any folder of runs)")
    p.add_argument("--out", default=None, help="where to write the report (default: DIR)")
    a = p.parse_args(argv)
    if not Path(a.dir).is_dir():
        print(f"error: {a.dir}: no such folder", file=sys.stderr)
        sys.exit(2)
    files = write_report(a.dir, a.out)
    print((Path(files["md"])).read_text())
    for name, path in files.items():
        print(f"[diffexp] {name}: {path}")


if __name__ == "__main__":
    main()
