"""The GPU run's rehearsal on the CPU (scripts/gpu_rehearsal.py): the session command a lent GPU
machine runs, ``bash scripts/gpu_session.sh``, with ``--dry-run`` in a copy of the tree that
travels, with the carried wheels only and no package index, against the device tool's limits; and
the pieces it relies on (the per-test report and time limit of the GPU tests, the deadline, the
result-file checks). The quick rehearsal runs two steps of the first call; the slow one both calls
whole (make gpu-rehearsal runs it in an environment made like the GPU machine's)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .helpers import REPO

SCRIPTS = REPO / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"diffexp_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_gpu_tests_skip_the_end_of_run_evaluation():
    from tests import test_gpu
    from tests.helpers import train_config

    assert train_config(*test_gpu.RUN)["train"]["eval_at_end"] is False


def test_session_script_installs_nothing_from_an_index():
    text = (SCRIPTS / "gpu_session.sh").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "set -e" not in code and "pip install -e" not in code and "make install" not in code
    assert "--no-index" in code and "--target" in code and "PIP_NO_INDEX=1" in code


def test_pytest_report_is_written_per_test_and_times_out(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import time, pytest\n"
        "def test_ok(): pass\n"
        "def test_slow(): time.sleep(30)\n"
        "@pytest.mark.skip(reason='no')\n"
        "def test_skip(): pass\n")
    report = tmp_path / "r.xml"
    env = dict(_env(), PYTHONPATH=str(SCRIPTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "gpu_pytest_report", f"--gpu-report={report}",
         "--gpu-test-timeout=1", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         str(tmp_path / "test_x.py")], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    assert set(cases) == {"test_ok", "test_slow", "test_skip"}
    assert cases["test_slow"].find("failure") is not None
    assert "gpu-test-timeout" in cases["test_slow"].find("failure").text
    assert 0.9 < float(cases["test_slow"].get("time")) < 10
    assert cases["test_skip"].find("skipped") is not None
    assert len(list(cases["test_ok"])) == 0


def test_result_checks_count_depth_names_and_size(tmp_path):
    rh = _load("gpu_rehearsal")
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    for i in range(7):
        (out / f"f{i}.json").write_text("{}")
    assert rh.check_results(out)[0] == []
    (out / "a" / "b" / "ok.txt").write_text("x")  # 8 files, 2 folders down: still fine
    assert rh.check_results(out)[0] == []
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "bad name.txt").write_text("x")
    problems = " | ".join(rh.check_results(out)[0])
    assert "3 folders below" in problems and "other characters" in problems
    assert "10 result files" in problems


def test_steps_must_end_inside_their_budgets():
    rh = _load("gpu_rehearsal")
    res = {"steps": {"fid": {"status": "ok", "seconds": 50.0, "budget_s": 45.0},
                     "bench": {"status": "skipped", "seconds": 0.0, "budget_s": 60.0,
                               "reason": "no CUDA"}}}
    problems, rows = rh.check_steps(res, Path("/nowhere"), hide=False)
    assert [r["step"] for r in rows] == ["fid", "bench"]
    assert any("over its 45s budget" in p for p in problems)


def test_deadline_skips_what_no_longer_fits(tmp_path):
    out = tmp_path / "gc.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", "--only",
                           "flops,full_run", "--deadline", "1", "--out", str(out), "--quiet"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert {k: v["status"] for k, v in res["steps"].items()} == {"flops": "skipped",
                                                                   "full_run": "skipped"}
    assert all("no time left in the call" in v["reason"] for v in res["steps"].values())


def _rehearse(tmp_path, *args: str, timeout: float) -> dict:
    work = tmp_path / "rehearsal"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_rehearsal.py"), "--work", str(work),
                           *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    summary = json.loads((work / "rehearsal.json").read_text())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert summary["problems"] == []
    assert summary["travel_mib"] <= 64 and summary["carried_mib"] > 20  # the data is carried
    return summary


def test_rehearsal_of_the_first_call(tmp_path, data_root):
    """Prep, the tree copy, then `gpu_session.sh checks --dry-run` limited to its first two
    steps: the carried wheels installed with --target and imported from there, the course recipe
    composed, eager training steps and a checkpoint write; the limits checked."""
    s = _rehearse(tmp_path, "--calls", "checks", "--only", "env,train_step",
                  "--data-root", str(data_root), timeout=300)
    (call,) = s["calls"]
    assert [r["step"] for r in call["steps"]] == ["env", "train_step"]
    assert all(r["status"] == "ok" for r in call["steps"])
    assert {f["path"] for f in call["files"]} >= {"session.log", "gpu_check.json"}
    assert len(call["files"]) <= 8


@pytest.mark.slow  # both calls whole, CPU-sized: about 2 minutes on the shared 2-core machine
def test_rehearsal_of_both_calls(tmp_path, data_root):
    s = _rehearse(tmp_path, "--data-root", str(data_root), timeout=900)
    checks, full = s["calls"]
    status = {r["step"]: r["status"] for r in checks["steps"]}
    assert status == {"env": "ok", "train_step": "ok", "fid": "ok", "gpu_tests": "skipped",
                      "train_course": "ok", "flops": "ok", "bench": "skipped"}, status
    assert {r["step"]: r["status"] for r in full["steps"]} == {"env": "ok", "full_run": "ok"}
    assert {f["path"] for f in full["files"]} >= {"full_run.json", "full_run_summary.json"}
    for call in (checks, full):
        assert call["wall_s"] < call["limit_s"] and len(call["files"]) <= 8
