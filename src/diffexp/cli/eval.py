"""``diffexp-eval`` / ``python eval.py ckpt=PATH ...``: FID/KID of a checkpoint with any sampler.

Writes into its run folder: ``metrics.json`` (fid, kid_mean, kid_std, the floor, n, nfe, seed,
sampler settings, wall time, images/s, protocol), ``samples.png``, ``per_step.csv`` /
``per_step.png`` with ``eval.per_step=true``, ``diagnostics/*.png``, and logs the same to the
logger. Works with ``-m`` sweeps over samplers, steps and rho on one checkpoint.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from ..config import CONF_DIR, ConfigError, _choice, _require, _typed
from ..runs.env import make_logger
from ..runs.record import host_info, write_json
from .common import cli_main, run_job


@dataclass
class EvalCfg:
    n_samples: int = 2048
    batch_size: int = 512
    use_ema: bool = True
    features: str = "fashion"
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    floor: bool = True
    per_step: bool = False
    diagnostics: bool = True
    n_grid: int = 64
    device: str = "auto"


EVAL_TOP_KEYS = {"defaults", "ckpt", "seed", "name", "data_root", "eval", "sampler", "grid",
                 "logger", "objective", "hydra"}
NO_T_KEYS = ("noise_level_ckpt", "use_predicted_noise_level", "clamp_factor")


def resolve_sampler(ckpt_sampler: dict, requested: dict) -> dict:
    """``sampler=ckpt`` (default): the checkpoint's sampler with every non-null key of the request
    laid over it; any other sampler: the request as it is. The same rule serves ``grid=ckpt``."""
    requested = {k: v for k, v in requested.items()}
    if requested.get("name") == "ckpt":
        out = dict(ckpt_sampler)
        out.update({k: v for k, v in requested.items() if k != "name" and v is not None})
        return out
    return requested


def validate_eval_config(cfg: DictConfig) -> dict:
    from ..config import validate_grid, validate_logger, validate_sampler

    unknown = sorted(set(cfg.keys()) - EVAL_TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level setting; valid: "
                          f"{', '.join(sorted(EVAL_TOP_KEYS - {'defaults', 'hydra'}))}")
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt is required: ckpt=PATH to a training checkpoint (.ckpt)")
    c = {"ckpt": str(cfg.ckpt), "seed": cfg.seed, "name": cfg.name,
         "data_root": cfg.get("data_root")}
    _require(isinstance(c["seed"], int) and c["seed"] >= 0, "seed", "must be an int >= 0",
             c["seed"])
    if not Path(c["ckpt"]).is_file():
        raise ConfigError(f"ckpt={c['ckpt']!r}: no such checkpoint file")
    e = _typed(cfg.eval, EvalCfg, "eval")
    _require(e["n_samples"] >= 2, "eval.n_samples", "must be >= 2", e["n_samples"])
    _require(e["batch_size"] >= 1, "eval.batch_size", "must be >= 1", e["batch_size"])
    _require(e["n_grid"] >= 1, "eval.n_grid", "must be >= 1", e["n_grid"])
    _require(e["kid_subset_size"] >= 2, "eval.kid_subset_size", "must be >= 2",
             e["kid_subset_size"])
    _require(e["kid_subsets"] >= 1, "eval.kid_subsets", "must be >= 1", e["kid_subsets"])
    _choice(e["features"], "eval.features", ["fashion", "inception"])
    _choice(e["device"], "eval.device", ["auto", "cpu", "cuda"])
    c["eval"] = e
    c["sampler"] = OmegaConf.to_container(cfg.sampler, resolve=True)
    if c["sampler"].get("name") != "ckpt":
        validate_sampler(c["sampler"])
    c["grid"] = OmegaConf.to_container(cfg.get("grid") or {"name": "ckpt"}, resolve=True)
    if c["grid"].get("name") != "ckpt":
        validate_grid(c["grid"])
    c["logger"] = validate_logger(cfg.logger)
    obj = OmegaConf.to_container(cfg.get("objective") or {}, resolve=True)
    unknown = sorted(set(obj) - set(NO_T_KEYS))
    if unknown:
        raise ConfigError(f"objective.{unknown[0]}: unknown setting; eval accepts "
                          f"{', '.join('objective.' + k for k in NO_T_KEYS)}")
    c["objective"] = {k: v for k, v in obj.items() if v is not None}
    if "clamp_factor" in c["objective"]:
        _require(c["objective"]["clamp_factor"] >= 1, "objective.clamp_factor", "must be >= 1",
                 c["objective"]["clamp_factor"])
    return c


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device='cuda' but no CUDA GPU is visible; use auto or cpu")
    return torch.device(name)


def run_eval(c: dict, run_dir: str | Path) -> dict:
    from .. import sampling
    from ..build import pop_denoiser_options
    from ..data import DataError
    from ..evaluation import (
        REFERENCE_KEY,
        diagnostics,
        evaluate_samples,
        floor_images,
        make_evaluator,
        per_step_figure,
        reference_images,
    )
    from ..metrics import FeatureNetError, feature_net_info
    from ..module import load_module
    from ..runs.record import model_record
    from ..viz import save_figure, save_grid

    run_dir = Path(run_dir)
    e = c["eval"]
    device = _device(e["device"])
    t_start = time.perf_counter()
    module = load_module(c["ckpt"], map_location="cpu")
    if c["objective"]:
        if module.cfg["objective"]["name"] != "no_t":
            raise ConfigError(f"objective.{next(iter(c['objective']))} applies to no_t "
                              f"checkpoints only (this one is {module.cfg['objective']['name']})")
        # the no_t model's sampling options, laid over its config before it is built again
        module = load_module(c["ckpt"], map_location="cpu", changes={"objective": c["objective"]})
    module = module.to(device)
    mcfg = module.cfg
    if mcfg["objective"]["name"] == "no_t":
        try:
            if mcfg["objective"].get("use_predicted_noise_level", True):
                module.noise_level_net()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    sampler_cfg = resolve_sampler(mcfg["sampler"], c["sampler"])
    grid_cfg = resolve_sampler(mcfg.get("grid") or {"name": "schedule"}, c.get("grid") or
                               {"name": "ckpt"})
    try:
        plain_cfg, denoiser_opts = pop_denoiser_options(sampler_cfg)
        grid_kw, options = sampling.split_sampler_config(plain_cfg, grid_cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    data_root = c["data_root"] or mcfg["data"].get("root")
    try:
        evaluator = make_evaluator(data_root, device=device, features=e["features"],
                                   kid_subset_size=e["kid_subset_size"],
                                   kid_subsets=e["kid_subsets"])
    except (DataError, FeatureNetError) as err:
        raise ConfigError(str(err)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    n = e["n_samples"]
    rho = f" rho={grid_kw['rho']:g}" if grid_kw["grid"] == "karras" else ""
    print(f"[diffexp] eval {c['ckpt']}: {sampler_cfg['name']} steps={grid_kw['steps']} "
          f"grid={grid_kw['grid']}{rho}, n={n}, device={device}")
    metrics, u8, rows = evaluate_samples(module, evaluator, sampler_cfg, grid_cfg=grid_cfg,
                                         n=n, seed=c["seed"],
                                         batch_size=e["batch_size"], use_ema=e["use_ema"],
                                         per_step=e["per_step"])
    floor = evaluator.floor(floor_images(n, data_root, seed=c["seed"])) if e["floor"] else None
    save_grid(u8[:e["n_grid"]], run_dir / "samples.png")
    info = feature_net_info() if e["features"] == "fashion" else {}
    result = {
        **{k: metrics[k] for k in ("fid", "kid_mean", "kid_std", "n", "nfe")},
        "floor": floor,
        "seed": c["seed"],
        "sampler": {**grid_kw, "options": options, **denoiser_opts},
        "grid": sampling.validate_grid_config(grid_cfg),
        "steps": grid_kw["steps"],
        "sampler_name": grid_kw["sampler"],
        "wall_time_s": None,  # filled in below
        "sample_time_s": metrics["sample_time_s"],
        "score_time_s": metrics["score_time_s"],
        "images_per_s": metrics["images_per_s"],
        "nfe_per_s": metrics["nfe_per_s"],
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "host": host_info(),
        "checkpoint": str(Path(c["ckpt"]).resolve()),
        "use_ema": e["use_ema"],
        "model": {**model_record(mcfg),
                  "parameters": sum(p.numel() for p in module.net.parameters())},
        "protocol": {"features": e["features"], "feature_net_sha256": evaluator.net.sha256,
                     "feature_net_test_accuracy": info.get("test_accuracy"),
                     "reference": REFERENCE_KEY, "reference_n": len(evaluator.ref_features),
                     "floor": "n training images (seeded permutation) vs the reference",
                     "kid_subset_size": min(e["kid_subset_size"], n),
                     "kid_subsets": e["kid_subsets"]},
    }
    if rows is not None:
        with open(run_dir / "per_step.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        save_figure(per_step_figure(rows), run_dir / "per_step.png")
        result["per_step"] = rows
    if e["diagnostics"]:
        real = reference_images(data_root)[:8]
        for name, fig in diagnostics(module, real, use_ema=e["use_ema"], seed=c["seed"]).items():
            save_figure(fig, run_dir / "diagnostics" / f"{name}.png")
    result["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    write_json(run_dir / "metrics.json", result)
    _log(c, run_dir, result)
    fl = f", floor {floor['fid']:.3f}" if floor else ""
    print(f"[diffexp] FID {result['fid']:.3f}, KID {result['kid_mean']:.5f} "
          f"+- {result['kid_std']:.5f}{fl}; nfe {result['nfe']}; {result['wall_time_s']}s; "
          f"{run_dir / 'metrics.json'}")
    return result


def _log(c: dict, run_dir: Path, result: dict) -> None:
    logger = make_logger({**c, "name": c["name"]}, run_dir)
    if not logger:
        return
    flat = {f"eval/{k}": result[k] for k in ("fid", "kid_mean", "kid_std", "nfe",
                                            "images_per_s", "wall_time_s")}
    if result["floor"]:
        flat.update({f"eval/floor_{k}": result["floor"][k] for k in ("fid", "kid_mean")})
    logger.log_hyperparams({"eval": c, "sampler_resolved": result["sampler"]})
    logger.log_metrics(flat, step=0)
    if hasattr(logger, "log_image"):
        imgs = [run_dir / "samples.png", *sorted((run_dir / "diagnostics").glob("*.png"))]
        if (run_dir / "per_step.png").exists():
            imgs.append(run_dir / "per_step.png")
        logger.log_image(key="eval", images=[str(p) for p in imgs],
                         caption=[p.stem for p in imgs], step=0)
    logger.finalize("success")
    if hasattr(logger, "experiment") and c["logger"]["name"] == "wandb":
        logger.experiment.finish()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig):
    return run_job(lambda run_dir: run_eval(validate_eval_config(cfg), run_dir))


def main() -> None:
    cli_main(_hydra_main)


if __name__ == "__main__":
    main()
