"""Pieces shared by the entry points: the logger, job running (single and multirun), clean exits."""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from pathlib import Path

from hydra.experimental.callback import Callback

from ..config import CONF_DIR, ConfigError, check_group_choices, check_moved_settings
from ..errors import DiffexpError
from ..files import atomic_write_text
from ..say import attach_file_handlers, say

#: jobs of this process's multirun that failed: (run_dir, one-line error)
FAILED_JOBS: list[tuple[str, str]] = []


def fail(msg: str, code: int = 2):
    """End the command with one line on stderr and a non-zero status."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def _run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def discard_empty_run_dir(run_dir: Path) -> None:
    """After a config error: remove the folder Hydra created if it holds nothing but Hydra's own
    files, and the parents that are left empty, so a rejected command leaves nothing behind."""
    if not run_dir.is_dir():
        return
    if any(p.name not in {".hydra", ".lock"} and p.suffix != ".log" for p in run_dir.iterdir()):
        return
    import logging
    import shutil

    logging.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in list(run_dir.parents)[:2]:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


def run_job(fn):
    """Run ``fn(run_dir)`` as a Hydra job.

    Single run: a :class:`DiffexpError` (a bad setting or input file) prints one line and exits
    with status 2, leaving no run folder it did not need.
    Multirun: any failure is recorded in the job's folder as ``error.txt`` (one line) and in
    :data:`FAILED_JOBS`, and the sweep goes on with the next job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    run_dir = _run_dir_from_hydra()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    attach_file_handlers()  # diffexp's lines into this job's log file (train.log, eval.log)
    try:
        return fn(run_dir)
    except DiffexpError as e:
        if not multirun:
            discard_empty_run_dir(run_dir)
            fail(str(e))
        line = f"error: {e}"
    except Exception as e:  # noqa: BLE001 - a sweep must survive one bad job
        if not multirun:
            raise
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        line = f"{type(e).__name__}: {first}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "error.txt", line + "\n")
    FAILED_JOBS.append((str(run_dir), line))
    say(f"[diffexp] job failed ({run_dir}): {line}", stderr=True)
    return {"status": "failed", "error": line}


def job_return(result, metric: str | None):
    """What a job returns to Hydra: its result, or with ``optimized_metric`` that number of it (a
    float, as Hydra's Optuna sweeper needs; a failed job counts as the worst, +inf). The metric
    is read from an eval.py job's metrics, a training job's end-of-run evaluation (its first end
    sampler's with ``eval.samplers``) or, for the losses, the training summary."""
    if not metric:
        return result
    if not isinstance(result, dict) or result.get("status") == "failed":
        return float("inf")
    # an eval.py job's result holds the numbers; a training job's, its end-of-run evaluation's
    source = result.get("eval") if metric in ("fid", "kid_mean") and metric not in result \
        else result
    if source and metric not in source and metric in ("fid", "kid_mean"):
        source = next(iter(source.values()), None)  # eval.samplers: label -> metrics
    value = (source or {}).get(metric) if isinstance(source, dict) else None
    if value is None:
        raise ConfigError(f"optimized_metric={metric}: this job produced no {metric} (fid and "
                          f"kid_mean need train.eval_at_end=true)")
    return float(value)


def _top_level_split(value: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in value:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def swept_keys(argv: list[str]) -> list[str]:
    """Keys that a multirun command line sweeps: comma lists, range/choice/glob sweeps, and the
    sweeper params of a named ``sweep=NAME`` or ``experiment=NAME`` config."""
    keys = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key in ("sweep", "experiment"):
            import yaml

            f = CONF_DIR / key / f"{value}.yaml"
            if f.is_file():
                params = ((yaml.safe_load(f.read_text()) or {}).get("hydra", {})
                          .get("sweeper", {}).get("params", {}))
                keys += [k for k in params if k not in keys]
            continue
        if value.startswith(("range(", "choice(", "glob(")) or len(_top_level_split(value)) > 1:
            if key not in keys:
                keys.append(key)
    return keys


def job_name(overrides) -> str:
    """A multirun job folder name from the job's overrides: only the swept keys (as recorded by
    :func:`cli_main` in ``DIFFEXP_SWEPT_KEYS``), so names stay short and readable."""
    swept = [k for k in os.environ.get("DIFFEXP_SWEPT_KEYS", "").split(";") if k]
    items = []
    for ov in overrides:
        key = str(ov).split("=", 1)[0].lstrip("+~")
        if key in swept:
            items.append(str(ov).lstrip("+~"))
    name = ",".join(items).replace("/", "_")
    return name[:150] or "job"


#: the config groups each entry point composes, and the options it refuses (help pages list only
#: what the command accepts)
ENTRY_GROUPS = {
    "train": (["data", "model", "schedule", "objective", "sampler", "grid", "optim", "trainer",
               "callbacks", "logger", "experiment", "sweep", "hparams_search", "debug", "paths"],
              {"sampler": {"ckpt"}, "grid": {"ckpt"}, "hparams_search": {"sampler_optuna"}}),
    "eval": (["sampler", "grid", "logger", "hparams_search", "paths"],
             {"hparams_search": {"train_optuna"}}),
}


def config_groups_help(entry: str) -> str:
    """The "config groups" block of ``--help``: each group the entry point takes and its
    options, read from conf/ (``${diffexp_groups:train}`` in the help template)."""
    from ..config import group_options

    groups, refused = ENTRY_GROUPS[entry]
    lines = []
    for g in groups:
        options = [o for o in group_options(g) if o not in refused.get(g, set())]
        lines.append(f"{g}: {', '.join(options)}")
    return "\n".join(lines)


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("diffexp_job_name"):
        OmegaConf.register_new_resolver("diffexp_job_name", job_name)
    if not OmegaConf.has_resolver("diffexp_groups"):
        OmegaConf.register_new_resolver("diffexp_groups", config_groups_help)


def sampling_sweeps_first(argv: list[str]) -> list[str]:
    """A multirun command line with its sampling-only sweeps (``store.SAMPLING_ONLY``: sampler,
    grid, eval, ...) moved in front of the others. Hydra's sweep varies the first key slowest, so
    consecutive jobs then need different models, and a parallel launcher trains those at once
    instead of queueing jobs on one model's lock (see :mod:`diffexp.runs.store`)."""
    from ..runs.store import SAMPLING_ONLY

    def sampling_sweep(arg: str) -> bool:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        swept = value.startswith(("range(", "choice(", "glob(")) or len(
            _top_level_split(value)) > 1
        return bool(eq) and swept and (key in SAMPLING_ONLY or key.split(".")[0] in SAMPLING_ONLY)
    slots = [i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")]
    overrides = [argv[i] for i in slots]
    ordered = ([a for a in overrides if sampling_sweep(a)]
               + [a for a in overrides if not sampling_sweep(a)])
    out = list(argv)  # flags stay where they are; only the overrides change places
    for i, a in zip(slots, ordered):
        out[i] = a
    return out


class SweepEnd(Callback):
    """A Hydra callback (``hydra.callbacks`` in train.yaml / eval.yaml), run in the launching
    process when a multirun ends, whatever the launcher: records every job that left an
    ``error.txt`` (parallel launchers' workers fail in their own processes) so the command exits 1,
    prints how many models were trained and reused, and writes the sweep's report (report.md,
    heatmap, line plots) into the sweep folder, plus a wandb summary run when logging to wandb.
    ``x`` / ``y`` choose the heatmap's axes (a recipe sets ``hydra.callbacks.sweep_end.y``)."""

    def __init__(self, x: str | None = None, y: str | None = None):
        self.x, self.y = x, y

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        known = {d for d, _ in FAILED_JOBS}
        for err in sorted(sweep_dir.glob("*/error.txt")):
            if str(err.parent) not in known and str(err.parent.resolve()) not in known:
                FAILED_JOBS.append((str(err.parent), err.read_text().strip()))
        models = [json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/model.json")]
        if models:
            say(f"[diffexp] models: {models.count('trained')} trained, "
                f"{models.count('reused')} reused, for {len(models)} job(s)")
        try:
            from ..runs.report import _write_report, log_to_wandb

            files, rows, swept = _write_report(sweep_dir, None, self.x, self.y)
            say(f"[diffexp] report: {files['md']}"
                + (f", {files['heatmap']}" if "heatmap" in files else ""))
            lg = config.get("logger") or {}
            if lg.get("name") == "wandb":
                log_to_wandb(sweep_dir, files, rows, swept, project=lg.get("project", "diffexp"),
                             entity=lg.get("entity"), group=lg.get("group") or sweep_dir.name,
                             mode=lg.get("mode", "auto"))
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the sweep's results stand without it
            say(f"[diffexp] no sweep report: {e}", stderr=True)


def cli_main(hydra_main) -> None:
    """Pre-check group choices, run Hydra, and exit non-zero if any multirun job failed."""
    argv = sys.argv[1:]
    # a user's own modules (a `_target_` of callbacks.extra, logger.extra, ...) import from the
    # folder the command runs in, as with `python -m`; after the installed packages, so a file
    # there cannot shadow one of them
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        check_group_choices(argv)
        check_moved_settings(argv)
    except ConfigError as e:
        fail(str(e))
    if "-m" in argv or "--multirun" in argv:
        sys.argv = [sys.argv[0], *sampling_sweeps_first(argv)]
    os.environ["DIFFEXP_SWEPT_KEYS"] = ";".join(swept_keys(argv))
    # Lightning's own use of a deprecated torch name, printed at every checkpoint load: nothing
    # a user can act on, and it would be the first line above a one-line error
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    _register_resolvers()
    hydra_main()
    if FAILED_JOBS:
        say(f"[diffexp] {len(FAILED_JOBS)} job(s) failed:", stderr=True)
        for d, line in FAILED_JOBS:
            print(f"  {d}: {line}", file=sys.stderr)
        sys.exit(1)


# registered on import, so launcher worker processes that import the task function have it too
_register_resolvers()
