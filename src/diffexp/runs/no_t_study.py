"""``task=no_t_study``: the lesson's noise-prediction experiment in one command.

1. train the noise-level predictor (logit target; and a raw-target one for comparison);
2. train the no_t model (an eps model with no conditioning input);
3. train a t-conditioned eps model with the same settings;
4. evaluate with the same sampler, seed and n: the t model, the no_t model with the schedule's
   alpha_bar, the no_t model with predicted alpha_bar (and with the raw predictor);
5. write ``comparison.md`` / ``comparison.csv`` / ``study.json`` into the run folder.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from ..config import derived_config
from ..files import atomic_open_text, atomic_write_text
from ..say import say
from .record import write_json
from .train import train

__all__ = ["run_study"]


def _sub(c: dict, changes: dict) -> dict:
    """One of the study's runs: the study's config with ``changes``, validated as a user's config
    is (:func:`~diffexp.config.derived_config`), each run training from scratch."""
    # the study evaluates its models itself, all with one evaluator, sampler and n
    return derived_config(c, {"ckpt_path": None, "resume.run": None, "train.eval_at_end": False,
                              **changes})


def run_study(c: dict, run_dir: str | Path) -> dict:
    from ..evaluation import evaluate_samples, floor_images, make_evaluator
    from ..module import load_module

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    st = c["study"]
    t0 = time.perf_counter()
    targets = ["logit", "raw"] if st["compare_raw"] else ["logit"]
    predictors = {}
    for target in targets:
        pc = _sub(c, {"task": "noise_level", "train.epochs": st["predictor_epochs"],
                      "noise_level.target": target})
        s = train(pc, run_dir / f"predictor_{target}")
        predictors[target] = {"ckpt": s["checkpoint"], **s["held_out"],
                              "wall_time_s": s["wall_time_s"]}

    # the pair differs only in the conditioning: objective keys both have (normalize_input) carry
    s_no_t = train(_sub(c, {"task": "diffusion", "objective": "no_t",
                            "objective.noise_level_ckpt": predictors["logit"]["ckpt"],
                            "objective.use_predicted_noise_level": True}),
                   run_dir / "no_t_model")
    s_t = train(_sub(c, {"task": "diffusion", "objective": "eps"}), run_dir / "t_model")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_root = c["data"].get("root")
    evaluator = make_evaluator(data_root, device=device)
    n = st["n_eval"]
    ways = [("t-conditioned eps model", s_t["checkpoint"], {}),
            ("no_t, schedule alpha_bar", s_no_t["checkpoint"],
             {"use_predicted_noise_level": False}),
            ("no_t, predicted alpha_bar (logit predictor)", s_no_t["checkpoint"],
             {"use_predicted_noise_level": True})]
    if "raw" in predictors:
        ways.append(("no_t, predicted alpha_bar (raw predictor)", s_no_t["checkpoint"],
                     {"use_predicted_noise_level": True,
                      "noise_level_ckpt": predictors["raw"]["ckpt"]}))
    rows = []
    for label, ckpt, overrides in ways:
        module = load_module(ckpt, changes={"objective": overrides}).to(device)
        m, _, _ = evaluate_samples(module, evaluator, None, n=n, seed=c["seed"],
                                   batch_size=c["train"]["batch_size"])
        rows.append({"model": label, "fid": m["fid"], "kid_mean": m["kid_mean"],
                     "kid_std": m["kid_std"], "nfe": m["nfe"], "n": m["n"],
                     "sample_time_s": m["sample_time_s"]})
        say(f"[diffexp] {label}: FID {m['fid']:.3f}, KID {m['kid_mean']:.5f}")
    floor = evaluator.floor(floor_images(n, data_root, seed=c["seed"]))
    for r in rows:
        r["floor_fid"], r["floor_kid"] = floor["fid"], floor["kid_mean"]

    with atomic_open_text(run_dir / "comparison.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    sampler = c["sampler"]
    lines = [
        "# No-t study", "",
        f"Sampler {sampler['name']} ({rows[0]['nfe']} NFE), n = {n}, seed {c['seed']}, "
        f"model {c['model']['name']}, {c['train']['epochs']} epochs, schedule "
        f"{c['schedule']['name']}, data.scale {c['data']['scale']}.", "",
        "| model | FID | KID | floor FID | floor KID |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['fid']:.3f} | {r['kid_mean']:.5f} ± {r['kid_std']:.5f} | "
              f"{r['floor_fid']:.3f} | {r['floor_kid']:.5f} |" for r in rows]
    lines += ["", "## Noise-level predictors (held-out validation images, fixed noise)", "",
              "| target | MSE on own target | constant-predictor MSE | alpha_bar MSE | logit MSE |",
              "|---|---|---|---|---|"]
    lines += [f"| {t} | {p['mse']:.4f} | {p['baseline_mse']:.4f} | {p['abar_mse']:.5f} | "
              f"{p['logit_mse']:.4f} |" for t, p in predictors.items()]
    atomic_write_text(run_dir / "comparison.md", "\n".join(lines) + "\n")
    result = {"rows": rows, "floor": floor, "predictors": predictors,
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    write_json(run_dir / "study.json", result)
    say("\n".join(lines))
    return result
