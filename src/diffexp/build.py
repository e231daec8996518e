"""Builders: a validated config (the plain dict of :func:`diffexp.config.validate_train_config`)
in, the objects it describes out. This is the one place config keys become objects:

* :func:`build_schedule`, :func:`build_objective` (with its resolved sigma_data),
  :func:`build_network`, :class:`DataSpec`, :class:`SamplingSpec` (sampler options, grid and the
  denoiser's own options), :class:`OptimSpec`, :class:`TrainSpec`, :class:`NoTSpec`;
* :func:`diffusion_spec` gathers them into the :class:`DiffusionSpec` a
  :class:`~diffexp.module.DiffusionModule` is constructed from, and :func:`noise_level_spec` the
  :class:`NoiseLevelSpec` of the alpha-bar predictor.

``objective.sigma_data: auto`` is resolved here and only here (:func:`resolve_sigma_data`): the
std of the training data as scaled and padded, measured once; the spec's config carries the
measured value (what a checkpoint records) and the objective is built with that value times
``objective.sigma_data_factor``.

Pure torch: no Lightning, no Hydra. Every builder passes every setting explicitly, so a default
written in a function signature never acts on a run (the defaults live in ``conf/``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .objectives import Objective
from .objectives import build_objective as _objective
from .schedules import Schedule
from .schedules import build_schedule as _schedule

__all__ = ["DataSpec", "DiffusionSpec", "NoTSpec", "NoiseLevelSpec", "OptimSpec", "SamplingSpec",
           "TrainSpec", "build_network", "build_objective", "build_schedule", "diffusion_spec",
           "effective_sigma_data", "frozen", "noise_level_spec", "pop_denoiser_options",
           "resolve_sigma_data", "upgrade_config"]


# ----------------------------------------------------------------------------- read-only config
class FrozenDict(dict):
    """A dict that refuses changes (a module's config is fixed when it is constructed). Still a
    dict: ``json.dumps`` and ``dict(...)`` (a mutable shallow copy) work on it."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("this config is read-only: build a new one (e.g. diffexp.build."
                        "diffusion_spec on a changed copy) instead of changing it in place")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore

    def __ior__(self, other):  # d |= ...
        self._refuse()

    def __deepcopy__(self, memo):
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self):  # pickles as a plain dict
        return (dict, (dict(self),))


def frozen(value):
    """A deep read-only copy of a config: dicts become :class:`FrozenDict`, lists tuples."""
    if isinstance(value, dict):
        return FrozenDict({k: frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def thawed(value):
    """The plain (mutable) copy of a config, frozen or not."""
    if isinstance(value, dict):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thawed(v) for v in value]
    return value


# ----------------------------------------------------------------------------- old configs
def upgrade_config(cfg: dict) -> dict:
    """A run config written by an earlier version, in today's shape (in place; returned).

    Before the grid group, the sampler config held ``grid``, ``rho``, ``sigma_min`` and
    ``sigma_max`` (rho acting only with grid=karras) and the karras schedule a ``rho`` of its own
    that its default grid used. They become ``cfg["grid"]`` with the meaning they had: a karras
    schedule's own grid with a rho other than 7 is written as the karras grid with that rho, which
    is the same grid. Objectives from before ``normalize_input`` did not normalise; networks from
    before ``model.patch`` had patch 1."""
    if "grid" not in cfg and isinstance(cfg.get("sampler"), dict):
        smp = cfg["sampler"]
        grid = {"name": smp.pop("grid", "schedule"), "rho": smp.pop("rho", None),
                "sigma_min": smp.pop("sigma_min", None), "sigma_max": smp.pop("sigma_max", None)}
        sched = cfg.get("schedule", {})
        if grid["name"] == "schedule" and sched.get("name") == "karras" \
                and float(sched.get("rho", 7.0)) != 7.0:
            grid["name"], grid["rho"] = "karras", float(sched["rho"])
            grid["sigma_min"] = grid["sigma_min"] or sched.get("sigma_min")
            grid["sigma_max"] = grid["sigma_max"] or sched.get("sigma_max")
        if grid["name"] != "karras":
            grid["rho"] = None
        cfg["grid"] = grid
    sched = cfg.get("schedule", {})
    if sched.get("name") == "karras" and float(sched.get("rho", 7.0)) == 7.0:
        sched.pop("rho", None)  # the fixed time map; a rho other than 7 stays (it defined t)
    train = cfg.get("train")
    if isinstance(train, dict) and "batch_size" in train:
        train.setdefault("stratified_noise", False)  # before the switch: independent draws
        train.setdefault("time_budget_s", None)  # before the budget: epochs and max_steps only
    optim = cfg.get("optim")
    if isinstance(optim, dict) and "lr_schedule" in optim:
        optim.setdefault("hold_steps", 0)  # before held schedules: the schedule from step 0
    if isinstance(train, dict) and "checkpoint_every_n_epochs" in train:
        # epoch checkpoints every N epochs, all kept: now the callbacks group's setting
        every = train.pop("checkpoint_every_n_epochs")
        cfg.setdefault("callbacks", {}).setdefault("checkpoints", {})["every_k_epochs"] = every
    lg = cfg.get("logger")
    if isinstance(lg, dict) and lg.get("name") in ("csv", "none"):
        # written when every logger carried wandb's settings: csv and none have none of them
        cfg["logger"] = lg = {"name": lg["name"], "extra": lg.get("extra") or {}}
    if isinstance(lg, dict) and lg.get("name") == "wandb":  # before these settings: off
        for key, before in (("notes", None), ("log_model", False), ("save_code", False)):
            lg.setdefault(key, before)
    if isinstance(lg, dict):
        lg.setdefault("extra", {})  # before logger.extra: no other logger
    model = cfg.get("model")
    if isinstance(model, dict) and "widths" in model:
        model.setdefault("patch", 1)  # before patches existed every network saw whole pixels
    obj = cfg.get("objective")
    if isinstance(obj, dict):
        obj.setdefault("normalize_input", False)  # before the switch existed
        if obj.get("name") == "karras":
            obj.setdefault("sigma_data_factor", 1.0)  # before the factor existed
            obj.setdefault("c_noise", "log")  # before the lesson's raw c_noise existed
        if obj.get("name") == "no_t":
            obj.setdefault("noise_level_clamp", "median")  # before the per-image window
        else:  # written before the objective schemas were split per objective
            for key in ("sigma_data", "sigma_data_factor"):
                if obj.get(key) is None:
                    obj.pop(key, None)
    return cfg


# ----------------------------------------------------------------------------- pieces
#: sampler-config keys that act on the denoiser, not on the sampler function
DENOISER_KEYS = ("clip_denoised",)


def pop_denoiser_options(sampler_cfg: dict) -> tuple[dict, dict]:
    """Split ``clip_denoised`` off a sampler config: it clamps the denoiser's output to the data
    range, +-data.scale, before the sampler sees it, so every use of D is clamped, the step
    direction included (with ddim: eps re-derived from the clamped x0, i.e. ddim's
    ``use_clipped_eps=true``; the lesson's DDIM, which clamps x0_hat only, is ddim_lesson)."""
    scfg = dict(sampler_cfg)
    opts = {k: scfg.pop(k) for k in DENOISER_KEYS if k in scfg}
    clip = opts.get("clip_denoised", False)
    if not isinstance(clip, bool):
        raise ValueError(f"sampler.clip_denoised must be true or false (got {clip!r})")
    return scfg, opts


def build_schedule(sched_cfg: dict) -> Schedule:
    return _schedule(sched_cfg["name"], **{k: v for k, v in sched_cfg.items() if k != "name"})


def effective_sigma_data(obj_cfg: dict) -> float | str | None:
    """The sigma_data the Karras objective uses: the configured (or measured) value times
    ``objective.sigma_data_factor`` (e.g. 0.5 to study a mis-set sigma_data); ``"auto"`` while
    not yet measured, None for the other objectives."""
    sd = obj_cfg.get("sigma_data")
    if sd is None or sd == "auto":
        return sd
    return float(sd) * float(obj_cfg.get("sigma_data_factor") or 1.0)


def build_objective(obj_cfg: dict, schedule: Schedule) -> Objective:
    sd = effective_sigma_data(obj_cfg)
    if sd == "auto":
        raise ValueError("objective.sigma_data=auto is measured on the training data first: "
                         "build through diffusion_spec (or resolve_sigma_data)")
    return _objective(obj_cfg["name"], schedule, sd, bool(obj_cfg["normalize_input"]),
                      c_noise=obj_cfg["c_noise"] if obj_cfg["name"] == "karras" else "log")


#: the model settings diffexp reads itself; a ``model._target_`` network gets the others
MODEL_OWN_KEYS = ("name", "channels_last", "compile")


def build_network(model_cfg: dict, conditioned: bool, embedding: str = "geometric"):
    """The UNet of ``model_cfg``; ``embedding`` is the objective's (``Objective.embedding``: the
    lesson's raw-sigma c_noise needs a timestep embedding). A ``model._target_`` network is built
    from the settings diffexp does not read itself, plus ``conditioned`` and ``embedding`` where
    its constructor takes parameters of those names (docs/EXTENDING.md)."""
    if "_target_" in model_cfg:
        import torch

        from .components import build

        return build({k: v for k, v in model_cfg.items() if k not in MODEL_OWN_KEYS}, "model",
                     torch.nn.Module, conditioned=conditioned, embedding=embedding)
    from .models.unet import UNet

    return UNet(in_channels=1, out_channels=1, widths=tuple(model_cfg["widths"]),
                blocks=int(model_cfg["blocks"]), attn_levels=tuple(model_cfg["attn_levels"]),
                head_dim=int(model_cfg["head_dim"]), cond_embedding=conditioned,
                embedding=embedding, patch=int(model_cfg["patch"]))


def image_side(pad: int) -> int:
    """Side of the square images the network sees: Fashion-MNIST's 28 plus ``pad`` on each side."""
    return 28 + 2 * pad


@dataclass(frozen=True)
class DataSpec:
    """What the data group describes: which images, how they are split, padded and scaled."""
    name: str
    root: str | None
    download: bool
    pad: int
    scale: float
    val_size: int
    split_seed: int
    subset: int | None

    @classmethod
    def from_config(cls, d: dict) -> DataSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    @property
    def image_shape(self) -> tuple[int, int, int]:
        side = image_side(self.pad)
        return (1, side, side)

    def config(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load(self, train: bool = True):
        """The images as a :class:`~diffexp.data.DeviceData` (read or downloaded)."""
        from .data import build_data

        return build_data(self.config(), train=train)


@dataclass(frozen=True)
class SamplingSpec:
    """A run's sampling: the sampler's name, steps and options, the grid, and the options that act
    on the denoiser (``clip_denoised``)."""
    sampler: dict
    grid: dict
    clip_denoised: bool

    @classmethod
    def from_config(cls, sampler_cfg: dict, grid_cfg: dict | None) -> SamplingSpec:
        plain, dopts = pop_denoiser_options(thawed(sampler_cfg))
        grid = thawed(grid_cfg) if grid_cfg else {"name": "schedule", "rho": None,
                                                  "sigma_min": None, "sigma_max": None}
        return cls(frozen(plain), frozen(grid), bool(dopts.get("clip_denoised", False)))

    def sampler_arguments(self) -> tuple[dict, dict]:
        """``(grid keyword arguments, sampler options)`` for :func:`diffexp.sampling.sample`."""
        from .sampling import split_sampler_config

        return split_sampler_config(thawed(self.sampler), thawed(self.grid))


@dataclass(frozen=True)
class OptimSpec:
    name: str
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    lr_schedule: str
    pct_start: float
    hold_steps: int

    @classmethod
    def from_config(cls, o: dict) -> OptimSpec:
        return cls(o["name"], float(o["lr"]), tuple(float(b) for b in o["betas"]), float(o["eps"]),
                   float(o["weight_decay"]), o["lr_schedule"], float(o["pct_start"]),
                   int(o["hold_steps"]))


@dataclass(frozen=True)
class TrainSpec:
    """The training-loop settings the module itself acts on."""
    seed: int
    batch_size: int
    epochs: int
    ema_decay: float
    sample_every_n_epochs: int
    n_sample_images: int
    stratified_noise: bool = False

    @classmethod
    def from_config(cls, c: dict) -> TrainSpec:
        t = c["train"]
        return cls(int(c["seed"]), int(t["batch_size"]), int(t["epochs"]), float(t["ema_decay"]),
                   int(t["sample_every_n_epochs"] or 0), int(t["n_sample_images"]),
                   bool(t.get("stratified_noise", False)))


@dataclass(frozen=True)
class NoTSpec:
    """How a no_t model finds each image's noise level when it samples."""
    noise_level_ckpt: str | None
    use_predicted_noise_level: bool
    clamp_factor: float
    noise_level_clamp: str

    @classmethod
    def from_config(cls, o: dict) -> NoTSpec | None:
        if o["name"] != "no_t":
            return None
        return cls(o["noise_level_ckpt"], bool(o["use_predicted_noise_level"]),
                   float(o["clamp_factor"]), o["noise_level_clamp"])


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything a :class:`~diffexp.module.DiffusionModule` is made of, built from one config.
    ``config`` is that config (read-only, sigma_data resolved): what a checkpoint stores and
    rebuilds from."""
    config: dict
    data: DataSpec
    schedule: Schedule
    objective: Objective
    model: dict
    optim: OptimSpec
    train: TrainSpec
    sampling: SamplingSpec
    no_t: NoTSpec | None
    precision: str
    channels_last: bool = field(default=False)
    compile: bool = field(default=False)

    def network(self):
        return build_network(self.model, conditioned=self.objective.conditioned,
                             embedding=self.objective.embedding)


def resolve_sigma_data(c: dict, data=None) -> tuple[dict, float | None]:
    """``objective.sigma_data: auto`` measured: the std of the training data as scaled and padded
    (``data``, a DeviceData, or loaded from the config's data group). Returns ``(a copy of c with
    the measured value, the measured value)``; the value is None when nothing was measured."""
    o = c["objective"]
    if o["name"] != "karras" or o.get("sigma_data") != "auto":
        return c, None
    if data is None:
        data = DataSpec.from_config(c["data"]).load(train=True)
    sd = float(data.measured_std())
    out = thawed(c)
    out["objective"]["sigma_data"] = sd
    return out, sd


def diffusion_spec(c: dict, data=None, *, precision: str | None = None) -> DiffusionSpec:
    """The :class:`DiffusionSpec` of a validated diffusion config (``sigma_data: auto`` measured on
    ``data`` or on the config's data set). ``precision``: the resolved trainer precision (default:
    the config's; ``auto`` counts as 32-true)."""
    c, _ = resolve_sigma_data(thawed(c), data)
    schedule = build_schedule(c["schedule"])
    objective = build_objective(c["objective"], schedule)
    prec = precision or c["trainer"]["precision"]
    return DiffusionSpec(
        config=frozen(c), data=DataSpec.from_config(c["data"]), schedule=schedule,
        objective=objective, model=frozen(c["model"]), optim=OptimSpec.from_config(c["optim"]),
        train=TrainSpec.from_config(c), sampling=SamplingSpec.from_config(c["sampler"],
                                                                         c.get("grid")),
        no_t=NoTSpec.from_config(c["objective"]), precision="32-true" if prec == "auto" else prec,
        channels_last=bool(c["model"]["channels_last"]), compile=bool(c["model"]["compile"]))


@dataclass(frozen=True)
class NoiseLevelSpec:
    """The alpha-bar predictor (``task=noise_level``): its network and what it is trained on."""
    config: dict
    data: DataSpec
    schedule: Schedule
    target: str
    abar_dist: str
    widths: tuple[int, ...]
    n_scatter: int
    optim: OptimSpec
    train: TrainSpec
    precision: str

    def network(self):
        from .models.alpha_bar_net import AlphaBarNet

        return AlphaBarNet(self.widths, target=self.target)


def noise_level_spec(c: dict, *, precision: str | None = None) -> NoiseLevelSpec:
    c = thawed(c)
    nl = c["noise_level"]
    prec = precision or c["trainer"]["precision"]
    return NoiseLevelSpec(
        config=frozen(c), data=DataSpec.from_config(c["data"]),
        schedule=build_schedule(c["schedule"]), target=nl["target"], abar_dist=nl["abar_dist"],
        widths=tuple(int(w) for w in nl["widths"]), n_scatter=int(nl["n_scatter"]),
        optim=OptimSpec.from_config(c["optim"]), train=TrainSpec.from_config(c),
        precision="32-true" if prec == "auto" else prec)


def with_changes(config: dict, changes: dict[str, dict]) -> dict:
    """A plain copy of ``config`` with ``{group: {key: value}}`` laid over it (e.g. a no_t
    model's sampling options at evaluation): build a new spec from it."""
    out = thawed(config)
    for group, values in changes.items():
        out[group] = {**out.get(group, {}), **values}
    return out

