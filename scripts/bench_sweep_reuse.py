"""Time a scale x rho sweep two ways in one run: training each distinct model once and sharing it
(``train.reuse=true``), and training every job's model itself (``train.reuse=false``).

    python scripts/bench_sweep_reuse.py --out runs/bench_sweep_reuse
    python scripts/bench_sweep_reuse.py --out DIR --launcher joblib --n-jobs 3

Both sweeps run the same command (CPU-sized by default: a 10,000-image subset, one epoch, FID at
n = 512) with a fresh model store each, one after the other on this machine. Printed: the wall
time of each sweep and their ratio, how many jobs trained or reused a model, and every cell's FID
both ways (the same seed trains the same model, so on a deterministic device the two columns
agree: sharing changes the cost, not the answer). Writes ``bench.json`` into OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep(out: Path, reuse: bool, a) -> dict:
    sweep_dir = out / ("shared" if reuse else "every_job")
    store = out / ("models_shared" if reuse else "models_unused")
    for p in (sweep_dir, store):
        shutil.rmtree(p, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train.py"), "-m",
           f"data.scale={','.join(map(str, a.scales))}", "grid=karras",
           f"grid.rho={','.join(map(str, a.rhos))}", f"data.subset={a.subset}",
           f"train.epochs={a.epochs}", f"train.batch_size={a.batch_size}",
           f"eval.n_samples={a.n}", "eval.batch_size=256", "eval.diagnostics=false",
           "logger=none", f"train.reuse={str(reuse).lower()}", f"train.model_store={store}",
           f"hydra.sweep.dir={sweep_dir}", *a.extra]
    if a.launcher == "joblib":
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={a.n_jobs}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"{sweep_dir.name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit(f"error: the sweep failed (rc {r.returncode}); see {out / sweep_dir.name}.log")
    cells, trained = {}, 0
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and "=" in p.name):
        m = json.loads((job / "eval" / "metrics.json").read_text())
        ov = {k: v for k, v in (x.split("=", 1) for x in job.name.split("_", 1)[1].split(","))}
        cell = f"data.scale={ov['data.scale']} grid.rho={ov['grid.rho']}"
        model = job / "model.json"
        status = json.loads(model.read_text())["status"] if model.is_file() else "trained"
        trained += status == "trained"
        cells[cell] = {"fid": m["fid"], "status": status, "floor": m["floor"]["fid"]}
    return {"wall_s": round(wall, 1), "jobs": len(cells), "trained": trained, "cells": cells}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_sweep_reuse")
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1, 2])
    p.add_argument("--rhos", type=float, nargs="+", default=[3, 5, 7])
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n", type=int, default=512, help="generated images per FID")
    p.add_argument("--launcher", choices=["basic", "joblib"], default="basic")
    p.add_argument("--n-jobs", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more overrides for both sweeps (key=value)")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = sweep(out, True, a)
    every = sweep(out, False, a)
    ratio = every["wall_s"] / shared["wall_s"]
    print(f"\nshared models:  {shared['wall_s']:8.1f} s, {shared['jobs']} jobs, "
          f"{shared['trained']} trained")
    print(f"every job:      {every['wall_s']:8.1f} s, {every['jobs']} jobs, "
          f"{every['trained']} trained")
    print(f"ratio (every job / shared): {ratio:.2f}x\n")
    print("| cell | FID, shared | model | FID, every job | difference |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for cell, s in shared["cells"].items():
        e = every["cells"][cell]
        worst = max(worst, abs(s["fid"] - e["fid"]))
        print(f"| {cell} | {s['fid']:.3f} | {s['status']} | {e['fid']:.3f} | "
              f"{s['fid'] - e['fid']:+.3f} |")
    print(f"\nlargest |difference|: {worst:.4f}; floor FID at n={a.n}: "
          f"{next(iter(shared['cells'].values()))['floor']:.3f}")
    result = {"shared": shared, "every_job": every, "ratio": round(ratio, 3),
              "max_abs_fid_difference": worst, "args": vars(a)}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"[diffexp] {out / 'bench.json'}")


if __name__ == "__main__":
    main()
