"""The quickstart search's table (docs/TUNING.md): every trained cell of a tuning folder, one row per
(model, sampler), sorted by FID, with the settings each model was trained with read from its
config.yaml (not only the swept keys) and its training time. Single runs (``make run`` folders)
are rows too.

    python scripts/tuning_table.py runs/tune [--top 10]

With ``--seeds``, the rows of one or more folders that differ only in the seed (and in where and
how long they ran) become one row: FID mean ± std over the trainings (sample std; the seed sets
the training and the sampling; reruns of one seed count once), sorted by the mean:

    python scripts/tuning_table.py runs/qs3 runs/qs4 --seeds --top 10
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

from diffexp.build import upgrade_config

AXES = [("objective", ("objective", "name")), ("schedule", ("schedule", "name")),
        ("scale", ("data", "scale")), ("pad", ("data", "pad")),
        ("sigma_data", ("objective", "sigma_data")),
        ("p_mean", ("schedule", "p_mean")), ("p_std", ("schedule", "p_std")),
        ("batch", ("train", "batch_size")), ("lr", ("optim", "lr")),
        ("beta2", ("optim", "betas", 1)), ("lr_schedule", ("optim", "lr_schedule")),
        ("pct_start", ("optim", "pct_start")), ("stratified", ("train", "stratified_noise")),
        ("ema", ("train", "ema_decay")), ("model", ("model", "name")),
        ("widths", ("model", "widths")), ("blocks", ("model", "blocks")),
        ("attn", ("model", "attn_levels")), ("head_dim", ("model", "head_dim")),
        ("patch", ("model", "patch")), ("precision", ("trainer", "precision")),
        ("budget_s", ("train", "time_budget_s")), ("seed", ("seed",))]


def _get(cfg: dict, path):
    """The setting at ``path``; "-" where the run's config has no such key (sigma_data belongs to
    objective=karras only)."""
    for k in path:
        if isinstance(cfg, dict) and k not in cfg:
            return "-"
        cfg = cfg[k]
    return "/".join(map(str, cfg)) if isinstance(cfg, list) else cfg


def _evaluations(folder: Path):
    """(job folder, cell label, metrics.json) of every evaluation under ``folder``: multirun cells
    (``STAGE/JOB/eval/LABEL/metrics.json``, one per ``eval.samplers`` entry) and single runs such
    as ``make run`` copies (``RUN/eval/metrics.json``, labelled by their sampler)."""
    for metrics in sorted(folder.glob("*/*/eval/*/metrics.json")):
        job = metrics.parents[2]
        yield job, f"{job.parent.name}/{metrics.parent.name}", metrics
    for metrics in sorted(folder.glob("*/eval/metrics.json")):
        job = metrics.parents[1]
        yield job, job.name, metrics


def rows(folder: Path) -> list[dict]:
    out = []
    for job, cell, metrics in _evaluations(folder):
        # runs written before a setting existed read with the value it had then
        cfg = upgrade_config(yaml.safe_load((job / "config.yaml").read_text()))
        summary = json.loads((job / "summary.json").read_text())
        m = json.loads(metrics.read_text())
        row = {"cell": cell}
        row.update({name: _get(cfg, path) for name, path in AXES})
        smp = cfg["sampler"]
        label = (metrics.parent.name if metrics.parent.name != "eval"
                 else f"{smp['name']}_{smp['steps']}")
        row.update(sampler=label, nfe=m["nfe"], fid=m["fid"], kid=m["kid_mean"],
                   n=m["n"], steps=summary["global_step"],
                   images=summary["global_step"] * cfg["train"]["batch_size"],
                   train_s=summary["wall_time_s"], threads=summary["host"]["torch_threads"])
        out.append(row)
    return sorted(out, key=lambda r: r["fid"])


def markdown(table: list[dict]) -> str:
    cols = ["cell", *(a for a, _ in AXES), "sampler", "nfe", "n", "fid", "kid", "steps", "images",
            "train_s", "threads"]
    fmt = {"fid": "{:.2f}", "kid": "{:.3f}", "train_s": "{:.0f}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return "\n".join(lines)


#: what makes two rows the same configuration (everything trained or sampled, not the seed)
SAME = [a for a, _ in AXES if a != "seed"] + ["sampler", "nfe", "n", "steps", "images"]


def by_seed(table: list[dict]) -> list[dict]:
    """One row per configuration: the FID's mean and sample std over its seeds, the seeds and
    the cells they came from, sorted by the mean."""
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        groups.setdefault(tuple(str(r[c]) for c in SAME), []).append(r)
    out = []
    for members in groups.values():
        # a rerun of the same seed is the same training (bitwise on the CPU), not another one:
        # each seed counts once, with the mean of its runs
        per_seed: dict[str, list[float]] = {}
        for r in members:
            per_seed.setdefault(str(r["seed"]), []).append(r["fid"])
        fids = [sum(v) / len(v) for v in per_seed.values()]
        mean = sum(fids) / len(fids)
        std = (sum((f - mean) ** 2 for f in fids) / (len(fids) - 1)) ** 0.5 if len(fids) > 1 else None
        out.append({**{c: members[0][c] for c in SAME}, "fid_mean": mean, "fid_std": std,
                    "seeds": "/".join(per_seed),
                    "cells": ", ".join(r["cell"] for r in members)})
    return sorted(out, key=lambda r: r["fid_mean"])


def markdown_by_seed(table: list[dict]) -> str:
    cols = ["cells", *SAME, "seeds", "fid"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        fid = f"{r['fid_mean']:.2f}" + (f" ± {r['fid_std']:.2f}" if r["fid_std"] is not None else "")
        lines.append("| " + " | ".join([*(str(r[c]) for c in cols[:-1]), fid]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--top", type=int, default=0, help="only the best N rows (0: all)")
    p.add_argument("--seeds", action="store_true",
                   help="one row per configuration: FID mean ± std over its seeds")
    a = p.parse_args(argv)
    table = [r for folder in a.folders for r in rows(folder)]
    if not table:
        print(f"error: no */*/eval/*/metrics.json or */eval/metrics.json under "
              f"{' '.join(map(str, a.folders))}", file=sys.stderr)
        return 2
    if a.seeds:
        print(markdown_by_seed(by_seed(table)[: a.top or None]))
    else:
        print(markdown(sorted(table, key=lambda r: r["fid"])[: a.top or None]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
