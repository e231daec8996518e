"""``diffexp-eval`` / ``python eval.py ckpt=PATH ...``: compose the evaluation config with Hydra,
validate it and hand it to :func:`diffexp.runs.evaluate.run_eval` (what it writes is described
there). Works with ``-m`` sweeps over samplers, steps and rho on one checkpoint, and with
``hparams_search=sampler_optuna``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ..config import CONF_DIR, apply_paths, validate_eval_config, validate_paths
from .common import cli_main, job_return, run_job


def _evaluate(cfg: DictConfig, run_dir):
    from ..runs.evaluate import run_eval

    c = validate_eval_config(cfg)
    apply_paths(validate_paths(cfg.get("paths")))
    return run_eval(c, run_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig):
    return job_return(run_job(lambda run_dir: _evaluate(cfg, run_dir)),
                      cfg.get("optimized_metric"))


def main() -> None:
    cli_main(_hydra_main)


if __name__ == "__main__":
    main()
