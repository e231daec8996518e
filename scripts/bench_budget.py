"""How well ``train.time_budget_s`` holds on a loaded machine, measured side by side in one run.

    python scripts/bench_budget.py --out runs/bench_budget                 # the quickstart, 380 s
    python scripts/bench_budget.py --out DIR --budget 120 --extra data.subset=20000
    python scripts/bench_budget.py --out DIR --conditions "" --make-run 3     # make run only

The same budgeted command (default ``experiment=quickstart``, the ``make run`` recipe) runs under
each condition, one after the other, on an otherwise idle machine:

* ``idle``: nothing else running;
* ``burst``: one CPU-burning process per core during the run's first 30 s (``--burst-s``);
* ``steady``: one CPU-burning process per core for the whole run.

Printed per condition: the step count the run planned, its pace, training time / budget (the fit's
wall time, epoch-end validation and sample grids included, as the budget counts it), the steps
against the idle run's, and the FID of the end-of-run evaluation (``--no-eval`` skips it). The
burners start with the command, so the burst also covers the start-up before training.
``--make-run N`` then runs ``make run`` N times in a row and tables their step counts, times and
FIDs. Writes ``bench_budget.json`` into OUT. Absolute times belong to this machine; the ratios are
what the budget promises (steps within 15% of idle under a 30-s burst, training time 80-105% of
the budget with and without it, 90-105% under steady load).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BURNER = "while True: pass"


def _burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_once(out: Path, label: str, a, burn_s: float | None) -> dict:
    """One budgeted run; ``burn_s``: burners for that many seconds from its start (None: none;
    inf: the whole run)."""
    run = out / label
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train.py"), f"experiment={a.experiment}",
           f"train.time_budget_s={a.budget}", "logger=csv", f"hydra.run.dir={run}", *a.extra]
    if a.no_eval:
        cmd.append("train.eval_at_end=false")
    print(f"[bench] {label}: $ {' '.join(cmd[1:])}", flush=True)
    log = open(out / f"{label}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    burners = _burners(a.cores) if burn_s else []
    try:
        while proc.poll() is None:
            if burners and burn_s != float("inf") and time.perf_counter() - t0 >= burn_s:
                _stop(burners)
                burners = []
            time.sleep(0.2)
    finally:
        _stop(burners)
    wall = time.perf_counter() - t0
    log.close()
    if proc.returncode != 0:
        sys.exit(f"error: {label} failed (rc {proc.returncode}); see {out / label}.log")
    s = json.loads((run / "summary.json").read_text())
    tb = s["time_budget"]
    return {"label": label, "steps": s["global_step"], "planned": tb["steps"],
            "hold_steps": tb["hold_steps"], "pace_s_per_step": tb["pace_s_per_step"],
            "threads": tb.get("threads"), "pace_by_threads": tb.get("pace_by_threads"),
            "train_s": tb["train_s"], "budget_s": tb["budget_s"],
            "train_over_budget": round(tb["train_s"] / tb["budget_s"], 3),
            "fid": (s.get("eval") or {}).get("fid"), "wall_s": round(wall, 1)}


def make_run(out: Path, i: int) -> dict:
    log = out / f"make_run_{i}.log"
    t0 = time.perf_counter()
    r = subprocess.run(["make", "run"], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit(f"error: make run {i} failed (rc {r.returncode}); see {log}")
    m = re.search(r"Samples: (\S+)/samples/final.png", r.stdout)
    s = json.loads((Path(REPO / m.group(1)) / "summary.json").read_text())
    tb = s["time_budget"]
    return {"label": f"make run {i}", "steps": s["global_step"], "planned": tb["steps"],
            "hold_steps": tb["hold_steps"], "pace_s_per_step": tb["pace_s_per_step"],
            "threads": tb.get("threads"), "pace_by_threads": tb.get("pace_by_threads"),
            "train_s": tb["train_s"], "budget_s": tb["budget_s"],
            "train_over_budget": round(tb["train_s"] / tb["budget_s"], 3),
            "fid": (s.get("eval") or {}).get("fid"), "wall_s": round(wall, 1)}


def table(rows: list[dict], idle_steps: int | None) -> str:
    head = ("| run | steps | held | threads (held steps' s/step by count) | pace s/step | "
            "training s | / budget | steps / idle | FID | wall s |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        vs = f"{r['steps'] / idle_steps:.3f}" if idle_steps else "-"
        fid = f"{r['fid']:.2f}" if r.get("fid") is not None else "-"
        tried = ", ".join(f"{n}: {p:.3f}" for n, p in (r.get("pace_by_threads") or {}).items())
        threads = f"{r.get('threads') or 'torch'}" + (f" ({tried})" if tried else "")
        lines.append(f"| {r['label']} | {r['steps']} | {r.get('hold_steps', '-')} | {threads} | "
                     f"{r['pace_s_per_step']:.4f} | {r['train_s']:.1f} | "
                     f"{r['train_over_budget']:.1%} | {vs} | {fid} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_budget")
    p.add_argument("--experiment", default="quickstart")
    p.add_argument("--budget", type=float, default=380.0)
    p.add_argument("--burst-s", type=float, default=30.0)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2,
                   help="burning processes (default: one per core)")
    p.add_argument("--conditions", default="idle,burst,steady")
    p.add_argument("--make-run", type=int, default=0, help="then `make run` this many times")
    p.add_argument("--no-eval", action="store_true", help="skip the end-of-run evaluation")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("OMP_NUM_THREADS"):  # the runs inherit it: their thread choice is gone
        print(f"[bench] note: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is set; the runs "
              f"use that many threads", flush=True)
    burn = {"idle": None, "burst": a.burst_s, "steady": float("inf")}
    rows = []
    for cond in [c for c in a.conditions.split(",") if c]:
        rows.append(run_once(a.out, cond, a, burn[cond]))
        print(f"[bench] {json.dumps(rows[-1])}", flush=True)
    idle = next((r["steps"] for r in rows if r["label"] == "idle"), None)
    if rows:
        print(table(rows, idle))
    runs = [make_run(a.out, i + 1) for i in range(a.make_run)]
    if runs:
        print(table(runs, None))
    (a.out / "bench_budget.json").write_text(json.dumps(
        {"budget_s": a.budget, "burst_s": a.burst_s, "cores": a.cores, "conditions": rows,
         "make_run": runs, "extra": a.extra}, indent=2))


if __name__ == "__main__":
    main()
