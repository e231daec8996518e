"""``diffexp-train`` / ``python train.py``: compose a config with Hydra, validate it, and hand it
to the runs layer (:func:`diffexp.runs.train.train`, the model store of a sweep, or the no_t
study). What a run folder receives is described in :mod:`diffexp.runs.train`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..config import CONF_DIR, apply_paths, validate_paths, validate_train_config
from .common import cli_main, job_return, run_job


def dispatch(cfg: DictConfig, run_dir: Path) -> dict:
    from ..runs.env import holding_run_folder as _holding
    from ..runs.train import resume_config, train

    if (cfg.get("resume") or {}).get("run"):
        resumed_dir = Path(cfg.resume.run)
        c = resume_config(resumed_dir)
        with _holding(resumed_dir):
            return train(c, resumed_dir)
    c = validate_train_config(cfg)
    apply_paths(validate_paths(cfg.get("paths")))
    if c["task"] == "no_t_study":
        from ..runs.no_t_study import run_study

        with _holding(run_dir):
            return run_study(c, run_dir)
    from ..runs.store import reuse_active, run_cell

    with _holding(run_dir):
        if reuse_active(c):
            return run_cell(c, run_dir)
        return train(c, run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig):
    return job_return(run_job(lambda run_dir: dispatch(cfg, run_dir)),
                      cfg.get("optimized_metric"))


def _resume_in_place(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR`` (short for ``resume.run=RUN_DIR``) runs in RUN_DIR itself (Hydra's log
    appends there; the run's original .hydra/ is left untouched so reports still see its
    overrides)."""
    argv = [f"resume.run={a.split('=', 1)[1]}" if a.startswith("resume=") else a for a in argv]
    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume.run=")]
    if resume and resume[-1] and not any(a.startswith("hydra.run.dir=") for a in argv):
        return [*argv, f"hydra.run.dir={resume[-1]}", "hydra.output_subdir=null"]
    return argv


def main() -> None:
    sys.argv = [sys.argv[0], *_resume_in_place(sys.argv[1:])]
    cli_main(_hydra_main)


if __name__ == "__main__":
    main()
