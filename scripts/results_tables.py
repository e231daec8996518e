"""Render the tables of docs/RESULTS.md from the run folders that ``scripts/results.sh`` wrote.

    python scripts/results_tables.py runs/results > tables.md

Every number comes from a metrics.json / summary.json / study.json in those folders; nothing is
typed in. One table per experiment folder found (schedule, no_t, karras_samplers, sigma_data,
scale_cosine, scale_karras, then any other folder of runs, e.g. a seed sweep); missing ones are
listed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffexp.runs.report import collect

ORDER = ["schedule", "no_t", "karras_samplers", "sigma_data", "scale_cosine", "scale_karras"]


def _f(v, digits=2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _machine(record: dict) -> str:
    """A report row, or a summary.json: the host it recorded, else its device."""
    host = record.get("host")
    if host:
        if host.get("gpu"):
            return host["gpu"]
        return f"{host['cpu']} CPU, {host['torch_threads']} thread(s)"
    return str(record.get("device") or "")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sweep_table(root: Path) -> str:
    rows, swept = collect(root)
    jobs = list(dict.fromkeys(r["job"] for r in rows))
    rows.sort(key=lambda r: (jobs.index(r["job"]), r.get("nfe") or 0, r["overrides"].get("eval", "")))
    keys = [k for k in swept if k != "eval"]
    head = keys + ["sampler (label)", "NFE", "FID", "KID ± std", "floor FID", "params", "epochs",
                   "train s", "eval s", "machine"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = r["overrides"].get("eval", "")
        if r["status"] != "ok":
            out.append("| " + " | ".join([r["overrides"].get(k, "") for k in keys]
                                         + [f"failed: {r.get('error', '')}"] + [""] * 9) + " |")
            continue
        sampler = label or (f"{r.get('sampler')} {r.get('steps')}" if r.get("sampler") else "")
        kid = (f"{r['kid_mean']:.3f} ± {r['kid_std']:.3f}" if r.get("kid_mean") is not None
               else "")
        cells = [r["overrides"].get(k, "") for k in keys] + [
            sampler, str(r.get("nfe") or ""), _f(r.get("fid")), kid, _f(r.get("floor_fid")),
            f"{r['parameters']:,}" if r.get("parameters") else "", str(r.get("epochs") or ""),
            _f(r.get("train_s"), 0), _f(r.get("eval_s"), 0), _machine(r)]
        out.append("| " + " | ".join(cells) + " |")
    fids = [r["fid"] for r in rows if r.get("fid") is not None]
    if keys == ["seed"] and len(fids) >= 2:
        mean = sum(fids) / len(fids)
        std = (sum((f - mean) ** 2 for f in fids) / (len(fids) - 1)) ** 0.5
        out += ["", f"FID over {len(fids)} seeds: mean {mean:.2f}, sample std {std:.2f}, "
                f"range {min(fids):.2f} to {max(fids):.2f}."]
    return "\n".join(out)


def no_t_tables(root: Path) -> str:
    study = _read(root / "study.json")
    if study is None:
        return f"(no study.json under {root})"
    parts = {"t-conditioned": "t_model", "no_t": "no_t_model"}
    out = ["| model | NFE | FID | KID ± std | floor FID | params | epochs | train s | "
           "sample s | machine |", "|" + "---|" * 10]
    for r in study["rows"]:
        sub = parts["t-conditioned"] if r["model"].startswith("t-conditioned") else parts["no_t"]
        s = _read(root / sub / "summary.json") or {}
        out.append(f"| {r['model']} | {r['nfe']} | {_f(r['fid'])} | {r['kid_mean']:.3f} ± "
                   f"{r['kid_std']:.3f} | {_f(r['floor_fid'])} | {s.get('parameters', 0):,} | "
                   f"{s.get('epochs', '')} | {_f(s.get('wall_time_s'), 0)} | "
                   f"{_f(r.get('sample_time_s'), 0)} | {_machine(s)} |")
    out += ["", "| predictor target | held-out n | MSE on own target | constant-predictor MSE | "
            "alpha_bar MSE | logit(alpha_bar) MSE | params | train s |", "|" + "---|" * 8]
    for target, p in study.get("predictors", {}).items():
        s = _read(root / f"predictor_{target}" / "summary.json") or {}
        out.append(f"| {target} | {p.get('n')} | {p['mse']:.4f} | {p['baseline_mse']:.4f} | "
                   f"{p.get('abar_mse', float('nan')):.5f} | {p.get('logit_mse', float('nan')):.4f} | "
                   f"{s.get('parameters', 0):,} | {_f(s.get('wall_time_s'), 0)} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="runs/results")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not root.is_dir():
        sys.exit(f"error: {root}: no such folder (run scripts/results.sh first)")
    present = [n for n in ORDER if (root / n).is_dir()]
    present += sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in ORDER)
    for name in present:
        d = root / name
        print(f"### {name}\n")
        print((no_t_tables(d) if (d / "study.json").exists() else sweep_table(d)) + "\n")
    missing = [n for n in ORDER if n not in present]
    if missing:
        print(f"(not run under {root}: {', '.join(missing)})")


if __name__ == "__main__":
    main()
