"""The run records: what a job writes into its folder and what every reader (the report, the
sweep summary, the Python API) reads back, defined once.

* ``summary.json`` (:data:`SUMMARY`): a training job's record (:func:`write_summary`).
* ``metrics.json`` (:data:`METRICS`): an evaluation's record, in ``eval/`` (or
  ``eval/<label>/``) of a training job or in an eval.py job's folder.
* :func:`model_record`: how a trained model is described in both, so one name means one number:
  ``sigma_data`` is the value the objective uses (measured or given, times
  ``objective.sigma_data_factor``) and ``sigma_data_measured`` what was measured or given.
* :func:`headline`: eval/fid, eval/kid_mean, eval/kid_std, eval/floor_fid, eval/nfe (and
  precision, recall, density, coverage, class_tv where measured) of one metrics record: what
  dashboards and summaries show, under the keys an evaluation logs.

All JSON is strict (infinities and NaN written as strings) and written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["SUMMARY", "METRICS", "write_json", "read_json", "write_summary", "read_summary",
           "write_metrics", "read_metrics", "model_record", "headline", "host_info", "cpu_model"]

SUMMARY = "summary.json"
METRICS = "metrics.json"


def _json_safe(obj):
    """Strict JSON: infinities and NaN become strings ("inf", "-inf", "nan")."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Write strict JSON atomically: a kill or a full disk leaves the previous file intact."""
    from ..files import atomic_write_text

    atomic_write_text(Path(path), json.dumps(_json_safe(obj), indent=2, allow_nan=False))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run_dir: Path, summary: dict) -> Path:
    path = Path(run_dir) / SUMMARY
    write_json(path, summary)
    return path


def read_summary(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / SUMMARY)


def write_metrics(folder: Path, metrics: dict) -> Path:
    path = Path(folder) / METRICS
    write_json(path, metrics)
    return path


def read_metrics(folder: Path) -> dict | None:
    return read_json(Path(folder) / METRICS)


def model_record(cfg: dict) -> dict:
    """A trained model as both records describe it, from its config."""
    from ..build import effective_sigma_data

    o = cfg["objective"]
    out = {"name": cfg["model"]["name"], "schedule": cfg["schedule"]["name"],
           "objective": o["name"], "data_scale": cfg["data"]["scale"],
           "epochs": cfg["train"]["epochs"],
           "normalize_input": bool(o.get("normalize_input") or False)}
    if o["name"] == "karras":
        out.update(sigma_data=effective_sigma_data(o), sigma_data_measured=o.get("sigma_data"),
                   sigma_data_factor=float(o.get("sigma_data_factor") or 1.0))
    if o["name"] == "no_t":
        out.update({k: o.get(k) for k in ("noise_level_ckpt", "use_predicted_noise_level",
                                          "clamp_factor")})
    return out


def headline(metrics: dict, prefix: str = "eval/") -> dict:
    """The numbers a dashboard shows of one evaluation record, under the one namespace of
    evaluation numbers (``eval/fid``, ``eval/kid_mean``, ...: the keys an evaluation logs)."""
    floor = metrics.get("floor")
    out = {"fid": metrics["fid"], "kid_mean": metrics["kid_mean"],
           "kid_std": metrics["kid_std"],
           "floor_fid": floor["fid"] if isinstance(floor, dict) else metrics.get("floor_fid"),
           "nfe": metrics["nfe"]}
    out.update({k: metrics[k] for k in ("precision", "recall", "density", "coverage",
                                        "class_tv") if metrics.get(k) is not None})
    return {prefix + k: v for k, v in out.items()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what platform reports."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """The machine a number came from: CPU model, cores, torch threads and GPU (if used)."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu}
