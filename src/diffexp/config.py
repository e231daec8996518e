"""Typed schemas for every config group and the checks that run before any work.

``validate_train_config(cfg)`` raises :class:`ConfigError` whose message is one line naming the
offending key and what is allowed. Types and unknown keys are checked by merging each group into
an OmegaConf structured schema (a dataclass per option); values by the rules below.
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .components import check_entries, import_target
from .errors import ConfigError, first_line

__all__ = ["ConfigError", "validate_train_config", "validate_eval_config", "validate_eval_samplers",
           "derived_config", "option_yaml", "check_group_choices",
           "check_moved_settings", "CONF_DIR"]

CONF_DIR = Path(__file__).resolve().parent / "conf"


# ----------------------------------------------------------------------------- schemas
# One dataclass per option shape: the keys a group option may have and their types. No field has a
# default: every value comes from the yaml under conf/, the single place defaults are written (see
# docs/DESIGN.md, "Configuration"); a key missing from a composed config is an error naming it.
@dataclass
class DataCfg:
    name: str
    root: str | None
    download: bool
    pad: int
    scale: float
    val_size: int
    split_seed: int
    subset: int | None


@dataclass
class ModelCfg:
    name: str
    widths: list[int]
    blocks: int
    attn_levels: list[int]
    head_dim: int
    channels_last: bool
    compile: bool
    patch: int


@dataclass
class LinearCfg:
    name: str
    beta_min: float
    beta_max: float
    t_min: float
    t_max: float


@dataclass
class CosineCfg:
    name: str
    start: float
    end: float
    tau: float
    t_min: float
    t_max: float


@dataclass
class SigmoidCfg(CosineCfg):
    pass


@dataclass
class KarrasCfg:
    name: str
    sigma_min: float
    sigma_max: float
    p_mean: float
    p_std: float


SCHEDULE_SCHEMAS = {"linear": LinearCfg, "cosine": CosineCfg, "sigmoid": SigmoidCfg,
                    "karras": KarrasCfg}


@dataclass
class GridCfg:
    name: str
    rho: float | None
    sigma_min: float | None
    sigma_max: float | None


@dataclass
class ObjectiveCfg:  # eps, x0, v
    name: str
    normalize_input: bool  # Chen 2023's per-image input normalisation (VP objectives)


@dataclass
class KarrasObjectiveCfg:
    name: str
    sigma_data: Any  # "auto" or a positive number
    sigma_data_factor: Any  # the objective uses sigma_data * this factor
    normalize_input: bool  # refused: c_in already scales the input
    c_noise: str  # log (ln(sigma)/4, EDM) | raw (sigma itself, the lesson's)


@dataclass
class NoTObjectiveCfg:
    name: str
    noise_level_ckpt: str | None
    use_predicted_noise_level: bool
    clamp_factor: float
    noise_level_clamp: str  # median (the lesson's, batch-coupled) | grid (per image)
    normalize_input: bool


OBJECTIVE_SCHEMAS = {"eps": ObjectiveCfg, "x0": ObjectiveCfg, "v": ObjectiveCfg,
                     "karras": KarrasObjectiveCfg, "no_t": NoTObjectiveCfg}
#: objective keys that only some objectives have: key -> the objectives that do
OBJECTIVE_ONLY = {"sigma_data": ("karras",), "sigma_data_factor": ("karras",),
                  "noise_level_ckpt": ("no_t",), "use_predicted_noise_level": ("no_t",),
                  "clamp_factor": ("no_t",), "noise_level_clamp": ("no_t",),
                  "c_noise": ("karras",)}


@dataclass
class OptimCfg:
    name: str
    lr: float
    betas: list[float]
    eps: float
    weight_decay: float
    lr_schedule: str
    pct_start: float
    hold_steps: int


@dataclass
class TrainerCfg:
    accelerator: str
    devices: Any
    strategy: str
    num_nodes: int
    precision: str
    log_every_n_steps: int
    limit_train_batches: float | None
    limit_val_batches: float | None
    deterministic: bool


@dataclass
class LoggerCfg:  # csv, none
    name: str
    extra: dict[str, Any]  # more Lightning loggers: name -> _target_ entry (components.py)


@dataclass
class WandbLoggerCfg:
    name: str
    project: str
    entity: str | None
    group: str | None
    tags: list[str]
    mode: str
    notes: str | None
    log_model: Any  # false | true (the final checkpoint) | all (every checkpoint saved)
    save_code: bool
    extra: dict[str, Any]


@dataclass
class CheckpointsCfg:
    every_k_epochs: int
    best: str | None


@dataclass
class CallbacksCfg:
    checkpoints: CheckpointsCfg
    lr_monitor: bool
    progress_bar: str
    extra: dict[str, Any]  # more Lightning callbacks: name -> _target_ entry (components.py)


@dataclass
class NoiseLevelCfg:
    target: str
    abar_dist: str
    widths: list[int]
    n_scatter: int


@dataclass
class StudyCfg:
    predictor_epochs: int
    n_eval: int
    compare_raw: bool


@dataclass
class PathsCfg:  # conf/paths/default.yaml
    runs: str
    sweeps: str
    models: str
    data: str | None
    cache: str | None


def validate_paths(p) -> dict | None:
    """The paths group (None where a config has none: an older run's, or one built in code).
    Its values reach the run through interpolation (run folders, ``train.model_store``) and
    :func:`apply_paths` (``data.root``, ``data_root``, the cache folder)."""
    if p is None:
        return None
    if isinstance(p, DictConfig):  # ${paths.runs} and co. resolve against the whole config
        p = OmegaConf.to_container(p, resolve=True)
    p = _typed(p, PathsCfg, "paths")
    for key in ("runs", "sweeps", "models"):
        _require(bool(str(p[key]).strip()), f"paths.{key}", "must be a folder", p[key])
    return p


def apply_paths(paths: dict | None) -> None:
    """``paths.cache``: diffexp's cache folder for this process (``$DIFFEXP_CACHE_DIR``)."""
    if paths and paths.get("cache"):
        os.environ["DIFFEXP_CACHE_DIR"] = str(Path(paths["cache"]).expanduser())


@dataclass
class EndEvalCfg:
    n_samples: Any  # a number, or auto (2048 on a GPU, 512 on the CPU)
    batch_size: int
    floor: bool
    diagnostics: bool
    # label -> sampler settings: evaluate the final model once per entry into eval/<label>/.
    # An entry with a name starts from conf/sampler/<name>.yaml, one without from the run's sampler.
    samplers: dict[str, Any]


@dataclass
class TrainCfg:
    batch_size: int
    epochs: int
    ema_decay: float
    grad_clip: float
    stratified_noise: bool  # one training noise level per n-th of the schedule's distribution
    time_budget_s: float | None  # train the steps that fit in this many seconds (runs/budget.py)
    threads: int | None  # torch CPU threads after the held steps; null: torch's (runs/threads.py)
    trial_threads: list[int] | None  # thread counts the first trial_steps steps cycle through
    trial_steps: int | None  # how many steps try thread counts (a budgeted run sets it)
    skip_nonfinite: bool  # drop a batch with non-finite gradients instead of stopping
    sample_every_n_epochs: int
    n_sample_images: int
    checkpoint_every_minutes: float | None  # mid-epoch last.ckpt; null or 0 = off
    checkpoint_every_n_steps: int | None  # mid-epoch last.ckpt; null or 0 = off
    val_every_n_epochs: int
    fid_every_n_epochs: int
    fid_n_samples: int
    auto_resume: bool
    eval_at_end: Any  # true | false | auto (true in a multirun)
    reuse: Any  # share trained models through the store: true | false | auto (multirun)
    retrain: bool  # with reuse: train a fresh model once per sweep instead of reusing
    model_store: str


# ----------------------------------------------------------------------------- helpers
def _typed(node, schema, prefix: str):
    """Merge ``node`` into the schema: unknown keys and wrong types become a ConfigError."""
    try:
        if isinstance(node, DictConfig):  # interpolations into other groups (${paths.models})
            node = OmegaConf.to_container(node, resolve=True)  # resolve against its own root
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), node),
                                      resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or ""
        msg = str(e).strip().splitlines()[0]
        if isinstance(e, MissingMandatoryValue):
            key = str(key).rpartition(".")[2] or str(key)
            raise ConfigError(f"{prefix}.{key}: missing; the config gives no value for it (its "
                              f"default lives in the group's yaml under conf/)") from None
        if "Key '" in msg and "not in" in msg:
            valid = ", ".join(f.name for f in schema.__dataclass_fields__.values())
            raise ConfigError(f"{prefix}.{key}: unknown setting; valid keys: {valid}") from None
        raise ConfigError(f"{prefix}.{key}: {msg}") from None


def _require(cond: bool, key: str, rule: str, value) -> None:
    if not cond:
        raise ConfigError(f"{key} {rule} (got {value!r})")


def _choice(value, key: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(map(str, choices))}")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def option_config(group: str, name: str) -> dict:
    """The settings of one option of a self-contained group (sampler, grid) as its yaml gives
    them; an unknown name is a ConfigError listing the options."""
    options = [o for o in group_options(group) if o != "ckpt"]
    _choice(name, f"{group}.name", options)
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))


# ----------------------------------------------------------------------------- groups
def validate_data(d) -> dict:
    d = _typed(d, DataCfg, "data")
    _choice(d["name"], "data.name", ["fashion_mnist", "synthetic"])
    _require(d["pad"] >= 0, "data.pad", "must be >= 0", d["pad"])
    _require(d["scale"] > 0 and math.isfinite(d["scale"]), "data.scale", "must be > 0", d["scale"])
    _require(d["val_size"] >= 0, "data.val_size", "must be >= 0", d["val_size"])
    if d["subset"] is not None:
        _require(d["subset"] > d["val_size"], "data.subset", "must exceed data.val_size",
                 d["subset"])
    return d


def validate_user_model(m) -> dict:
    """A network of the user's (``model._target_``, docs/EXTENDING.md): a name, the class's
    dotted path (imported now), ``channels_last``/``compile`` if given (else off), and its
    constructor's arguments; its shapes are checked on a batch before training."""
    m = OmegaConf.to_container(m, resolve=True) if isinstance(m, DictConfig) else dict(m)
    _require(isinstance(m.get("name"), str) and bool(m["name"]), "model.name",
             "must name the network (e.g. its yaml file's name)", m.get("name"))
    import_target(m["_target_"], "model._target_")
    for key in ("channels_last", "compile"):
        m.setdefault(key, False)  # the user's yaml need not know diffexp's layout switches
        _require(isinstance(m[key], bool), f"model.{key}", "must be true or false", m[key])
    return m


def validate_model(m) -> dict:
    if isinstance(m, (dict, DictConfig)) and "_target_" in m:
        return validate_user_model(m)
    m = _typed(m, ModelCfg, "model")
    _require(len(m["widths"]) >= 1 and all(w > 0 for w in m["widths"]), "model.widths",
             "must be a non-empty list of positive ints", m["widths"])
    _require(len(m["widths"]) <= 4, "model.widths", "supports at most 4 levels for 32x32 images",
             m["widths"])
    _require(m["blocks"] >= 1, "model.blocks", "must be >= 1", m["blocks"])
    _require(m["head_dim"] >= 1, "model.head_dim", "must be >= 1", m["head_dim"])
    _require(m["patch"] >= 1, "model.patch", "must be >= 1", m["patch"])
    _require(all(0 <= a < len(m["widths"]) for a in m["attn_levels"]), "model.attn_levels",
             f"must be level indices in [0, {len(m['widths'])})", m["attn_levels"])
    # attention runs at the attn_levels and always in the middle block (the last width): those
    # widths, and only those, split into heads of head_dim channels
    with_attn = sorted({*m["attn_levels"], len(m["widths"]) - 1})
    bad = [m["widths"][lvl] for lvl in with_attn if m["widths"][lvl] % m["head_dim"]]
    _require(not bad, "model.widths",
             f"at the levels with attention ({', '.join(map(str, with_attn))}: attn_levels and "
             f"the middle) must be multiples of model.head_dim={m['head_dim']}; change "
             f"model.head_dim or those widths", m["widths"])
    return m


def check_image_fits_model(data: dict, model: dict) -> None:
    """The UNet cuts the image into model.patch-sized patches, then halves the resolution once
    per level below the first: the side (28 + 2 data.pad) must divide by patch * 2^(levels-1)
    or the skip connections would not line up."""
    from .build import image_side

    if "_target_" in model:  # a user's network: its shapes are checked on a batch instead
        return
    side = image_side(data["pad"])
    levels = len(model["widths"])
    step = model["patch"] * 2 ** (levels - 1)
    if side % step:
        fits = [p for p in range(0, 5) if image_side(p) % step == 0]
        hint = (f"data.pad in {fits}" if fits else
                "fewer levels (model.widths) or a smaller model.patch")
        raise ConfigError(f"model.patch={model['patch']} with {levels} levels (model.widths) needs "
                          f"an image side divisible by {step}, but data.pad={data['pad']} gives "
                          f"{side}x{side}: use {hint}")


def validate_user_schedule(s) -> dict:
    """A schedule of the user's (``schedule._target_``: a :class:`~diffexp.schedules.Schedule`
    subclass, docs/EXTENDING.md), built with its settings and checked on its maps: a noise range
    0 < sigma_min < sigma_max < inf, sigma increasing in t, and ``t_from_sigma`` inverting
    ``sigma`` (to 1e-4 in t), where the samplers and the training rely on them."""
    import torch

    from .schedules import build_schedule

    s = OmegaConf.to_container(s, resolve=True) if isinstance(s, DictConfig) else dict(s)
    _require(isinstance(s.get("name"), str) and bool(s["name"]), "schedule.name",
             "must name the schedule (e.g. its yaml file's name)", s.get("name"))
    target = s["_target_"]
    import_target(target, "schedule._target_")
    try:
        sched = build_schedule(s["name"], **{k: v for k, v in s.items() if k != "name"})
        t = torch.linspace(sched.t_min, sched.t_max, 101, dtype=torch.float64)
        sig = sched.sigma(t)
        back = sched.t_from_sigma(sig)
        smin, smax = sched.sigma_min, sched.sigma_max
    except ConfigError:
        raise
    except Exception as e:  # the user's class: any error, as one line
        raise ConfigError(f"schedule._target_={target}: building it or its maps failed "
                          f"({type(e).__name__}: {first_line(e)})") from None
    _require(bool(torch.all(sig[1:] > sig[:-1])), f"schedule._target_={target}",
             "needs sigma(t) increasing on [t_min, t_max]", "a sigma that does not increase")
    _require(0 < smin < smax < math.inf, f"schedule._target_={target}",
             "needs a noise range 0 < sigma_min < sigma_max < inf", (smin, smax))
    err = float((back - t).abs().max())
    _require(err <= 1e-4, f"schedule._target_={target}",
             "needs t_from_sigma(sigma(t)) == t (to 1e-4)", f"off by {err:.2g}")
    return s


def validate_schedule(s) -> dict:
    if isinstance(s, (dict, DictConfig)) and "_target_" in s:
        return validate_user_schedule(s)
    name = s.get("name") if isinstance(s, (dict, DictConfig)) else None
    _choice(name, "schedule.name", sorted(SCHEDULE_SCHEMAS))
    if "rho" in s:
        raise moved_setting_error("schedule.rho", s["rho"])
    s = _typed(s, SCHEDULE_SCHEMAS[name], "schedule")
    for key, value in s.items():
        if isinstance(value, float):
            _require(math.isfinite(value), f"schedule.{key}", "must be a finite number", value)
    if name == "karras":
        _require(s["sigma_min"] > 0, "schedule.sigma_min", "must be > 0", s["sigma_min"])
        _require(s["sigma_max"] > s["sigma_min"], "schedule.sigma_max",
                 f"must be > schedule.sigma_min={s['sigma_min']}", s["sigma_max"])
        _require(s["p_std"] > 0, "schedule.p_std", "must be > 0", s["p_std"])
        # training draws ln(sigma) ~ N(p_mean, p_std^2) and the losses weigh by sigma^2: six
        # standard deviations out, sigma^2 must stay finite in float32 (e^88 is its largest)
        _require(abs(s["p_mean"]) + 6 * s["p_std"] <= 40, "schedule.p_mean/p_std",
                 "must keep |p_mean| + 6 p_std <= 40 (training noise levels beyond e^40 overflow "
                 "float32 in the loss)", (s["p_mean"], s["p_std"]))
        return s
    # t_min > 0: the sampling grids end at the schedule's smallest noise level sigma(t_min),
    # which is 0 at t = 0 (and sigma-space samplers divide by it)
    _require(0 < s["t_min"] < s["t_max"] <= 1, "schedule.t_min/t_max",
             "must satisfy 0 < t_min < t_max <= 1", (s["t_min"], s["t_max"]))
    if name == "linear":
        _require(s["beta_min"] > 0, "schedule.beta_min", "must be > 0", s["beta_min"])
        _require(s["beta_max"] >= s["beta_min"], "schedule.beta_max",
                 f"must be >= schedule.beta_min={s['beta_min']}", s["beta_max"])
    else:
        _require(s["start"] < s["end"], "schedule.start",
                 f"must be < schedule.end={s['end']}", s["start"])
        _require(s["tau"] > 0, "schedule.tau", "must be > 0", s["tau"])
        if name == "cosine":
            _require(0 <= s["start"] and s["end"] <= 1, "schedule.start/end",
                     "must lie in [0, 1] for the cosine schedule", (s["start"], s["end"]))
    from .schedules import build_schedule

    try:
        sched = build_schedule(name, **{k: v for k, v in s.items() if k != "name"})
        smax = sched.sigma_max
    except (ArithmeticError, ValueError) as e:  # e.g. an overflow for a tiny tau
        keys = "/".join(k for k in s if k != "name")
        raise ConfigError(f"schedule.{keys}: these values give no usable noise levels "
                          f"({type(e).__name__}: {e})") from None
    _require(math.isfinite(smax) and smax > sched.sigma_min > 0, "schedule.t_max",
             "gives no finite noise level above a positive one at t_min (alpha_bar reaches 0 or "
             "1); lower t_max or change the schedule's shape", s["t_max"])
    return s


def validate_objective(o) -> dict:
    name = o.get("name") if isinstance(o, (dict, DictConfig)) else None
    _choice(name, "objective.name", sorted(OBJECTIVE_SCHEMAS))
    for key, owners in OBJECTIVE_ONLY.items():
        if name not in owners and o.get(key) is not None:
            raise ConfigError(f"objective.{key} applies to objective={'/'.join(owners)} only "
                              f"(objective={name})")
    o = _typed({k: v for k, v in o.items() if k in OBJECTIVE_SCHEMAS[name].__dataclass_fields__
                or k not in OBJECTIVE_ONLY}, OBJECTIVE_SCHEMAS[name], "objective")
    if name == "karras":
        def positive(v) -> bool:
            return (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                    and math.isfinite(v))

        sd = o["sigma_data"]
        _require(sd == "auto" or positive(sd), "objective.sigma_data",
                 "must be 'auto' or a finite number > 0", sd)
        f = 1.0 if o["sigma_data_factor"] is None else o["sigma_data_factor"]
        _require(positive(f), "objective.sigma_data_factor", "must be a finite number > 0", f)
        o["sigma_data_factor"] = float(f)
        _choice(o["c_noise"], "objective.c_noise", ["log", "raw"])
        if o["normalize_input"]:
            raise ConfigError("objective.normalize_input applies to the VP objectives (eps, x0, "
                              "v, no_t); karras' c_in already scales its input to unit variance "
                              "(see docs/DESIGN.md)")
    elif name == "no_t":
        _require(o["clamp_factor"] >= 1, "objective.clamp_factor", "must be >= 1",
                 o["clamp_factor"])
        _choice(o["noise_level_clamp"], "objective.noise_level_clamp", ["median", "grid"])
    return o


def validate_optim(o) -> dict:
    o = _typed(o, OptimCfg, "optim")
    _choice(o["name"], "optim.name", ["adam", "adamw"])
    _choice(o["lr_schedule"], "optim.lr_schedule", ["onecycle", "cosine", "constant"])
    _require(0 < o["lr"] < math.inf, "optim.lr", "must be a finite number > 0", o["lr"])
    _require(0 < o["eps"] < math.inf, "optim.eps", "must be a finite number > 0", o["eps"])
    _require(0 <= o["weight_decay"] < math.inf, "optim.weight_decay",
             "must be a finite number >= 0", o["weight_decay"])
    _require(len(o["betas"]) == 2 and all(0 <= b < 1 for b in o["betas"]), "optim.betas",
             "must be two numbers in [0, 1)", o["betas"])
    _require(0 < o["pct_start"] < 1, "optim.pct_start", "must be in (0, 1)", o["pct_start"])
    _require(o["hold_steps"] >= 0, "optim.hold_steps", "must be an int >= 0", o["hold_steps"])
    return o


#: Trainer arguments diffexp sets from its own settings: a ``trainer.<key>`` for them would be a
#: second way to say one thing, so it is refused with the setting to use
TRAINER_OWNED = {"max_epochs": "train.epochs", "gradient_clip_val": "train.grad_clip",
                 "logger": "the logger group (logger=wandb|csv|none)",
                 "callbacks": "the callbacks group", "enable_checkpointing": "the callbacks group",
                 "enable_progress_bar": "callbacks.progress_bar",
                 "check_val_every_n_epoch": "train.val_every_n_epochs",
                 "default_root_dir": "the run folder (hydra.run.dir)", "plugins": None,
                 "num_sanity_val_steps": None, "enable_model_summary": None}
def _count(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


#: the values Lightning's own flags take, checked before any work (Lightning itself would stop
#: only once the run has begun): (key, rule, check)
LIGHTNING_FLAG_RULES = (
    ("fast_dev_run", "must be true, false or a number of batches >= 0",
     lambda v: isinstance(v, bool) or _count(v, 0)),
    ("overfit_batches", "must be a number of batches >= 0 or a fraction in [0, 1]",
     lambda v: _count(v, 0) or (isinstance(v, float) and 0 <= v <= 1)),
    ("accumulate_grad_batches", "must be an int >= 1", lambda v: _count(v, 1)),
    ("max_steps", "must be an int >= -1 (-1: no limit)", lambda v: _count(v, -1)),
    ("min_steps", "must be null or an int >= 0", lambda v: v is None or _count(v, 0)),
    ("min_epochs", "must be null or an int >= 0", lambda v: v is None or _count(v, 0)),
    ("barebones", "is not supported: it turns off the callbacks and logging that write the run "
     "folder (checkpoints, sample grids, losses); time a training step with scripts/bench.py "
     "instead", lambda v: v is False),
)
#: precision spellings Lightning also accepts, and the one each stands for
PRECISION_ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


def validate_trainer(t) -> dict:
    """The trainer group: diffexp's keys (typed, checked) and any other Lightning ``Trainer``
    argument passed through as given (``trainer.max_steps=1000``,
    ``trainer.accumulate_grad_batches=2``); their names are checked against the Trainer's
    signature where training starts (:func:`diffexp.runs.train.trainer_arguments`), which keeps
    Lightning out of validation."""
    node = OmegaConf.to_container(t, resolve=True) if isinstance(t, DictConfig) else dict(t)
    own = TrainerCfg.__dataclass_fields__
    passthrough = {k: v for k, v in node.items() if k not in own}
    for key in passthrough:
        if key in TRAINER_OWNED:
            use = TRAINER_OWNED[key]
            raise ConfigError(f"trainer.{key} is set by diffexp" + (f" from {use}: use that"
                                                                     if use else "") + " instead")
    t = _typed({k: v for k, v in node.items() if k in own}, TrainerCfg, "trainer")
    t["precision"] = PRECISION_ALIASES.get(str(t["precision"]), t["precision"])
    _choice(t["accelerator"], "trainer.accelerator", ["auto", "cpu", "gpu", "cuda", "mps"])
    _choice(t["precision"], "trainer.precision",
            ["auto", "bf16-if-native", "32-true", "bf16-mixed", "16-mixed", "bf16-true",
             "16-true", "64-true", *PRECISION_ALIASES])
    for k in ("limit_train_batches", "limit_val_batches"):
        if t[k] is not None:
            _require(t[k] >= 0, f"trainer.{k}", "must be >= 0", t[k])
    _require(t["log_every_n_steps"] >= 1, "trainer.log_every_n_steps", "must be >= 1",
             t["log_every_n_steps"])
    for key, rule, ok in LIGHTNING_FLAG_RULES:
        if key in passthrough and not ok(passthrough[key]):
            raise ConfigError(f"trainer.{key} {rule} (got {passthrough[key]!r})")
    dev = t["devices"]
    ok = (dev == "auto" or (isinstance(dev, int) and not isinstance(dev, bool)
                            and (dev >= 1 or dev == -1))
          or (isinstance(dev, list) and dev and all(isinstance(d, int) and d >= 0 for d in dev)))
    _require(ok, "trainer.devices", "must be auto, -1 (all), a count >= 1 or a list of device "
             "indices", dev)
    _require(isinstance(t["num_nodes"], int) and t["num_nodes"] >= 1, "trainer.num_nodes",
             "must be an int >= 1", t["num_nodes"])
    # several nodes need a launcher that starts and connects them; without one, the first
    # process would wait for the others forever
    launcher_env = ("SLURM_JOB_ID", "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "LSB_JOBID")
    if t["num_nodes"] > 1 and not any(k in os.environ for k in launcher_env):
        raise ConfigError(f"trainer.num_nodes={t['num_nodes']} needs a multi-node launcher "
                          f"(SLURM, torchrun) and none is present (no {', '.join(launcher_env)}); "
                          f"use trainer.num_nodes=1 here")
    return {**t, **passthrough}


def validate_callbacks(cb) -> dict:
    cb = _typed(cb, CallbacksCfg, "callbacks")
    _require(cb["checkpoints"]["every_k_epochs"] >= 0, "callbacks.checkpoints.every_k_epochs",
             "must be >= 0 (0: no epoch checkpoints)", cb["checkpoints"]["every_k_epochs"])
    _choice(cb["checkpoints"]["best"], "callbacks.checkpoints.best", ["val/fid", None])
    _choice(cb["progress_bar"], "callbacks.progress_bar", ["auto", "tqdm", "rich", "none"])
    if cb["progress_bar"] == "rich":
        import importlib.util

        if importlib.util.find_spec("rich") is None:
            raise ConfigError("callbacks.progress_bar=rich needs the rich package (pip install "
                              "rich); or use tqdm, auto or none")
    cb["extra"] = check_entries(cb["extra"], "callbacks.extra")
    return cb


def validate_logger(lg) -> dict:
    name = lg.get("name") if isinstance(lg, (dict, DictConfig)) else None
    _choice(name, "logger.name", ["wandb", "csv", "none"])
    lg = _typed(lg, WandbLoggerCfg if name == "wandb" else LoggerCfg, "logger")
    lg["extra"] = check_entries(lg["extra"], "logger.extra")
    if name != "wandb":
        return lg
    _choice(lg["mode"], "logger.mode", ["auto", "online", "offline"])
    _choice(lg["log_model"], "logger.log_model", [False, True, "all"])
    return lg


def validate_train(t) -> dict:
    t = _typed(t, TrainCfg, "train")
    for k in ("batch_size", "epochs", "n_sample_images"):
        _require(t[k] >= 1, f"train.{k}", "must be >= 1", t[k])
    _require(t["fid_n_samples"] >= 2, "train.fid_n_samples", "must be >= 2", t["fid_n_samples"])
    for k in ("sample_every_n_epochs", "val_every_n_epochs",
              "fid_every_n_epochs"):
        _require(t[k] >= 0, f"train.{k}", "must be >= 0 (0 disables)", t[k])
    for k in ("checkpoint_every_minutes", "checkpoint_every_n_steps"):
        _require(t[k] is None or (t[k] >= 0 and math.isfinite(t[k])), f"train.{k}",
                 "must be a positive number, or null or 0 to disable", t[k])
    _require(t["time_budget_s"] is None or (t["time_budget_s"] > 0
                                            and math.isfinite(t["time_budget_s"])),
             "train.time_budget_s", "must be a number of seconds > 0, or null for no budget",
             t["time_budget_s"])
    _require(t["threads"] is None or t["threads"] >= 1, "train.threads",
             "must be a thread count >= 1, or null for torch's own", t["threads"])
    _require(t["trial_threads"] is None or (len(t["trial_threads"]) >= 1
                                            and all(n >= 1 for n in t["trial_threads"])),
             "train.trial_threads", "must be a list of thread counts >= 1, or null",
             t["trial_threads"])
    _require(t["trial_steps"] is None or t["trial_steps"] >= 0, "train.trial_steps",
             "must be a step count >= 0, or null", t["trial_steps"])
    _require(0 <= t["ema_decay"] < 1, "train.ema_decay", "must be in [0, 1)", t["ema_decay"])
    _require(t["grad_clip"] >= 0, "train.grad_clip", "must be >= 0 (0 disables)", t["grad_clip"])
    for k in ("eval_at_end", "reuse"):
        _require(t[k] is True or t[k] is False or t[k] == "auto", f"train.{k}",
                 "must be true, false or auto", t[k])
    _require(bool(str(t["model_store"]).strip()), "train.model_store", "must be a folder",
             t["model_store"])
    return t


def option_yaml(group: str, name) -> dict:
    """The settings of option ``name`` of ``group`` as its yaml gives them (the file named so, or
    the one whose ``name:`` is ``name``; the group's ``default.yaml`` when none is)."""
    for f in sorted((CONF_DIR / group).glob("*.yaml")):
        d = OmegaConf.to_container(OmegaConf.load(f))
        if isinstance(d, dict) and (f.stem == name or d.get("name") == name) and name:
            d.pop("defaults", None)
            return d
    default = CONF_DIR / group / "default.yaml"
    return OmegaConf.to_container(OmegaConf.load(default)) if default.is_file() else {}


def fill_from_defaults(old: dict) -> list[str]:
    """A run config written before some settings existed, completed in place with today's
    defaults for them (from the yaml of the option it names, or of ``train.yaml``); returns the
    keys filled in. Used where an old run is continued (``resume=RUN_DIR``)."""
    # train.yaml's own groups, their ${paths.*} resolved with the paths group's defaults
    raw = OmegaConf.merge(OmegaConf.load(CONF_DIR / "train.yaml"),
                          {"paths": OmegaConf.load(CONF_DIR / "paths" / "default.yaml")})
    plain = OmegaConf.to_container(raw, resolve=False)
    top = {k: OmegaConf.to_container(raw[k], resolve=True) if isinstance(v, dict) else v
           for k, v in plain.items() if k not in ("hydra", "defaults")}
    filled = []
    if not isinstance(old.get("callbacks"), dict) or set(old["callbacks"]) == {"checkpoints"}:
        cb = option_yaml("callbacks", "default")
        given = (old.get("callbacks") or {}).get("checkpoints") or {}
        old["callbacks"] = {**cb, "checkpoints": {**cb["checkpoints"], **given}}
        filled.append("callbacks")
    for group, value in list(old.items()):
        if not isinstance(value, dict):
            continue
        if group in ("train", "eval", "noise_level", "study", "resume", "callbacks"):
            base = option_yaml("callbacks", "default") if group == "callbacks" \
                else top.get(group) or {}
        else:
            base = option_yaml(group, value.get("name"))
        for key, default in base.items():
            if key not in value and key != "defaults":
                value[key] = default
                filled.append(f"{group}.{key}")
    return filled


#: settings that left the sampler (and schedule) groups for the grid group: key -> what to write
MOVED_SETTINGS = {
    "sampler.grid": lambda v: f"grid={v}",
    "sampler.rho": lambda v: f"grid=karras grid.rho={v}",
    "sampler.sigma_min": lambda v: f"grid.sigma_min={v}",
    "sampler.sigma_max": lambda v: f"grid.sigma_max={v}",
    "schedule.rho": lambda v: f"grid=karras grid.rho={v}",
    "train.checkpoint_every_n_epochs": lambda v: f"callbacks.checkpoints.every_k_epochs={v}",
}


def moved_setting_error(key: str, value) -> ConfigError:
    """The one-line error for a setting of the old flat sampler config (or ``schedule.rho``)."""
    where = ("the sampling grid is its own group" if key.startswith("sampler.") else
             "checkpoint retention is in the callbacks group" if key.startswith("train.") else
             "the karras schedule's own grid is its rho=7 ramp; a sampling rho belongs to the "
             "grid group")
    return ConfigError(f"{key} is no longer a setting ({where}): write {MOVED_SETTINGS[key](value)}")


def check_moved_settings(argv: list[str]) -> None:
    """Before Hydra runs: old spellings such as ``sampler.rho=3,5,7`` get the new one."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if eq and key in MOVED_SETTINGS:
            raise moved_setting_error(key, value)


def validate_sampler(s, label: str = "sampler") -> dict:
    from . import sampling
    from .build import pop_denoiser_options

    s = OmegaConf.to_container(s, resolve=True) if isinstance(s, DictConfig) else dict(s)
    for key in ("grid", "rho", "sigma_min", "sigma_max"):
        if key in s:
            raise moved_setting_error(f"sampler.{key}", s[key])
    try:
        sampling.validate_sampler_config(pop_denoiser_options(s)[0])
    except ValueError as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    return s


def validate_grid(g) -> dict:
    """The grid group: ``schedule`` (uniform in the schedule's t), ``karras`` (with ``rho``) or
    ``exponential``, each with optional ``sigma_min`` / ``sigma_max``."""
    from . import sampling

    g = _typed(g if g is not None else {}, GridCfg, "grid")
    if g["name"] == "ckpt":
        raise ConfigError("grid=ckpt is for eval.py only (the checkpoint's own grid); choose one "
                          f"of: {', '.join(sampling.GRIDS)}")
    try:
        return sampling.validate_grid_config(g)
    except ValueError as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None


def validate_eval_samplers(entries: dict, run_sampler: dict, run_grid: dict | None = None) -> dict:
    """``eval.samplers``: each entry resolved to a complete, validated sampler config. An entry may
    carry ``grid:`` (a mapping laid over the run's grid, or starting from
    ``conf/grid/<name>.yaml`` when it has a ``name``); it stays in the entry as a complete grid."""
    out = {}
    for label, entry in (entries or {}).items():
        key = f"eval.samplers.{label}"
        safe = re.fullmatch(r"(?=.*[A-Za-z0-9])[A-Za-z0-9_.+-]+", str(label))
        _require(bool(safe), "eval.samplers", "labels must be folder-safe names (letters, "
                 "digits, _ . + -)", label)
        if not isinstance(entry, dict):
            raise ConfigError(f"{key} must be a mapping of sampler settings (got {entry!r})")
        entry = dict(entry)
        grid = entry.pop("grid", None)
        if "name" in entry:
            _choice(entry["name"], f"{key}.name",
                    [o for o in group_options("sampler") if o != "ckpt"])
            base = option_config("sampler", entry["name"])
        else:
            base = dict(run_sampler)
        try:
            out[str(label)] = validate_sampler({**base, **entry})
            if grid is not None:
                if not isinstance(grid, dict):
                    raise ConfigError(f"grid must be a mapping of grid settings (got {grid!r})")
                gbase = dict(run_grid or {"name": "schedule"})
                if "name" in grid:
                    gbase = option_config("grid", grid["name"])
                out[str(label)]["grid"] = validate_grid({**gbase, **grid})
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    return out


#: what ``optimized_metric`` may name: numbers of an end-of-run evaluation (lower is better)
OPTIMIZED_METRICS = ("fid", "kid_mean", "final_train_loss", "final_val_loss")


def validate_optimized_metric(m) -> str | None:
    if m is not None:
        _choice(m, "optimized_metric", OPTIMIZED_METRICS)
    return m


def validate_noise_level(nl) -> dict:
    nl = _typed(nl, NoiseLevelCfg, "noise_level")
    _choice(nl["target"], "noise_level.target", ["logit", "raw"])
    _choice(nl["abar_dist"], "noise_level.abar_dist", ["uniform", "schedule"])
    _require(len(nl["widths"]) >= 1 and all(w >= 8 for w in nl["widths"]), "noise_level.widths",
             "must be a non-empty list of ints >= 8", nl["widths"])
    _require(nl["n_scatter"] >= 1, "noise_level.n_scatter", "must be >= 1", nl["n_scatter"])
    return nl


def validate_study(st) -> dict:
    st = _typed(st, StudyCfg, "study")
    _require(st["predictor_epochs"] >= 1, "study.predictor_epochs", "must be >= 1",
             st["predictor_epochs"])
    _require(st["n_eval"] >= 2, "study.n_eval", "must be >= 2", st["n_eval"])
    return st


def validate_resume(r) -> dict:
    r = OmegaConf.to_container(r) if isinstance(r, DictConfig) else r
    if r is None:  # configs written before resume.allow_changes existed
        return {"run": None, "allow_changes": []}
    if not isinstance(r, dict):
        raise ConfigError(f"resume={r!r}: write resume=RUN_DIR (a run folder) or "
                          f"resume.allow_changes=[KEY,...]")
    unknown = sorted(set(r) - {"run", "allow_changes"})
    if unknown:
        raise ConfigError(f"resume.{unknown[0]}: unknown setting; valid: run, allow_changes")
    allow = r.get("allow_changes") or []
    _require(isinstance(allow, list) and all(isinstance(a, str) and a for a in allow),
             "resume.allow_changes", "must be a list of setting names (e.g. [data.scale, seed])",
             allow)
    run = r.get("run")
    _require(run is None or isinstance(run, str), "resume.run", "must be a run folder", run)
    return {"run": run, "allow_changes": list(allow)}


def max_steps_of(trainer: dict) -> int | None:
    """``trainer.max_steps`` (a Lightning argument passed through) where it limits the run: an
    int >= 0; None where it is absent or Lightning's "no limit" (-1)."""
    n = trainer.get("max_steps")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def optimizer_steps_per_epoch(batches: int, trainer: dict) -> tuple[int, str]:
    """The optimizer steps an epoch of ``batches`` batches makes under the trainer's
    ``limit_train_batches`` / ``overfit_batches`` (a count of batches, or a fraction of the epoch,
    as Lightning reads them) and ``accumulate_grad_batches``; with the setting that decided it."""
    key = "train.epochs"
    for name in ("limit_train_batches", "overfit_batches"):
        cap = trainer.get(name)
        if cap:
            capped = int(cap) if cap >= 1 else int(batches * cap)
            if capped < batches:
                batches, key = max(capped, 1), f"trainer.{name}"
    accumulate = trainer.get("accumulate_grad_batches") or 1
    if accumulate > 1:  # an optimizer step per `accumulate` batches, the epoch's rest included
        batches, key = -(-batches // accumulate), "trainer.accumulate_grad_batches"
    return batches, key


def check_step_count(c: dict) -> None:
    """The number of optimizer steps, where it is known before the data is loaded (one process):
    a run that trains nothing, or too few steps for a one-cycle LR schedule, fails now."""
    tr, t, d = c["trainer"], c["train"], c["data"]
    limit = tr["limit_train_batches"]
    if limit is not None and limit == 0:
        raise ConfigError("trainer.limit_train_batches=0 trains nothing; leave it null or give a "
                          "count >= 1 (or a fraction)")
    budget = t.get("time_budget_s")
    one_process = tr["devices"] in (1, "auto") and tr["num_nodes"] == 1
    if budget and (c["task"] != "diffusion" or not one_process):
        raise ConfigError(f"train.time_budget_s={budget:g} applies to one-process diffusion "
                          f"training (task=diffusion, trainer.devices=1, trainer.num_nodes=1); "
                          f"set trainer.max_steps instead")
    if t.get("trial_threads") and t.get("trial_steps") is None and not budget:
        raise ConfigError(f"train.trial_threads={list(t['trial_threads'])} needs "
                          f"train.trial_steps (how many steps try them), or train.time_budget_s "
                          f"(which chooses when to stop); or drop it")
    if t.get("trial_steps") is not None and not t.get("trial_threads"):
        raise ConfigError(f"train.trial_steps={t['trial_steps']} counts the steps that try "
                          f"train.trial_threads, which is not given; give it, or drop "
                          f"train.trial_steps")
    if c["task"] == "no_t_study" or not one_process or tr.get("fast_dev_run"):
        return  # fast_dev_run: a smoke run of a few batches, whatever the LR schedule
    n = d["subset"] or (256 if d["name"] == "synthetic" else 60_000)
    per_epoch = (n - d["val_size"]) // t["batch_size"]
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size={t['batch_size']} exceeds the {n - d['val_size']} "
                          f"training images (data.subset - data.val_size); lower it")
    per_epoch, key = optimizer_steps_per_epoch(per_epoch, tr)
    total = per_epoch * t["epochs"]
    max_steps = max_steps_of(tr)
    if max_steps is not None and max_steps < total:
        total, key = max_steps, "trainer.max_steps"
    if c["optim"]["lr_schedule"] == "onecycle" and total < 3:
        raise ConfigError(f"{key}: the run makes {total} optimizer step(s) and "
                          f"optim.lr_schedule=onecycle needs at least 3; train longer or use "
                          f"optim.lr_schedule=constant")
    hold, least = c["optim"]["hold_steps"], 3 if c["optim"]["lr_schedule"] == "onecycle" else 1
    if hold and c["optim"]["lr_schedule"] != "constant" and total - hold < least \
            and not (budget and max_steps is None):
        raise ConfigError(f"optim.hold_steps={hold} leaves {max(total - hold, 0)} of the run's "
                          f"{total} optimizer steps ({key}) to the {c['optim']['lr_schedule']} "
                          f"LR schedule, which needs at least {least}; lower it")


def check_sampling_grids(c: dict) -> None:
    """Build every sampling grid the run will use (its sampler's, each eval.samplers entry's) on
    its schedule now, so a grid that cannot be built fails before training, not at the first
    sample grid. On the VP schedules a grid must stay inside the schedule's noise range (beyond
    it the network is asked about times it never saw, and sigma(1) is infinite for some)."""
    from . import sampling
    from .schedules import build_schedule

    sched_cfg = c["schedule"]
    schedule = build_schedule(sched_cfg["name"], **{k: v for k, v in sched_cfg.items()
                                                     if k != "name"})
    entries = [("sampler", c["sampler"], c["grid"])]
    entries += [(f"eval.samplers.{label}", e, e.get("grid") or c["grid"])
                for label, e in (c["eval"].get("samplers") or {}).items()]
    for label, smp, grid in entries:
        steps = smp.get("steps")
        g = sampling.validate_grid_config(grid)
        where = f"grid ({label}: grid={g['name']}, steps={steps})"
        if sched_cfg["name"] != "karras":
            lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
            for key in ("sigma_min", "sigma_max"):
                v = g[key]
                if v is not None and not lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                    raise ConfigError(
                        f"grid.{key}={v!r} lies outside schedule={sched_cfg['name']}'s noise range "
                        f"[{lo:.4g}, {hi:.4g}] (its t_min/t_max); choose a value inside it")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sampling.build_sigmas(schedule, steps, grid=g["name"], rho=g["rho"] or 7.0,
                                      sigma_min=g["sigma_min"], sigma_max=g["sigma_max"])
        except (ValueError, ArithmeticError) as e:
            first = first_line(e)
            raise ConfigError(f"grid.rho/sigma_min/sigma_max: {where} cannot be built on "
                              f"schedule={sched_cfg['name']} ({type(e).__name__}: {first})"
                              ) from None


TOP_KEYS = {"defaults", "task", "seed", "name", "ckpt_path", "train", "data", "model", "schedule",
            "objective", "sampler", "grid", "optim", "trainer", "logger", "hydra", "noise_level",
            "study", "resume", "eval", "callbacks", "optimized_metric", "paths"}


def validate_train_config(cfg: DictConfig) -> dict:
    """Check every group; return the resolved config as a plain dict (validated values)."""
    unknown = sorted(set(cfg.keys()) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level setting; valid: "
                          f"{', '.join(sorted(TOP_KEYS - {'defaults', 'hydra'}))}")
    out = {
        "task": cfg.get("task", "diffusion"),
        "seed": cfg.seed,
        "name": cfg.name,
        "ckpt_path": cfg.get("ckpt_path"),
    }
    _choice(out["task"], "task", ["diffusion", "noise_level", "no_t_study"])
    _require(isinstance(out["seed"], int) and out["seed"] >= 0, "seed", "must be an int >= 0",
             out["seed"])
    out["data"] = validate_data(cfg.data)
    paths = validate_paths(cfg.get("paths"))
    if paths and paths["data"] and out["data"]["name"] == "fashion_mnist" \
            and out["data"]["root"] is None:
        out["data"]["root"] = paths["data"]
    out["model"] = validate_model(cfg.model)
    out["schedule"] = validate_schedule(cfg.schedule)
    out["objective"] = validate_objective(cfg.objective)
    out["sampler"] = validate_sampler(cfg.sampler)
    out["grid"] = validate_grid(cfg.get("grid"))
    out["optim"] = validate_optim(cfg.optim)
    out["trainer"] = validate_trainer(cfg.trainer)
    out["logger"] = validate_logger(cfg.logger)
    out["callbacks"] = validate_callbacks(cfg.callbacks)
    out["optimized_metric"] = validate_optimized_metric(cfg.get("optimized_metric"))
    out["train"] = validate_train(cfg.train)
    check_image_fits_model(out["data"], out["model"])
    if out["optimized_metric"] in ("fid", "kid_mean") and out["train"]["eval_at_end"] is False:
        raise ConfigError(f"optimized_metric={out['optimized_metric']} is a number of the "
                          f"end-of-run evaluation: set train.eval_at_end=true (or auto)")
    out["noise_level"] = validate_noise_level(cfg.get("noise_level") or {})
    out["study"] = validate_study(cfg.get("study") or {})
    out["resume"] = validate_resume(cfg.get("resume"))
    out["eval"] = _typed(cfg.get("eval") or {}, EndEvalCfg, "eval")
    ns = out["eval"]["n_samples"]
    k = eval_defaults()["prdc_k"]  # the end-of-run evaluation is eval.py's, with its rules
    _require(ns == "auto" or (isinstance(ns, int) and not isinstance(ns, bool) and ns > k),
             "eval.n_samples", f"must be auto or an int above eval.py's prdc_k={k} (precision "
             f"and recall need k + 1 samples)", ns)
    _require(out["eval"]["batch_size"] >= 1, "eval.batch_size", "must be >= 1",
             out["eval"]["batch_size"])
    out["eval"]["samplers"] = validate_eval_samplers(out["eval"]["samplers"], out["sampler"],
                                                       out["grid"])
    check_sampling_grids(out)
    check_step_count(out)
    o = out["objective"]
    if out["task"] == "no_t_study" and o["name"] not in ("eps", "no_t"):
        raise ConfigError(f"objective={o['name']} with task=no_t_study: the study trains its own "
                          f"pair (a t-conditioned eps model and a no_t model); leave objective at "
                          f"eps (or no_t, to set its clamp_factor)")
    if out["task"] == "diffusion" and o["name"] != "no_t" and any(
            e.get("name") == "ddim_no_t_lesson"
            for e in [out["sampler"], *out["eval"]["samplers"].values()]):
        raise ConfigError(f"sampler.name=ddim_no_t_lesson needs objective=no_t (objective={o['name']}); "
                          f"use sampler=ddim_lesson for a t-conditioned model")
    if out["task"] == "diffusion" and o["name"] == "no_t" and o["use_predicted_noise_level"]:
        if not o["noise_level_ckpt"]:
            raise ConfigError("objective.noise_level_ckpt is required with objective=no_t and "
                              "objective.use_predicted_noise_level=true (train a predictor with "
                              "task=noise_level, or set objective.use_predicted_noise_level=false)")
        if not Path(o["noise_level_ckpt"]).is_file():
            raise ConfigError(f"objective.noise_level_ckpt={o['noise_level_ckpt']!r}: no such "
                              f"checkpoint file")
    if out["ckpt_path"] is not None and not Path(out["ckpt_path"]).is_file():
        raise ConfigError(f"ckpt_path={out['ckpt_path']!r}: no such checkpoint file")
    return out


def derived_config(c: dict, changes: dict) -> dict:
    """A config derived in code from the validated config ``c``, validated exactly as a user's
    config is (so code cannot build a config the validator has not seen). ``changes`` maps dotted
    keys to values (``"task"``, ``"train.epochs"``); a bare group name with an option's name
    (``"objective": "eps"``) switches that group to the option: its yaml gives every key, and the
    keys it shares with the current option (``normalize_input``, say) keep their current values
    unless ``changes`` sets them too."""
    out = copy.deepcopy(c)
    for key, value in changes.items():
        group, _, leaf = key.partition(".")
        if not leaf and isinstance(out.get(group), dict) and isinstance(value, str):
            option = option_yaml(group, value)
            if option.get("name") != value:
                raise ConfigError(f"{group}={value!r} is not an option of config group "
                                  f"{group!r}")
            out[group] = {**option, **{k: v for k, v in out[group].items()
                                       if k in option and k != "name"}}
    for key, value in changes.items():
        group, _, leaf = key.partition(".")
        if leaf:
            out[group][leaf] = copy.deepcopy(value)
        elif not (isinstance(out.get(group), dict) and isinstance(value, str)):
            out[group] = copy.deepcopy(value)
    return validate_train_config(OmegaConf.create(out))


# ----------------------------------------------------------------------------- eval.py
@dataclass
class EvalCfg:  # eval.py's eval section (conf/eval.yaml)
    n_samples: int
    batch_size: int
    use_ema: bool
    features: str
    kid_subset_size: int
    kid_subsets: int
    floor: bool
    per_step: bool
    diagnostics: bool
    n_grid: int
    device: str
    # sampling seeds to evaluate the model with (mean ± std over them); null: the top-level seed
    seeds: Any
    prdc_k: int  # k of the k-NN balls of precision/recall (Kynkaanniemi) and density/coverage
    precision: str  # the network samples in: ckpt (trainer.precision) | 32-true | bf16-mixed


SEEDS_RULE = ("must be null (the top-level seed) or a non-empty list of distinct ints >= 0, "
              "e.g. eval.seeds=[0,1,2]")


def validate_seeds(seeds) -> list[int] | None:
    """``eval.seeds``: None, or a non-empty list of distinct non-negative ints."""
    if seeds is None:
        return None
    ok = (isinstance(seeds, (list, tuple)) and len(seeds) > 0
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
          and len(set(seeds)) == len(seeds))
    _require(ok, "eval.seeds", SEEDS_RULE, seeds)
    return [int(s) for s in seeds]


EVAL_TOP_KEYS = {"defaults", "ckpt", "seed", "name", "data_root", "eval", "sampler", "grid",
                 "logger", "objective", "hydra", "optimized_metric", "paths"}
NO_T_KEYS = ("noise_level_ckpt", "use_predicted_noise_level", "clamp_factor", "noise_level_clamp")


def eval_defaults() -> dict:
    """eval.py's evaluation settings as conf/eval.yaml gives them (the base of a training run's
    end-of-run evaluation, whose own ``eval:`` keys are laid over them)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval.yaml"))["eval"]


def validate_eval_config(cfg: DictConfig) -> dict:
    unknown = sorted(set(cfg.keys()) - EVAL_TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level setting; valid: "
                          f"{', '.join(sorted(EVAL_TOP_KEYS - {'defaults', 'hydra'}))}")
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt is required: ckpt=PATH to a training checkpoint (.ckpt)")
    paths = validate_paths(cfg.get("paths"))
    c = {"ckpt": str(cfg.ckpt), "seed": cfg.seed, "name": cfg.name,
         "data_root": cfg.get("data_root") or (paths or {}).get("data")}
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
    e["precision"] = PRECISION_ALIASES.get(str(e["precision"]), str(e["precision"]))
    _choice(e["precision"], "eval.precision", ["ckpt", "32-true", "bf16-mixed"])
    e["seeds"] = validate_seeds(e["seeds"])
    _require(1 <= e["prdc_k"] < e["n_samples"], "eval.prdc_k",
             f"must be an int >= 1 and below eval.n_samples={e['n_samples']}", e["prdc_k"])
    c["eval"] = e
    c["sampler"] = OmegaConf.to_container(cfg.sampler, resolve=True)
    if c["sampler"].get("name") != "ckpt":
        validate_sampler(c["sampler"])
    c["grid"] = OmegaConf.to_container(cfg.get("grid") or {"name": "ckpt"}, resolve=True)
    if c["grid"].get("name") != "ckpt":
        validate_grid(c["grid"])
    c["logger"] = validate_logger(cfg.logger)
    c["optimized_metric"] = cfg.get("optimized_metric")
    if c["optimized_metric"] is not None:
        _choice(c["optimized_metric"], "optimized_metric", ["fid", "kid_mean"])
    obj = cfg.get("objective")
    obj = OmegaConf.to_container(obj, resolve=True) if isinstance(obj, DictConfig) else dict(obj or {})
    unknown = sorted(set(obj) - set(NO_T_KEYS))
    if unknown:
        raise ConfigError(f"objective.{unknown[0]}: unknown setting; eval accepts "
                          f"{', '.join('objective.' + k for k in NO_T_KEYS)}")
    c["objective"] = {k: v for k, v in obj.items() if v is not None}
    if "noise_level_clamp" in c["objective"]:
        _choice(c["objective"]["noise_level_clamp"], "objective.noise_level_clamp",
                ["median", "grid"])
    if "clamp_factor" in c["objective"]:
        _require(c["objective"]["clamp_factor"] >= 1, "objective.clamp_factor", "must be >= 1",
                 c["objective"]["clamp_factor"])
    return c


# ----------------------------------------------------------------------------- CLI pre-check
def user_config_dirs(argv: list[str]) -> list[Path]:
    """The config folders a command line adds to Hydra's search path: ``-cd DIR`` /
    ``--config-dir DIR`` (also ``--config-dir=DIR``), ``-cp DIR`` / ``--config-path DIR`` and
    ``hydra.searchpath=[file://DIR,...]`` (``pkg://`` entries are packages, not folders)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        for flag in ("-cd", "--config-dir", "-cp", "--config-path"):
            if arg == flag and i + 1 < len(argv):
                out.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                out.append(arg.split("=", 1)[1])
        if arg.lstrip("+").startswith("hydra.searchpath="):
            value = arg.split("=", 1)[1].strip("[]")
            out += [v.strip().strip("'\"")[len("file://"):] for v in value.split(",")
                    if v.strip().strip("'\"").startswith("file://")]
    return [Path(d).expanduser().resolve() for d in out if d]


def config_group_options(extra_dirs: list[Path] = ()) -> dict[str, list[str]]:
    """Every group's options: the package's conf/ and the user's config folders together."""
    groups: dict[str, set[str]] = {}
    for root in (CONF_DIR, *extra_dirs):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.is_dir():
                groups.setdefault(p.name, set()).update(q.stem for q in p.glob("*.yaml"))
    return {g: sorted(o) for g, o in groups.items()}


def check_group_choices(argv: list[str], groups: dict[str, list[str]] | None = None) -> None:
    """Before Hydra runs: ``group=option`` overrides naming an option that does not exist get a
    one-line error listing the options (Hydra's own message spans many lines); the options of
    the user's config folders on the command line count as well as the package's."""
    if groups is None:
        groups = config_group_options(user_config_dirs(argv))
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if key not in groups:
            continue
        if value.startswith(("choice(", "range(", "glob(")):
            continue
        for v in value.split(","):
            v = v.strip()
            if v and v != "null" and v not in groups[key]:
                raise ConfigError(f"{key}={v!r} is not an option of config group '{key}'; "
                                  f"choose one of: {', '.join(groups[key])}")
