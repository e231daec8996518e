"""Train once, evaluate many: the fingerprint of what was trained, the model lock, finished vs
partial models, forced retraining, and sweeps that train each distinct model exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffexp.config import ConfigError, validate_train_config
from diffexp.runs import store

from .helpers import REPO, compose_train, run_cli, train_config

TINY = ["data=synthetic", "model.widths=[16,32]", "model.blocks=1", "model.attn_levels=[1]",
        "model.head_dim=16", "train.batch_size=16", "train.n_sample_images=16",
        "sampler.steps=3", "trainer.log_every_n_steps=1"]


def _fp(*overrides, accelerator="cpu", precision="32-true"):
    c = train_config(*overrides)
    return store.fingerprint(c, accelerator, precision)[0]


TRAINING_CHANGES = [["seed=1"], ["data.scale=2"], ["data.subset=5000"], ["optim.lr=1e-3"],
                    ["train.epochs=2"], ["train.batch_size=64"], ["train.ema_decay=0.99"],
                    ["model.widths=[32,64,64]"], ["schedule=sigmoid"], ["objective=v"],
                    ["objective.normalize_input=true"], ["trainer.limit_train_batches=3"],
                    ["train.fid_every_n_epochs=1"]]
SAMPLING_CHANGES = [["sampler=heun"], ["sampler.steps=50"], ["grid=karras", "grid.rho=3"],
                    ["grid=exponential"], ["eval.n_samples=64"], ["logger=csv"], ["name=other"],
                    ["train.eval_at_end=false"], ["train.reuse=true"], ["train.retrain=true"],
                    ["sampler.clip_denoised=true"], ["+eval.samplers={a:{name:lms}}"]]


@pytest.mark.parametrize("change", TRAINING_CHANGES, ids=[" ".join(c) for c in TRAINING_CHANGES])
def test_a_training_key_changes_the_fingerprint(change):
    assert _fp(*change) != _fp()


@pytest.mark.parametrize("change", SAMPLING_CHANGES, ids=[" ".join(c) for c in SAMPLING_CHANGES])
def test_a_sampling_key_keeps_the_fingerprint(change):
    assert _fp(*change) == _fp()


def test_fingerprint_covers_device_precision_and_versions():
    base = _fp()
    assert _fp(accelerator="gpu", precision="bf16-mixed") != base
    assert _fp(precision="bf16-mixed") != base
    c = validate_train_config(compose_train([]))
    key, content = store.fingerprint(c, "cpu", "32-true")
    assert content["code"] == store.code_hash() and content["torch"] and content["diffexp"]
    assert content["config"]["seed"] == 0 and "sampler" not in content["config"]
    assert len(key) == 64


#: what scores or reports a trained model, and what trains it (issue 27: the store's own rule is
#: not copied here; these are checked against the package's real files)
SCORING = ["runs/report.py", "runs/evaluate.py", "evaluation.py", "metrics/*.py", "cli/*.py",
           "api.py", "benchmarking/*.py"]
TRAINING = ["runs/train.py", "module.py", "objectives.py", "schedules.py", "models/unet.py",
            "build.py", "runs/budget.py", "data.py", "ema.py", "config.py", "__init__.py"]


def _files(patterns, root=store.PACKAGE_DIR):
    out = []
    for pattern in patterns:
        found = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
        assert found, f"{pattern}: no such file in the package"  # no test of a stale path
        out += found
    return out


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the package that the store hashes instead of the real one."""
    pkg = tmp_path / "pkg" / "diffexp"
    shutil.copytree(store.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    monkeypatch.setattr(store, "PACKAGE_DIR", pkg)
    store._code_hash_of_this_process.cache_clear()
    yield pkg
    store._code_hash_of_this_process.cache_clear()


def _edit(path: Path, line="# an edit"):
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")


def test_training_code_is_what_the_training_path_imports():
    hashed = set(store.training_modules())
    assert set(_files(TRAINING)) <= hashed
    assert not set(_files(SCORING)) & hashed
    assert "runs/store.py" in hashed  # the entry: the store trains with runs.train.train
    every = {p.relative_to(store.PACKAGE_DIR).as_posix() for p in store.PACKAGE_DIR.rglob("*.py")}
    assert hashed < every


def test_the_scopes_left_out_of_the_walk_exist():
    """A renamed scope would cut nothing (and scoring code would retrain models): each one named
    is a top-level function or class of its module."""
    import ast

    modules = store._package_modules(store.PACKAGE_DIR)
    for name, scopes in store.NOT_TRAINING.items():
        tree = ast.parse(modules[name].read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        assert set(scopes) <= defined, (name, set(scopes) - defined)


@pytest.mark.parametrize("rel", _files(SCORING))
def test_editing_scoring_code_keeps_the_code_hash(rel, package_copy):
    base = store.code_hash()
    _edit(package_copy / rel)
    assert store.code_hash() == base


@pytest.mark.parametrize("rel", _files(TRAINING))
def test_editing_training_code_changes_the_code_hash(rel, package_copy):
    base = store.code_hash()
    _edit(package_copy / rel)
    assert store.code_hash() != base


def test_a_module_the_training_path_starts_to_import_is_training_code(package_copy):
    (package_copy / "new_module.py").write_text("X = 1\n", encoding="utf-8")
    base = store.code_hash()
    _edit(package_copy / "new_module.py")
    assert store.code_hash() == base  # imported by nothing on the training path
    _edit(package_copy / "objectives.py", "def _lazy():\n    from .new_module import X")
    with_import = store.code_hash()
    _edit(package_copy / "new_module.py", "Y = 2")
    assert store.code_hash() != with_import  # a lazy import inside a function counts
    # scoring code that training imports becomes training code
    _edit(package_copy / "evaluation.py")
    unchanged = store.code_hash()
    _edit(package_copy / "runs" / "train.py", "def _proxy():\n    from ..evaluation import X")
    assert "evaluation.py" in store.training_modules(package_copy)
    after = store.code_hash()
    assert after != unchanged
    _edit(package_copy / "evaluation.py")
    assert store.code_hash() != after


def test_a_stored_model_is_reused_after_a_scoring_edit_and_retrained_after_a_training_edit(
        tmp_path, monkeypatch, package_copy):
    import diffexp.runs.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "train", _fake_train(calls))
    monkeypatch.setattr(store, "_sweep_id", lambda run_dir: "A")
    c = _store_cfg(tmp_path)

    def obtain(cell):
        store._code_hash_of_this_process.cache_clear()  # as a new job's process would
        return store.obtain_model(c, tmp_path / cell)

    d0, s0, _ = obtain("cell0")
    assert s0 == "trained" and len(calls) == 1
    for i, rel in enumerate(_files(["runs/report.py", "runs/evaluate.py", "evaluation.py",
                                    "metrics/fid.py"])):
        _edit(package_copy / rel)
        d, s, _ = obtain(f"cell{i + 1}")
        assert (d, s) == (d0, "reused"), rel
    assert len(calls) == 1
    _edit(package_copy / "module.py")
    d, s, _ = obtain("cell9")
    assert s == "trained" and d != d0 and len(calls) == 2


_LOADED_BY_TRAINING = """
import json, sys
from diffexp.config import validate_train_config
from diffexp.runs import store
from tests.helpers import compose_train

c = validate_train_config(compose_train(sys.argv[2:]))
store.obtain_model(c, store.Path(sys.argv[1]))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "diffexp")))
"""


def test_every_module_a_training_job_loads_is_hashed(tmp_path):
    """Against the static walk: the package modules that a process that trained a tiny model
    through the store has loaded are all training code."""
    r = subprocess.run([sys.executable, "-c", _LOADED_BY_TRAINING, str(tmp_path / "cell"), *TINY,
                        "debug=fast", "logger=none", "train.eval_at_end=false",
                        f"train.model_store={tmp_path / 'models'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    files = store._package_modules(store.PACKAGE_DIR)
    hashed = set(store.training_modules())
    assert "diffexp.module" in loaded
    assert {m for m in loaded
            if files[m].relative_to(store.PACKAGE_DIR).as_posix() not in hashed} == set()


def test_reuse_active():
    cfg = train_config
    assert not store.reuse_active(cfg())  # auto outside a multirun: the run's own folder
    assert store.reuse_active(cfg("train.reuse=true"))
    assert not store.reuse_active(cfg("train.reuse=true", "task=noise_level"))
    assert not store.reuse_active(cfg("train.reuse=false"))
    with pytest.raises(ConfigError, match="train.reuse=true supports one training process"):
        store.reuse_active(cfg("train.reuse=true", "trainer=ddp"))
    with pytest.raises(ConfigError, match="train.reuse"):
        validate_train_config(compose_train(["train.reuse=sometimes"]))


_HOLDER = """
import sys, time
from pathlib import Path
from diffexp.runs.store import model_lock
with model_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_lock_excludes_then_frees_when_its_holder_is_killed(tmp_path):
    import fcntl

    lock = tmp_path / "m.lock"
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with open(lock, "a+") as f:  # held: a non-blocking try fails
            with pytest.raises(BlockingIOError):
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "pid" in lock.read_text()  # who holds it, for the waiting message
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        t0 = time.perf_counter()
        with store.model_lock(lock, poll_s=0.05):
            pass
        assert time.perf_counter() - t0 < 5  # no stuck lock after kill -9
    finally:
        if p.poll() is None:
            p.kill()


def _fake_train(calls, fail=False):
    """Stands in for training: records the call and writes what a finished run leaves."""

    def train(c, run_dir, run_name=None):
        calls.append(Path(run_dir))
        if fail:
            raise FloatingPointError("loss is nan at step 3")
        (Path(run_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        (Path(run_dir) / "summary.json").write_text(json.dumps({"global_step": 4}))
        return {"global_step": 4, "wall_time_s": 1.0}

    return train


def _store_cfg(tmp_path, *extra):
    return train_config(*TINY, f"train.model_store={tmp_path / 'models'}", *extra)


def test_finished_partial_failed_and_forced(tmp_path, monkeypatch):
    import diffexp.runs.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "train", _fake_train(calls))
    sweep = ["A"]
    monkeypatch.setattr(store, "_sweep_id", lambda run_dir: sweep[0])
    c = _store_cfg(tmp_path)
    d1, s1, _ = store.obtain_model(c, tmp_path / "cell0")
    d2, s2, _ = store.obtain_model(_store_cfg(tmp_path, "grid=karras", "grid.rho=3"),
                                   tmp_path / "cell1")
    assert (s1, s2) == ("trained", "reused") and d1 == d2 and len(calls) == 1
    done = json.loads((d1 / "DONE.json").read_text())
    assert done["sweep"] == "A" and done["resumed_partial_model"] is False
    # another training setting: another model
    d3, s3, _ = store.obtain_model(_store_cfg(tmp_path, "seed=1"), tmp_path / "cell2")
    assert s3 == "trained" and d3 != d1 and len(calls) == 2
    # a model without DONE.json is partial: it is continued, never reused as finished
    (d1 / "DONE.json").unlink()
    _, s4, _ = store.obtain_model(c, tmp_path / "cell3")
    assert s4 == "trained" and len(calls) == 3
    assert json.loads((d1 / "DONE.json").read_text())["resumed_partial_model"] is True
    # a fingerprint.json that does not match (a collision, a hand edit) is neither reused nor
    # continued: that folder is moved aside and the model trained afresh
    (d1 / "fingerprint.json").write_text("{}")
    assert store.obtain_model(c, tmp_path / "cell4")[1] == "trained" and len(calls) == 4

    def aside():
        return len(list((tmp_path / "models").glob(f"{d1.name}.replaced-*")))

    assert aside() == 1
    # train.retrain=true: trained again once in a new sweep, reused within that sweep
    sweep[0] = "B"
    forced = _store_cfg(tmp_path, "train.retrain=true")
    assert store.obtain_model(forced, tmp_path / "cell5")[1] == "trained" and len(calls) == 5
    assert aside() == 2, "the old model is kept aside, not deleted"
    assert store.obtain_model(forced, tmp_path / "cell6")[1] == "reused" and len(calls) == 5


def test_a_failed_training_fails_the_sweeps_other_jobs_fast(tmp_path, monkeypatch):
    import diffexp.runs.train as train_mod

    calls = []
    monkeypatch.setattr(train_mod, "train", _fake_train(calls, fail=True))
    sweep = ["A"]
    monkeypatch.setattr(store, "_sweep_id", lambda run_dir: sweep[0])
    c = _store_cfg(tmp_path)
    with pytest.raises(FloatingPointError):
        store.obtain_model(c, tmp_path / "cell0")
    with pytest.raises(RuntimeError, match="failed earlier in this sweep: FloatingPointError"):
        store.obtain_model(c, tmp_path / "cell1")
    assert len(calls) == 1
    sweep[0] = "B"  # a new sweep tries again
    monkeypatch.setattr(train_mod, "train", _fake_train(calls))
    assert store.obtain_model(c, tmp_path / "cell2")[1] == "trained" and len(calls) == 2


def _train_cli(*args, cwd, timeout=900):
    return run_cli("train.py", *args, cwd=cwd, timeout=timeout)


def _statuses(sweep: Path) -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["status"]
            for p in sweep.glob("*/model.json")}


def test_sweep_trains_each_model_once_and_rho_acts(tmp_path):
    """The headline sweep, tiny: 2 scales x 2 rhos trains 2 models and evaluates 4 cells; the rho
    cells of one model sample different grids; every job says trained or reused."""
    r = _train_cli("-m", *TINY, "debug=fast", "logger=none", "data.scale=0.5,2", "grid=karras",
                   "grid.rho=3,7", "eval.n_samples=32", "eval.batch_size=32",
                   "eval.diagnostics=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep"
    st = _statuses(sweep)
    assert len(st) == 4 and sorted(st.values()) == ["reused", "reused", "trained", "trained"]
    assert len(list((tmp_path / "runs" / "models").glob("*/DONE.json"))) == 2
    assert r.stdout.count(": trained runs/models/") == 2
    assert r.stdout.count(": reused runs/models/") == 2
    assert "[diffexp] models: 2 trained, 2 reused, for 4 job(s)" in r.stdout
    cells = {}
    for job in sweep.iterdir():
        if (job / "eval" / "metrics.json").is_file():
            m = json.loads((job / "eval" / "metrics.json").read_text())
            model = json.loads((job / "model.json").read_text())
            cells[job.name] = (m["sampler"]["rho"], model["dir"], m["fid"])
    assert len(cells) == 4
    by_model = {}
    for rho, model_dir, fid in cells.values():
        by_model.setdefault(model_dir, {})[rho] = fid
    assert len(by_model) == 2 and all(set(v) == {3.0, 7.0} for v in by_model.values())
    assert all(v[3.0] != v[7.0] for v in by_model.values())  # the rho columns differ
    assert (sweep / "report.md").is_file() and (sweep / "heatmap.png").is_file()


@pytest.mark.slow
def test_joblib_sweep_trains_each_model_once(tmp_path):
    r = _train_cli("-m", *TINY, "debug=fast", "logger=none", "data.scale=0.5,1,2",
                   "grid=karras", "grid.rho=3,5", "eval.n_samples=32", "eval.batch_size=32",
                   "eval.diagnostics=false", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3",
                   "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = _statuses(tmp_path / "sweep")
    assert len(st) == 6 and list(st.values()).count("trained") == 3
    assert len(list((tmp_path / "runs" / "models").glob("*/DONE.json"))) == 3


@pytest.mark.slow
def test_kill_the_training_job_then_rerun_the_sweep(tmp_path):
    """kill -9 while a shared model trains; the re-run sweep continues that model from its last
    checkpoint (no stuck lock, no partial model taken as finished) and evaluates every cell."""
    args = ["-m", *TINY, "data.subset=2000", "data.val_size=64", "train.epochs=4",
            "trainer.limit_train_batches=25", "train.sample_every_n_epochs=0", "logger=none",
            "grid=karras", "grid.rho=3,7", "eval.n_samples=32", "eval.batch_size=32",
            "eval.diagnostics=false"]
    p = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args,
                          "hydra.sweep.dir=sweep1"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    models = tmp_path / "runs" / "models"
    deadline = time.time() + 300
    while not list(models.glob("*/checkpoints/last.ckpt")):
        assert p.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    (model,) = [d for d in models.iterdir() if d.is_dir()]
    assert not (model / "DONE.json").exists()
    r = _train_cli(*args, "hydra.sweep.dir=sweep2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    st = _statuses(tmp_path / "sweep2")
    assert sorted(st.values()) == ["reused", "trained"]
    done = json.loads((model / "DONE.json").read_text())
    assert done["resumed_partial_model"] is True and done["global_step"] == 100
    assert all((d / "eval" / "metrics.json").is_file() for d in (tmp_path / "sweep2").iterdir()
               if d.is_dir() and not d.name.startswith("wandb"))


def test_sampling_sweeps_vary_slowest():
    from diffexp.cli.common import sampling_sweeps_first

    argv = ["-m", "data.scale=0.5,1,2", "grid=karras", "grid.rho=3,5,7", "sampler=euler,heun",
            "--config-name", "train", "seed=0"]
    out = sampling_sweeps_first(argv)
    assert out == ["-m", "grid.rho=3,5,7", "sampler=euler,heun", "data.scale=0.5,1,2",
                   "grid=karras", "--config-name", "train", "seed=0"]
    assert sorted(out) == sorted(argv)  # the same arguments, flags where they were


@pytest.mark.slow  # tens of seconds on 2 cores: with make test-slow
def test_study_recipe_composes_its_cells():
    import yaml

    from diffexp.cli.common import swept_keys
    from diffexp.config import CONF_DIR

    c = validate_train_config(compose_train(["experiment=study_scale"]))
    assert c["data"]["subset"] and c["eval"]["n_samples"] == 512 and c["task"] == "diffusion"
    params = yaml.safe_load((CONF_DIR / "experiment" / "study_scale.yaml").read_text())[
        "hydra"]["sweeper"]["params"]
    values = {k: str(v).split(",") for k, v in params.items()}
    assert values["data.scale"] == ["0.25", "0.5", "1", "2"]
    assert values["schedule"] == ["cosine", "sigmoid"]
    assert values["objective.normalize_input"] == ["false", "true"]
    assert len(values["sampler"]) == 4
    assert list(params)[0] == "sampler"  # sampling sweep first: consecutive jobs train new models
    trained = {_fp("experiment=study_scale", f"data.scale={b}", f"schedule={s}",
                   f"objective.normalize_input={n}", f"sampler={smp}")
               for b in values["data.scale"] for s in values["schedule"]
               for n in values["objective.normalize_input"] for smp in values["sampler"]}
    assert len(trained) == 16  # 64 cells, 16 trainings
    assert set(swept_keys(["-m", "experiment=study_scale"])) == set(params)


def test_failed_jobs_of_a_parallel_launcher_exit_1(tmp_path):
    r = _train_cli("-m", "data.scale=-1,-2", "logger=none", "hydra/launcher=joblib",
                   "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "2 job(s) failed" in r.stderr and "data.scale must be > 0" in r.stderr
