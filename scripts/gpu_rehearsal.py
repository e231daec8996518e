"""Rehearse, on this CPU machine, the GPU run of docs/PERFORMANCE.md ("GPU readiness check"):
the very command the lent GPU machine runs, ``bash scripts/gpu_session.sh [checks|full]``, with
``--dry-run``, under that machine's conditions as far as they can be made here, and check the
device tool's limits.

    python scripts/gpu_rehearsal.py [--python PY] [--calls checks,full] [--only STEPS]
    make gpu-rehearsal            (in the environment of scripts/gpu_rehearsal_env.sh: Python 3.12,
                                   torch 2.11.0, torchvision 0.26.0, Lightning 2.6.6,
                                   torchmetrics 1.9.0, no Hydra/OmegaConf/antlr4/wandb)

1. ``scripts/gpu_prep.sh`` fills the carried folder (wheels of hydra-core, omegaconf, antlr4;
   Fashion-MNIST gzipped), with an interpreter that has those packages (this one, else .venv's).
2. The tree that travels is copied as the device copies it: tracked and untracked-not-ignored
   files (``git ls-files -co --exclude-standard``) plus the carried folder as ``.gpu-carry``; its
   size must be at most 64 MiB.
3. In that copy, each call's command runs with ``python3`` = ``--python``, ``PIP_NO_INDEX=1`` and
   pip's configuration ignored (no index, no find-links), nothing installed but the carried wheels
   (into a ``--target`` folder, as on the device), and, where ``--python`` has them installed,
   hydra, omegaconf and antlr4 importable only from that folder and wandb not at all (a
   sitecustomize hides them), under the call's time limit (``--timeout``, 360 s).
4. Checks: the call ended inside its limit; at most 8 result files, at most 2 folders below $OUT,
   names of letters, digits, '.', '_', '-', each at most 16 MiB and 64 MiB together; every step
   ok or skipped and inside its budget; hydra/omegaconf/antlr4 imported from the carried wheels.

Prints one line per check and a summary (steps, budgets, carried MiB, result files); writes
``rehearsal.json`` in ``--work``; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
LIMITS = {"tree_mib": 64, "files": 8, "depth": 2, "file_mib": 16, "files_mib": 64}
CARRIED_MODULES = ("hydra", "omegaconf", "antlr4")
ABSENT_MODULES = ("wandb",)
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")

SITECUSTOMIZE = '''"""GPU rehearsal: the GPU machine lacks these packages; hide this python's copies."""
import importlib.machinery
import os
import sys

_SITE = os.environ.get("GPU_SITE", "")
_CARRIED = set(os.environ.get("GPU_REHEARSAL_CARRIED", "").split(",")) - {""}
_ABSENT = set(os.environ.get("GPU_REHEARSAL_ABSENT", "").split(",")) - {""}


class _GpuMachineImports:
    def find_spec(self, name, path=None, target=None):
        if name in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)",
                                      name=name)
        if name in _CARRIED:
            spec = importlib.machinery.PathFinder.find_spec(name, [_SITE])
            if spec is None:
                raise ModuleNotFoundError(f"No module named {name!r} in the carried wheels "
                                          f"({_SITE})", name=name)
            return spec
        return None


sys.meta_path.insert(0, _GpuMachineImports())
'''


def tree_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and ((repo / f).is_file() or (repo / f).is_symlink())]


def copy_tree(repo: Path, dest: Path) -> int:
    """The working tree as the device copies it (a symbolic link as a link); returns its size
    in bytes."""
    size = 0
    for f in tree_files(repo):
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        if (repo / f).is_symlink():
            os.symlink(os.readlink(repo / f), target)
            size += target.lstat().st_size
            continue
        shutil.copy2(repo / f, target)
        size += target.stat().st_size
    return size


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def has_module(python: str, name: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def check_results(out: Path) -> tuple[list[str], list[dict]]:
    """Problems with what would come back from $OUT, and the files."""
    problems, files = [], []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if p.is_dir():
            continue
        depth = len(rel.parts) - 1
        files.append({"path": str(rel), "bytes": p.stat().st_size, "depth": depth})
        if depth > LIMITS["depth"]:
            problems.append(f"{rel}: {depth} folders below $OUT (at most {LIMITS['depth']})")
        if not all(NAME_OK.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name with other characters than letters, digits, . _ -")
        if p.stat().st_size > LIMITS["file_mib"] * MIB:
            problems.append(f"{rel}: over {LIMITS['file_mib']} MiB")
    if len(files) > LIMITS["files"]:
        problems.append(f"{len(files)} result files (at most {LIMITS['files']})")
    if sum(f["bytes"] for f in files) > LIMITS["files_mib"] * MIB:
        problems.append(f"result files over {LIMITS['files_mib']} MiB together")
    return problems, files


def check_steps(res: dict, site: Path, hide: bool) -> tuple[list[str], list[dict]]:
    problems, steps = [], []
    for name, rec in res.get("steps", {}).items():
        row = {"step": name, "status": rec["status"], "seconds": round(rec.get("seconds", 0), 1),
               "budget_s": round(rec.get("budget_s", 0), 1),
               "note": rec.get("reason") or rec.get("error") or ""}
        steps.append(row)
        if rec["status"] not in ("ok", "skipped"):
            problems.append(f"step {name}: {rec['status']}: {row['note']}")
        if rec.get("seconds", 0) > rec.get("budget_s", 0):
            problems.append(f"step {name}: {rec['seconds']:.1f}s over its {rec['budget_s']:.0f}s "
                            f"budget")
    env = (res.get("steps", {}).get("env") or {}).get("result")
    if env:
        for m in CARRIED_MODULES:
            where = env["modules"].get(m, {}).get("path") or ""
            if hide and not where.startswith(str(site)):
                problems.append(f"{m} imported from {where or 'nowhere'}, not the carried wheels")
        for m in ABSENT_MODULES:
            if hide and "error" not in env["modules"].get(m, {}):
                problems.append(f"{m} importable, but the GPU machine lacks it")
    elif res.get("steps"):
        problems.append("no env step result")
    return problems, steps


def run_call(call: str, args, tree: Path, work: Path, hide: bool) -> dict:
    out, site, scratch = work / f"out_{call}", work / f"site_{call}", work / f"scratch_{call}"
    for p in (out, site, scratch):
        shutil.rmtree(p, ignore_errors=True)
    out.mkdir(parents=True)
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    py3 = bin_dir / "python3"
    # a wrapper, not a link: a venv's python finds its venv from the path it was started by
    py3.unlink(missing_ok=True)
    py3.write_text(f'#!/bin/sh\nexec "{Path(args.python).absolute()}" "$@"\n')
    py3.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "VIRTUAL_ENV", "CONDA_", "PYTHON", "DIFFEXP_"))}
    env.update(OUT=str(out), GPU_SITE=str(site), GPU_SCRATCH=str(scratch),
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PIP_NO_INDEX="1",
               PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", OMP_NUM_THREADS="1",
               GPU_DEADLINE=str(args.deadline))
    if hide:
        block = work / "hide"
        block.mkdir(exist_ok=True)
        (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env.update(PYTHONPATH=str(block), GPU_REHEARSAL_CARRIED=",".join(CARRIED_MODULES),
                   GPU_REHEARSAL_ABSENT=",".join(ABSENT_MODULES))
    extra = ["--dry-run", *(["--only", args.only] if args.only else [])]
    cmd = ["bash", "scripts/gpu_session.sh", call, *extra]
    print(f"[rehearsal] {call}: $ {' '.join(cmd)}   (python3 = {args.python}; limit "
          f"{args.timeout}s)", flush=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(work / f"{call}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
            os.killpg(proc.pid, 9)
            proc.wait()
    wall = time.perf_counter() - t0
    problems = [f"the call ran past its {args.timeout}s limit"] if timed_out else []
    if rc not in (0, None):
        problems.append(f"exit status {rc} (log: {work / (call + '.log')})")
    p, files = check_results(out)
    problems += p
    json_name = "full_run.json" if call == "full" else "gpu_check.json"
    res = {}
    if (out / json_name).is_file():
        res = json.loads((out / json_name).read_text())
    else:
        problems.append(f"no {json_name} in $OUT")
    p, steps = check_steps(res, site, hide)
    problems += p
    return {"call": call, "command": " ".join(cmd), "exit": rc, "wall_s": round(wall, 1),
            "limit_s": args.timeout, "steps": steps, "files": files, "problems": problems,
            "machine": res.get("machine", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter playing the GPU machine's python3 (default this one)")
    p.add_argument("--calls", default="checks,full", help="which session calls (checks,full)")
    p.add_argument("--only", default=None, help="gpu_check steps (default: each call's own)")
    p.add_argument("--work", default=None, help="scratch folder (default a new temporary one)")
    p.add_argument("--timeout", type=int, default=360, help="one call's limit in seconds (360)")
    p.add_argument("--deadline", type=int, default=330, help="GPU_DEADLINE for the session (330)")
    p.add_argument("--data-root", default=os.environ.get("DIFFEXP_DATA_ROOT"),
                   help="Fashion-MNIST for the carried folder (default DIFFEXP_DATA_ROOT)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-rehearsal-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    problems: list[str] = []

    # 1. the carried folder
    prep_py = sys.executable if has_module(sys.executable, "hydra") else str(REPO / ".venv/bin/python")
    carry = work / "carry"
    env = dict(os.environ, GPU_CARRY=str(carry), PYTHON=prep_py)
    if args.data_root:
        env["DIFFEXP_DATA_ROOT"] = args.data_root
    prep = subprocess.run(["bash", "scripts/gpu_prep.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    if prep.returncode != 0:
        print(prep.stdout + prep.stderr)
        problems.append(f"scripts/gpu_prep.sh exited {prep.returncode}")
    carried = folder_bytes(carry)

    # 2. the tree that travels
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree_bytes = copy_tree(REPO, tree)
    shutil.copytree(carry, tree / ".gpu-carry")
    total = tree_bytes + carried
    if total > LIMITS["tree_mib"] * MIB:
        problems.append(f"tree {tree_bytes / MIB:.1f} MiB + carried {carried / MIB:.1f} MiB is over "
                        f"{LIMITS['tree_mib']} MiB")
    print(f"[rehearsal] carried .gpu-carry {carried / MIB:.1f} MiB "
          f"({', '.join(sorted(f.name for f in (carry / 'wheels').glob('*.whl')))}), tree "
          f"{tree_bytes / MIB:.1f} MiB: {total / MIB:.1f} MiB travel (limit {LIMITS['tree_mib']})",
          flush=True)

    # 3, 4. the calls
    hide = any(has_module(args.python, m) for m in (*CARRIED_MODULES, *ABSENT_MODULES))
    calls = [run_call(c.strip(), args, tree, work, hide) for c in args.calls.split(",") if c.strip()]
    for c in calls:
        m = c["machine"]
        print(f"[rehearsal] {c['call']}: exit {c['exit']}, {c['wall_s']}s of {c['limit_s']}s; "
              f"python {m.get('python')}, torch {m.get('torch')}, lightning {m.get('lightning')}")
        for s in c["steps"]:
            print(f"[rehearsal]   {s['step']:13s} {s['status']:8s} {s['seconds']:6.1f}s of "
                  f"{s['budget_s']:5.0f}s  {s['note'][:90]}")
        print(f"[rehearsal]   {len(c['files'])} result files: "
              + ", ".join(f"{f['path']} ({f['bytes'] / 1024:.0f} KiB)" for f in c["files"]))
        problems += [f"{c['call']}: {x}" for x in c["problems"]]
    summary = {"python": args.python, "hidden_imports": hide, "carried_mib": carried / MIB,
               "tree_mib": tree_bytes / MIB, "travel_mib": total / MIB, "calls": calls,
               "problems": problems, "wall_s": round(time.perf_counter() - t0, 1)}
    (work / "rehearsal.json").write_text(json.dumps(summary, indent=2))
    for x in problems:
        print(f"[rehearsal] PROBLEM: {x}")
    print(f"[rehearsal] {'FAILED' if problems else 'ok'} in {summary['wall_s']}s; "
          f"{work / 'rehearsal.json'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
