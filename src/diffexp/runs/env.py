"""Where a run runs: inside a multirun or not, its sweep's name, and its metric logger.

Hydra is asked only here, and only whether a multirun is under way (outside Hydra, e.g. from the
Python API, a run is a single run)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["in_multirun", "sweep_dir", "wants_eval_at_end", "make_logger", "holding_run_folder",
           "publish_summary", "lr_monitor", "quiet_lightning_tip", "LR_KEY"]

#: the key the learning rate is logged under (callbacks.lr_monitor)
LR_KEY = "train/lr"


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def sweep_dir() -> Path | None:
    """The multirun's folder when running as one of its jobs, else None."""
    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir)


def wants_eval_at_end(c: dict) -> bool:
    """``train.eval_at_end``: true, false, or auto (true in a multirun, whose jobs are compared
    by their FID; false in a single run)."""
    e = c["train"]["eval_at_end"]
    return e is True or (e == "auto" and in_multirun())


def _wandb_logged_in() -> bool:
    """True when an API key is available without prompting: WANDB_API_KEY or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _is_litlogger_tip(record) -> bool:
    msg = record.msg if isinstance(record.msg, str) else ""
    return msg.startswith("\N{ELECTRIC LIGHT BULB} Tip:") and "litlogger" in msg


def quiet_lightning_tip() -> None:
    """Drop the one notice Lightning (2.6+) logs at INFO on every Trainer whose loggers include
    no LitLogger, an advertisement to install litlogger (``LoggerConnector.configure_logger``,
    no setting turns it off). A filter on Lightning's rank-zero logger drops that record alone:
    every other Lightning message still shows."""
    import logging

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(getattr(f, "__name__", "") == "_drop_litlogger_tip" for f in log.filters):
            def _drop_litlogger_tip(record) -> bool:
                return not _is_litlogger_tip(record)

            log.addFilter(_drop_litlogger_tip)


def lr_monitor(logging_interval: str = "step"):
    """Lightning's LearningRateMonitor, logging under :data:`LR_KEY` (``train/lr``; with several
    parameter groups ``train/lr/pg1``, ...) instead of Lightning's ``lr-<Optimizer>``, so the key
    does not change with ``optim.name``."""
    import re

    from pytorch_lightning.callbacks import LearningRateMonitor

    class _LearningRateMonitor(LearningRateMonitor):
        def _extract_stats(self, trainer, interval):
            stats = super()._extract_stats(trainer, interval)
            return {re.sub(r"^lr-\w+", LR_KEY, k): v for k, v in stats.items()}

    return _LearningRateMonitor(logging_interval=logging_interval)


def make_logger(c: dict, run_dir: Path, *, job_type: str = "train", name: str | None = None,
                group: str | None = None, config: dict | None = None):
    """The Lightning logger of ``c["logger"]`` writing into ``run_dir`` (False for none). A
    wandb run joins ``logger.group``, else ``group``, else its sweep's group, else (a single run)
    a group named after its run folder, which the run's evaluations join; it records its id and
    group in ``wandb.json`` and ``wandb_id.txt`` and continues that id after a resume. ``config``:
    what the run's config panel shows (default ``c``)."""
    quiet_lightning_tip()  # make_logger comes before every Trainer of a run
    lg = c["logger"]
    if lg["name"] == "none":
        return False
    if lg["name"] == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    from pytorch_lightning.loggers import WandbLogger

    mode = lg["mode"]
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
    sweep = sweep_dir()  # the jobs of one multirun share a group on the dashboard
    group = lg["group"] or group or (sweep.name if sweep else Path(run_dir).name)
    id_file = Path(run_dir) / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if name is None:  # a sweep's jobs are told apart by their overrides (the job folder's name)
        name = f"{c['name']}/{Path(run_dir).name}" if in_multirun() else c["name"]
    logger = WandbLogger(project=lg["project"], entity=lg["entity"], group=group,
                         tags=list(lg["tags"]), name=name, job_type=job_type,
                         save_dir=str(run_dir), mode=mode,
                         id=run_id, resume="allow" if run_id else None,
                         config=c if config is None else config,
                         log_model=lg.get("log_model", False), notes=lg.get("notes"),
                         save_code=bool(lg.get("save_code", False)))
    # Lightning always hands wandb.init an `anonymous` setting (None, or "allow" for any truthy
    # value: the "never" passed here before became "allow"), which current wandb (0.31) ignores
    # with a warning on every run: leave it out; wandb.init's own default is never anonymous
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict):
        init.pop("anonymous", None)
    return logger


def _launching_process() -> bool:
    """False in the extra processes a multi-GPU/multi-node launcher starts for ranks > 0 (they
    re-run the command and must not take the run folder's lock from their rank 0)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def holding_run_folder(run_dir: Path):
    """The run folder's lock (:func:`diffexp.files.hold_run_folder`) in the launching process;
    nothing in the rank processes it starts."""
    from ..files import hold_run_folder

    return hold_run_folder(run_dir) if _launching_process() else contextlib.nullcontext()


def _wandb_run(logger):
    """The wandb Run behind ``logger``; None for another logger, or in a DDP rank other than 0
    (where Lightning hands out a do-nothing stand-in)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover - Lightning is a dependency
        return None
    if not isinstance(logger, WandbLogger):
        return None
    import wandb

    exp = logger.experiment
    return exp if isinstance(exp, wandb.sdk.wandb_run.Run) else None


def publish_summary(logger, summary: dict) -> None:
    """A wandb run's summary (what the runs table, parallel-coordinates and scatter panels read):
    eval/fid, eval/kid_mean, eval/kid_std, eval/floor_fid, eval/nfe and the manifold numbers of
    the end-of-run evaluation (the first end sampler's; each one's eval/<label>/fid is logged by
    the evaluation itself), the final losses and the parameter count."""
    from .record import headline

    run = _wandb_run(logger)
    if run is None:
        return
    head = {k: summary[k] for k in ("final_train_loss", "final_val_loss", "parameters")
            if summary.get(k) is not None}
    evals = summary.get("eval")
    if evals:
        first = evals if "fid" in evals else next(iter(evals.values()))
        head.update(headline(first))
    run.summary.update(head)


def record_wandb_run(logger, run_dir: Path) -> dict | None:
    """Write the wandb run's id and group into ``run_dir`` (``wandb_id.txt``, ``wandb.json``):
    a resume continues the id, an evaluation of the run's checkpoint joins the group and links
    the id. Returns ``{"id", "group", "project"}``, None without a wandb logger."""
    exp = _wandb_run(logger)
    if exp is None:
        return None
    from ..files import atomic_write_text
    from .record import write_json

    info = {"id": exp.id, "group": exp.group, "project": exp.project}
    atomic_write_text(Path(run_dir) / "wandb_id.txt", exp.id or "")
    write_json(Path(run_dir) / "wandb.json", info)
    return info


def training_wandb_run(ckpt: str | Path) -> dict:
    """The wandb run that trained a checkpoint (``RUN/checkpoints/X.ckpt`` -> ``RUN/wandb.json``,
    or a model-store folder), ``{}`` when it was not logged to wandb."""
    from .record import read_json

    run = Path(ckpt).resolve().parent.parent
    info = read_json(run / "wandb.json")
    if info:
        return info
    old = run / "wandb_id.txt"  # runs written before wandb.json
    return {"id": old.read_text().strip()} if old.is_file() else {}
