"""Train once, evaluate many: the jobs of a sweep share every model they have in common.

Jobs whose configs differ only in how the model is sampled or scored (sampler, grid, eval.*,
logger, run name) need the same trained model. Each training job therefore looks its model up in a
*model store* (``train.model_store``, default ``runs/models``) under a *fingerprint* of what was
trained, trains it there only if it is not there yet, and then evaluates it into its own folder
(a *cell*). The rules that keep this from giving a wrong answer:

* **The fingerprint covers everything but what is known not to affect training.** It is the
  SHA-256 of the whole validated config with only :data:`SAMPLING_ONLY` removed (so a key added
  tomorrow is part of it by default), the resolved accelerator and precision, the seed, the
  package and torch versions, and a hash of the package's training code. The model folder keeps
  the fingerprint's input as ``fingerprint.json``, and a reuse compares it in full.
* **The training code is what the training path imports** (:func:`training_modules`): the
  package modules reached from :data:`TRAINING_ENTRY` (this store and ``runs/train.py``) through
  every import in their source, a lazy one inside a function included, and the packages above
  each. A module added to that path is hashed the day it is imported, without a list to update;
  a module that only scores or reports (``runs/evaluate.py``, ``runs/report.py``,
  ``evaluation.py``, ``metrics/``, the command line) is not on it (``sampling.py`` and ``viz.py``
  are: the module draws its sample grids during training). The walk does not enter the
  few scopes of :data:`NOT_TRAINING`: the parts of the entry that score a model trained (the
  end-of-run evaluation and the FID proxy callback, whose samples draw from their own seeded
  generators, never the training noise's) and the root package's lazy Python API. Their own lines
  are still hashed with their module.
* **A model is finished only when ``DONE.json`` says so.** It is written (atomically) after
  training returned; a folder without it is a partial model: the next job that needs it continues
  it from its ``checkpoints/last.ckpt`` (``train.auto_resume``), never reuses it as finished.
* **One job trains a model at a time.** Jobs hold an exclusive ``flock`` on ``<model>.lock`` while
  they look and train; the operating system releases it when the process ends, however it ends
  (``kill -9`` included), so a killed job cannot leave a stuck lock. Other jobs wait and print
  that they are waiting. (flock works across processes on one machine and, on Linux, on NFS.)
* **A failed training is not retried by every job of the same sweep**: ``FAILED.txt`` records the
  sweep and the error, and the sweep's later jobs fail fast with it; a new sweep tries again.
* **A user can force a retrain**: ``train.retrain=true`` trains a fresh model in the first job of
  the sweep that needs it (the old folder is moved aside to ``<model>.replaced-<time>``), and the
  sweep's other jobs reuse that fresh model.

``train.reuse``: ``auto`` (default) shares models in multiruns and trains single runs in their own
folder as before; ``true`` shares in single runs too; ``false`` never shares (every job trains its
own model in its folder: the way to time a sweep without sharing).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import os
import subprocess
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

from ..config import ConfigError
from ..files import atomic_write_text
from ..say import say
from .env import in_multirun, make_logger, publish_summary, sweep_dir, wants_eval_at_end
from .record import read_json, read_summary, write_json, write_summary

__all__ = ["SAMPLING_ONLY", "TRAINING_ENTRY", "NOT_TRAINING", "training_modules", "fingerprint",
           "code_hash", "model_lock", "reuse_active", "run_cell", "model_dir_for"]

#: config keys (top-level groups, or ``group.key``) that change how a trained model is sampled,
#: scored, logged or named, never the weights; everything else is part of the fingerprint
SAMPLING_ONLY = ("sampler", "grid", "eval", "logger", "name", "ckpt_path", "resume",
                 # where the same images are read from (paths.data fills data.root)
                 "data.root", "data.download",
                 # a user's callbacks.extra may change the weights (SWA, early stopping): kept
                 "callbacks.checkpoints", "callbacks.lr_monitor", "callbacks.progress_bar",
                 "optimized_metric",
                 "train.eval_at_end", "train.reuse", "train.retrain", "train.model_store",
                 # how often a run saves last.ckpt mid-epoch: resuming is exact, weights unchanged
                 "train.checkpoint_every_minutes", "train.checkpoint_every_n_steps")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
_PACKAGE = __name__.split(".")[0]

#: where a model's training starts: this store, which trains a model with ``runs.train.train``
TRAINING_ENTRY = (__name__, f"{_PACKAGE}.runs.train")

#: top-level functions and classes on the training path that do not train, per module: the
#: imports inside them are not followed (their own lines are hashed with their module). A name
#: that is no longer there cuts nothing, so the walk then follows more, never less.
NOT_TRAINING = {
    # the end-of-run evaluation (the store trains with train.eval_at_end=false) and the FID proxy
    # callback, whose samples use their own seeded generators, not the training noise's
    f"{_PACKAGE}.runs.train": ("evaluate_at_end", "FidProxy"),
    # the Python API (diffexp.train and co.), imported on first attribute access only
    _PACKAGE: ("__getattr__",),
}


def _package_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    out = {}
    for path in package_dir.rglob("*.py"):
        parts = [_PACKAGE, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its source (at module level
    and inside functions and classes), except inside its :data:`NOT_TRAINING` scopes."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    skip = set(NOT_TRAINING.get(name, ()))
    tree = ast.parse(path.read_bytes(), filename=str(path))
    nodes = [n for n in tree.body
             if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name in skip)]
    out: set[str] = set()
    for node in (sub for top in nodes for sub in ast.walk(top)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # submodules, where they are
    return {m for m in out if m in known}


def training_modules(package_dir: Path | None = None) -> list[str]:
    """The package's training code: its source files (relative paths, sorted) reached from
    :data:`TRAINING_ENTRY` through their imports, with every package above a module reached
    (importing ``a.b.c`` runs ``a`` and ``a.b``)."""
    known = _package_modules(package_dir or PACKAGE_DIR)
    todo, seen = list(TRAINING_ENTRY), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(name, known[name], known))
    root = package_dir or PACKAGE_DIR
    return sorted(known[m].relative_to(root).as_posix() for m in seen)


@functools.lru_cache(maxsize=1)
def _code_hash_of_this_process() -> str:
    """:func:`code_hash` taken once per process: the code this process runs, even if the files
    are edited while a sweep is under way."""
    return code_hash()


def code_hash() -> str:
    """SHA-256 over the source of the package's training code (:func:`training_modules`: paths
    and bytes, sorted)."""
    h = hashlib.sha256()
    for rel in training_modules():
        h.update(rel.encode() + b"\0" + (PACKAGE_DIR / rel).read_bytes() + b"\0")
    return h.hexdigest()


def user_code_hash(c: dict) -> str | None:
    """SHA-256 over the source files of the user's modules that ``c``'s ``_target_`` entries
    name (a ``model._target_`` network, ``callbacks.extra``): editing one retrains its models.
    None where the config names none."""
    import importlib
    import inspect

    targets: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("_target_"), str):
                targets.add(node["_target_"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(c)
    files = {}
    for t in targets:
        name = t.rpartition(".")[0]
        path = inspect.getsourcefile(importlib.import_module(name))
        if path and not Path(path).resolve().is_relative_to(PACKAGE_DIR):
            files[name] = Path(path)
    if not files:
        return None
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return h.hexdigest()


def _git_commit() -> str | None:
    """The checkout's commit (with ``-dirty``), for the record only: not part of the key."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                             cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def fingerprint(c: dict, accelerator: str, precision: str) -> tuple[str, dict]:
    """``(sha256 hex, the canonical content hashed)`` of what training ``c`` produces."""
    from ..version import __version__

    trained = copy.deepcopy(c)
    for key in SAMPLING_ONLY:
        group, _, leaf = key.partition(".")
        if leaf:
            trained.get(group, {}).pop(leaf, None)
        else:
            trained.pop(group, None)
    content = {"config": trained, "accelerator": accelerator, "precision": precision,
               "diffexp": __version__, "torch": torch.__version__,
               "code": _code_hash_of_this_process(), "user_code": user_code_hash(trained)}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), json.loads(blob)


def model_dir_for(c: dict, key: str) -> Path:
    return Path(c["train"]["model_store"]) / (f"{c['schedule']['name']}-{c['objective']['name']}"
                                              f"-{key[:12]}")


@contextmanager
def model_lock(lock_path: Path, poll_s: float = 1.0):
    """Hold an exclusive flock on ``lock_path`` (created if needed); wait for it, saying so once.
    The operating system drops the lock when this process ends, so a killed holder frees it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise ConfigError("train.reuse needs file locks (fcntl), which this platform lacks; "
                          "use train.reuse=false") from None
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        said = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    f.seek(0)
                    holder = f.read().strip() or "another job"
                    say(f"[diffexp] waiting for {lock_path.with_suffix('')}: {holder} is "
                        f"training it")
                    said = True
                time.sleep(poll_s)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sweep_id(run_dir: Path) -> str:
    """What the jobs of one multirun share (its folder); a single run is its own sweep."""
    sweep = sweep_dir()
    return str((sweep or Path(run_dir)).resolve())


def reuse_active(c: dict) -> bool:
    """Whether this training job shares its model through the store (``train.reuse``)."""
    reuse = c["train"]["reuse"]
    if reuse is False or c["task"] != "diffusion" or c["ckpt_path"]:
        return False
    tr = c["trainer"]
    multi_process = "ddp" in str(tr["strategy"]) or tr["num_nodes"] != 1 or tr["devices"] not in (
        1, "1")
    if reuse is True:
        if multi_process:
            raise ConfigError("train.reuse=true supports one training process per job (not "
                              "trainer=ddp or several devices); use train.reuse=false")
        return True
    return in_multirun() and not multi_process


def _finished(model_dir: Path, key: str, content: dict) -> dict | None:
    """The DONE record of a finished model with this exact fingerprint, else None."""
    done = read_json(model_dir / "DONE.json")
    if not done or done.get("fingerprint") != key:
        return None
    if read_json(model_dir / "fingerprint.json") != content:
        return None
    if not (model_dir / "checkpoints" / "last.ckpt").is_file():
        return None
    return done


def _move_aside(model_dir: Path, why: str) -> None:
    dest = model_dir.with_name(f"{model_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S-%f}")
    os.replace(model_dir, dest)
    say(f"[diffexp] {why}: moved {model_dir} to {dest}")


def obtain_model(c: dict, run_dir: Path) -> tuple[Path, str, dict]:
    """The store's finished model for ``c``, training it first if needed.
    Returns ``(model_dir, "trained" | "reused", its summary)``."""
    from .train import _accelerator, _precision, train

    accelerator = _accelerator(c["trainer"])
    precision = _precision(c["trainer"], accelerator)
    key, content = fingerprint(c, accelerator, precision)
    model_dir = model_dir_for(c, key)
    sweep = _sweep_id(run_dir)
    with model_lock(model_dir.with_name(model_dir.name + ".lock")):
        done = _finished(model_dir, key, content)
        if done and c["train"]["retrain"] and done.get("sweep") != sweep:
            _move_aside(model_dir, "train.retrain=true")
            done = None
        if done:
            return model_dir, "reused", read_summary(model_dir) or {}
        failed = model_dir / "FAILED.txt"
        if failed.is_file():
            sweep_of_failure, _, error = failed.read_text().partition("\n")
            if sweep_of_failure == sweep:
                raise RuntimeError(f"training {model_dir} failed earlier in this sweep: "
                                   f"{error.strip()}")
            failed.unlink()
        if model_dir.exists() and not c["train"]["auto_resume"]:
            _move_aside(model_dir, "a partial model and train.auto_resume=false")
        elif model_dir.exists() and read_json(model_dir / "fingerprint.json") != content:
            _move_aside(model_dir, "a partial model of another fingerprint")
        model_dir.mkdir(parents=True, exist_ok=True)
        write_json(model_dir / "fingerprint.json", content)
        mc = copy.deepcopy(c)
        mc["name"] = model_dir.name
        mc["train"]["eval_at_end"] = False
        resumed = (model_dir / "checkpoints" / "last.ckpt").is_file()
        try:
            summary = train(mc, model_dir, run_name=training_run_name(c))
        except BaseException as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            atomic_write_text(failed, f"{sweep}\n{type(e).__name__}: {first}\n")
            raise
        write_json(model_dir / "DONE.json", {
            "fingerprint": key, "sweep": sweep, "finished": datetime.now().isoformat(),
            "resumed_partial_model": resumed, "git": _git_commit(),
            "global_step": summary.get("global_step"), "wall_time_s": summary.get("wall_time_s")})
        return model_dir, "trained", summary


def run_cell(c: dict, run_dir: Path) -> dict:
    """One job of a sweep: obtain its model from the store (training it if no job has), then
    evaluate it with this job's sampler, grid and eval settings into ``run_dir``."""
    from .train import evaluate_at_end, write_config

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    model_dir, status, model_summary = obtain_model(c, run_dir)
    trained_cfg = _read_yaml(model_dir / "config.yaml")
    c = copy.deepcopy(c)
    c["objective"]["sigma_data"] = trained_cfg["objective"].get("sigma_data")  # as measured
    c["trainer"]["precision"] = trained_cfg["trainer"]["precision"]
    model = {"status": status, "dir": str(model_dir.resolve()),
             "fingerprint": read_json(model_dir / "DONE.json")["fingerprint"],
             "checkpoint": str((model_dir / "checkpoints" / "last.ckpt").resolve()),
             "wandb_id": _read_text(model_dir / "wandb_id.txt")}
    say(f"[diffexp] {run_dir.name}: {status} {model_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(c, run_dir)
    write_json(run_dir / "model.json", model)
    summary = {k: v for k, v in model_summary.items() if k not in ("eval", "name")}
    summary.update(name=c["name"], model=model)
    if wants_eval_at_end(c):
        logger = make_logger({**c, "trained_model": model}, run_dir, job_type="eval",
                             name=_cell_name(c, run_dir))
        summary["eval"] = evaluate_at_end(c, run_dir, logger, ckpt=Path(model["checkpoint"]))
        if logger and c["logger"]["name"] == "wandb":
            publish_summary(logger, summary)
            logger.experiment.finish()
    summary["job_wall_time_s"] = round(time.perf_counter() - t0, 2)
    write_summary(run_dir, summary)
    return summary


def _sampling_only(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SAMPLING_ONLY)


def training_run_name(c: dict) -> str:
    """The logger's name for a model the store trains: the config's name and the values of the
    sweep's swept keys that change the weights (``cosine-eps data.scale=0.5``), the keys a
    dashboard tells the sweep's trainings apart by."""
    swept = [k for k in os.environ.get("DIFFEXP_SWEPT_KEYS", "").split(";") if k]
    parts = []
    for key in swept:
        if _sampling_only(key):
            continue
        node = c
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):  # a config group: its option's name
            node = node.get("name")
        parts.append(f"{key}={node}")
    return " ".join([str(c["name"]), *parts])


def _cell_name(c: dict, run_dir: Path) -> str:
    return f"{c['name']}/{run_dir.name}" if in_multirun() else c["name"]


def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
