"""Evaluating a checkpoint (what ``python eval.py ckpt=PATH ...`` runs): FID/KID,
precision/recall, density/coverage and class balance with any sampler.

Writes into its run folder: ``metrics.json`` (fid, kid_mean, kid_std, precision, recall, density,
coverage, the class histogram with its TV distance and mean confidence, the floor, n, nfe, seeds,
sampler settings, wall time, images/s, protocol), ``samples.png``, ``samples_by_class.png``,
``per_step.csv`` / ``per_step.png`` with ``eval.per_step=true``, ``diagnostics/*.png``, and logs
the same to the logger. ``eval.seeds=[0,1,2]`` evaluates the same model with each sampling seed:
every number in metrics.json is then the mean over seeds, ``seed_std`` holds the sample std and
``per_seed`` each seed's values (the floor likewise, with a real draw per seed). Works with ``-m``
sweeps over samplers, steps and rho on one checkpoint.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from ..config import ConfigError
from ..files import atomic_open_text
from ..precision import cpu_bf16_warning
from ..say import say
from .env import make_logger
from .record import host_info, write_json


def resolve_sampler(ckpt_sampler: dict, requested: dict) -> dict:
    """``sampler=ckpt`` (default): the checkpoint's sampler with every non-null key of the request
    laid over it; any other sampler: the request as it is. The same rule serves ``grid=ckpt``."""
    requested = {k: v for k, v in requested.items()}
    if requested.get("name") == "ckpt":
        out = dict(ckpt_sampler)
        out.update({k: v for k, v in requested.items() if k != "name" and v is not None})
        return out
    return requested


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("eval.device='cuda' but no CUDA GPU is visible; use auto or cpu")
    return torch.device(name)


def run_eval(c: dict, run_dir: str | Path) -> dict:
    from .. import sampling
    from ..build import pop_denoiser_options
    from ..data import CLASSES, DataError
    from ..evaluation import (
        REFERENCE_KEY,
        SCALAR_METRICS,
        class_grid_figure,
        diagnostics,
        evaluate_samples,
        floor_images,
        make_evaluator,
        per_step_figure,
        reference_images,
        summarize_seeds,
    )
    from ..metrics import FeatureNetError, feature_net_info
    from ..module import load_module
    from ..viz import save_figure, save_grid
    from .record import model_record

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
    if e["precision"] != "ckpt":  # sampling precision is a runtime choice, like the device
        module.precision = e["precision"]
    slow = cpu_bf16_warning(module.precision, device.type, "eval.precision")
    if slow:
        say(f"[diffexp] warning: {slow}")
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
                                   kid_subsets=e["kid_subsets"], prdc_k=e["prdc_k"])
    except (DataError, FeatureNetError) as err:
        raise ConfigError(str(err)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    n = e["n_samples"]
    rho = f" rho={grid_kw['rho']:g}" if grid_kw["grid"] == "karras" else ""
    say(f"[diffexp] eval {c['ckpt']}: {sampler_cfg['name']} steps={grid_kw['steps']} "
        f"grid={grid_kw['grid']}{rho}, n={n}, device={device}")
    seeds = e["seeds"] or [c["seed"]]
    per_seed, step_rows, u8 = [], [], None
    for seed in seeds:
        if len(seeds) > 1:
            say(f"[diffexp] seed {seed} ({len(per_seed) + 1} of {len(seeds)})")
        metrics, images, rows = evaluate_samples(module, evaluator, sampler_cfg,
                                                 grid_cfg=grid_cfg, n=n, seed=seed,
                                                 batch_size=e["batch_size"],
                                                 use_ema=e["use_ema"], per_step=e["per_step"])
        # the floor draws its real images with the same seed: its spread over seeds is the
        # sampling noise of a perfect generator at this n
        floor = evaluator.floor(floor_images(n, data_root, seed=seed)) if e["floor"] else None
        per_seed.append(_seed_record(seed, metrics, floor))
        step_rows += [{"seed": seed, **r} for r in rows or []]
        u8 = images if u8 is None else u8  # the grids show the first seed's images
    mean, std = summarize_seeds([{k: v for k, v in r.items() if k != "floor"} for r in per_seed])
    floor = None
    if e["floor"]:
        floor_mean, floor_std = summarize_seeds([r["floor"] for r in per_seed])
        floor = {**floor_mean, "n": n, "k": e["prdc_k"], "seed_std": floor_std}
    save_grid(u8[:e["n_grid"]], run_dir / "samples.png")
    labels, confidence = evaluator.predict(u8)
    save_figure(class_grid_figure(u8, labels, confidence), run_dir / "samples_by_class.png")
    info = feature_net_info() if e["features"] == "fashion" else {}
    ref_hist = evaluator.reference_class_hist
    result = {
        **{k: mean.get(k) for k in SCALAR_METRICS},  # None: undefined at this n (k-NN)
        "n": n,
        "nfe": metrics["nfe"],
        "k": e["prdc_k"],
        "class_names": list(CLASSES),
        "class_hist": mean["class_hist"],
        "class_hist_reference": [round(int(h) / int(ref_hist.sum()), 6) for h in ref_hist],
        "floor": floor,
        "seed": seeds[0],
        "seeds": seeds,
        "seed_std": std,
        "per_seed": per_seed,
        "sampler": {**grid_kw, "options": options, **denoiser_opts},
        "grid": sampling.validate_grid_config(grid_cfg),
        "steps": grid_kw["steps"],
        "sampler_name": grid_kw["sampler"],
        "wall_time_s": None,  # filled in below
        "sample_time_s": round(sum(r["sample_time_s"] for r in per_seed), 3),
        "score_time_s": round(sum(r["score_time_s"] for r in per_seed), 3),
        "images_per_s": mean["images_per_s"],
        "nfe_per_s": mean["nfe_per_s"],
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "network_precision": module.precision,  # what the network sampled in (eval.precision)
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
                     "kid_subsets": e["kid_subsets"],
                     "prdc": f"k-NN balls, k={e['prdc_k']}, generated vs the whole reference "
                             f"(Kynkaanniemi et al. 2019; Naeem et al. 2020)",
                     "class_balance": "argmax of the shipped classifier; TV distance to the "
                                      "reference labels' histogram",
                     "seed_std": "sample std (ddof=1) over eval.seeds"},
    }
    if step_rows:
        with atomic_open_text(run_dir / "per_step.csv", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(step_rows[0]))
            w.writeheader()
            w.writerows(step_rows)
        save_figure(per_step_figure(step_rows), run_dir / "per_step.png")
        result["per_step"] = step_rows
    if e["diagnostics"]:
        real = reference_images(data_root)[:8]
        for name, fig in diagnostics(module, real, use_ema=e["use_ema"], seed=seeds[0]).items():
            save_figure(fig, run_dir / "diagnostics" / f"{name}.png")
    result["wall_time_s"] = round(time.perf_counter() - t_start, 2)
    write_json(run_dir / "metrics.json", result)
    _log(c, run_dir, result, mcfg)
    say(f"[diffexp] {headline(result)}; nfe {result['nfe']}; {result['wall_time_s']}s; "
        f"{run_dir / 'metrics.json'}")
    return result


def _seed_record(seed: int, metrics: dict, floor: dict | None) -> dict:
    """One seed's numbers for metrics.json's ``per_seed``."""
    from ..evaluation import SCALAR_METRICS

    keep = (*SCALAR_METRICS, "class_hist", "sample_time_s", "score_time_s", "images_per_s",
            "nfe_per_s")
    return {"seed": seed, **{k: metrics[k] for k in keep if k in metrics}, "floor": floor}


def _pm(result: dict, key: str, fmt: str) -> str:
    if result.get(key) is None:
        return "n/a"
    std = (result.get("seed_std") or {}).get(key)
    return format(result[key], fmt) + (f" ± {format(std, fmt)}" if std is not None else "")


def headline(result: dict) -> str:
    """``FID a ± s, KID ..., P/R ..., density/coverage ..., class TV ..., floor ...`` (± the std
    over seeds where several were evaluated)."""
    fl = result.get("floor")
    floor = (f"; floor FID {_pm(fl, 'fid', '.3f')}, P/R {_pm(fl, 'precision', '.3f')}/"
             f"{_pm(fl, 'recall', '.3f')}" if fl else "")
    seeds = f" over {len(result['seeds'])} seeds" if len(result.get("seeds") or []) > 1 else ""
    return (f"FID {_pm(result, 'fid', '.3f')}, KID {_pm(result, 'kid_mean', '.5f')}, "
            f"precision {_pm(result, 'precision', '.3f')}, recall {_pm(result, 'recall', '.3f')}, "
            f"density {_pm(result, 'density', '.3f')}, coverage {_pm(result, 'coverage', '.3f')}, "
            f"class TV {_pm(result, 'class_tv', '.3f')}, confidence "
            f"{_pm(result, 'class_confidence', '.3f')}{seeds}{floor}")


#: the numbers that go to the logger (the wandb summary) as eval/<name>
LOGGED = ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_tv",
          "class_confidence", "nfe", "images_per_s", "wall_time_s")


def summary_metrics(result: dict) -> dict:
    """The flat ``eval/...`` dict logged for one evaluation: every :data:`LOGGED` number, its std
    over seeds as ``eval/<name>_seed_std`` where several seeds ran, the floor's as
    ``eval/floor_<name>``, and the class histogram as ``eval/class_hist/<class>`` (mean counts)."""
    flat = {f"eval/{k}": result.get(k) for k in LOGGED}
    for k, v in (result.get("seed_std") or {}).items():
        if k in LOGGED:
            flat[f"eval/{k}_seed_std"] = v
    fl = result.get("floor")
    if fl:
        flat.update({f"eval/floor_{k}": fl.get(k) for k in ("fid", "kid_mean", "precision",
                                                             "recall", "density", "coverage",
                                                             "class_tv")})
    for name, count in zip(result["class_names"], result["class_hist"]):
        flat[f"eval/class_hist/{name.replace('/', '_')}"] = count  # "T-shirt/top": one key
    flat["eval/n_seeds"] = len(result["seeds"])
    return {k: v for k, v in flat.items() if v is not None}  # k-NN metrics are null below k+1


def _log(c: dict, run_dir: Path, result: dict, trained_cfg: dict) -> None:
    """The evaluation's logger run. With wandb: ``job_type=eval``, in the training run's group,
    with the trained model's config (schedule, objective, data, ...) under its own keys, this
    evaluation's settings under ``eval`` / ``sampler`` / ``grid``, and the training run's id as
    ``trained_run_id``; the numbers in its summary (``fid``, ``kid``, ``floor_fid`` at the top,
    ``eval/...`` beside them); one image key per figure; ``wandb.Table``s of FID against NFE (this
    evaluation's row) and, with ``eval.per_step``, of the per-step curves, each with a plot built
    from its table."""
    from ..build import thawed
    from .env import training_wandb_run
    from .record import headline as headline_numbers

    wandb_run = c["logger"]["name"] == "wandb"
    trained = training_wandb_run(c["ckpt"]) if wandb_run else {}
    config = {**thawed(trained_cfg), "eval": c["eval"], "sampler": result["sampler"],
              "grid": result["grid"], "ckpt": c["ckpt"], "seed": c["seed"],
              "trained_run_id": trained.get("id"), "task": "eval"}
    logger = make_logger(c, run_dir, job_type="eval", group=trained.get("group"),
                         config=config)
    if not logger:
        return
    if not wandb_run:
        logger.log_hyperparams(config)
    logger.log_metrics(summary_metrics(result), step=0)
    if hasattr(logger, "log_image"):
        images = {"eval/samples": run_dir / "samples.png",
                  "eval/samples_by_class": run_dir / "samples_by_class.png",
                  "eval/per_step": run_dir / "per_step.png",
                  **{f"eval/diagnostics/{p.stem}": p
                     for p in sorted((run_dir / "diagnostics").glob("*.png"))}}
        for key, path in images.items():
            if path.is_file():
                logger.log_image(key=key, images=[str(path)], step=0)
    if wandb_run:
        import wandb

        exp = logger.experiment
        smp = result["sampler"]
        cols = ["sampler", "steps", "grid", "nfe", "fid", "kid_mean", "precision", "recall"]
        row = [smp.get("sampler"), smp.get("steps"), smp.get("grid"), result["nfe"],
               *(result.get(k) for k in ("fid", "kid_mean", "precision", "recall"))]
        nfe_table = wandb.Table(columns=cols, data=[row])
        tables = {"eval/fid_vs_nfe": nfe_table,
                  "eval/fid_vs_nfe_plot": wandb.plot.scatter(nfe_table, "nfe", "fid",
                                                             title="FID against NFE")}
        steps = result.get("per_step") or []
        if steps:
            keys = [k for k in ("seed", "step", "sigma", "fid", "kid_mean", "precision", "recall")
                    if k in steps[0]]
            step_table = wandb.Table(columns=keys, data=[[r.get(k) for k in keys]
                                                         for r in steps])
            tables["eval/per_step_table"] = step_table
            tables["eval/per_step_fid_plot"] = wandb.plot.line(
                step_table, "step", "fid", title="FID of the x0 estimate at each sampling step")
        exp.log(tables)  # the next step: step 0 already holds the numbers and images
        exp.summary.update({k: v for k, v in headline_numbers(result).items() if v is not None})
    logger.finalize("success")
    if wandb_run:
        logger.experiment.finish()
