"""diffexp from Python (a notebook, a script): the same configs, runs and checkpoints as the
command line, without Hydra's command line.

    import diffexp
    cfg = diffexp.compose(["experiment=quickstart", "train.epochs=1"])   # a validated config
    run = diffexp.train(cfg, "runs/nb/quick")                          # the run folder
    model = diffexp.load(run / "checkpoints" / "last.ckpt")
    images = model.sample(64, sampler="euler", steps=20, seed=0)       # uint8 [64, 1, 28, 28]
    x0_hat = model.denoise(x, sigma)                                   # the EMA denoiser
    diffexp.evaluate(images)                                           # FID, KID and the floor

Every function validates what it is given the way the entry points do: a bad setting raises a
:class:`~diffexp.errors.DiffexpError` (:class:`~diffexp.config.ConfigError` for settings) whose
message is one line naming it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["Model", "compose", "evaluate", "load", "train"]


def compose(overrides: Sequence[str] = (), *, config: str = "train") -> dict:
    """The validated config of ``python train.py OVERRIDES...`` (a plain dict), composed from the
    package's ``conf/`` by Hydra's compose API; nothing is written."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import (
        CONF_DIR,
        check_group_choices,
        check_moved_settings,
        validate_train_config,
    )

    if config != "train":
        raise ValueError(f"config={config!r}: compose builds training configs (config='train')")
    overrides = [str(o) for o in overrides]
    check_group_choices(overrides)
    check_moved_settings(overrides)
    if GlobalHydra.instance().is_initialized():  # e.g. inside a Hydra app: leave it as it was
        saved = GlobalHydra.instance().hydra
        GlobalHydra.instance().clear()
    else:
        saved = None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config, overrides=overrides)
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    return validate_train_config(cfg)


def train(config: dict, run_dir: str | Path | None = None) -> Path:
    """Train the validated ``config`` (from :func:`compose`) into ``run_dir`` (default
    ``runs/train/<time>_<name>``, as train.py) and return the run folder: config.yaml,
    checkpoints/last.ckpt, samples/, summary.json. A folder holding a run continues it
    (``train.auto_resume``)."""
    from .files import hold_run_folder
    from .runs.train import train as train_run

    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = Path("runs/train") / f"{stamp}_{config['name']}"
    run_dir = Path(run_dir)
    with hold_run_folder(run_dir):
        train_run(config, run_dir)
    return run_dir


class Model:
    """A trained diffusion model (EMA weights) loaded from a checkpoint by :func:`load`."""

    def __init__(self, module):
        self.module = module.eval()

    @property
    def config(self) -> dict:
        """The run's config (read-only)."""
        return self.module.cfg

    @property
    def device(self) -> torch.device:
        return self.module.device

    def to(self, device) -> Model:
        self.module.to(device)
        return self

    def _sampler_config(self, sampler, steps, options) -> dict:
        from .config import option_config, validate_sampler

        # None: the run's own sampler, with the given settings laid over it
        base = dict(self.config["sampler"]) if sampler is None else option_config("sampler",
                                                                                   sampler)
        if steps is not None:
            base["steps"] = steps
        return validate_sampler({**base, **options})

    def _grid_config(self, grid) -> dict:
        from .config import option_config, validate_grid

        if grid is None:
            return dict(self.config["grid"])
        if isinstance(grid, str):
            return validate_grid(option_config("grid", grid))
        base = dict(self.config["grid"])
        if "name" in grid and grid["name"] != base["name"]:
            base = option_config("grid", grid["name"])
        return validate_grid({**base, **grid})

    @torch.no_grad()
    def sample(self, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
               *, grid: str | dict | None = None, batch_size: int | None = None,
               **options) -> Tensor:
        """``n`` images as uint8 ``[n, 1, 28, 28]`` (as saved and scored). ``sampler``: a name of
        ``conf/sampler`` (its yaml's settings) or None for the run's own; ``steps`` and
        ``options`` (e.g. ``eta=0``, ``s_churn=1``, ``clip_denoised=True``) are laid over it;
        ``grid``: a name of ``conf/grid``, a mapping (e.g. ``{"name": "karras", "rho": 5}``), or
        None for the run's own. Image k depends on ``seed`` and k only, not on ``batch_size``.
        The number of network evaluations per image is kept in :attr:`last_nfe`."""
        scfg = self._sampler_config(sampler, steps, options)
        gcfg = self._grid_config(grid)
        _, u8, nfe = self.module.generate(int(n), seed=int(seed), sampler_cfg=scfg,
                                          grid_cfg=gcfg, batch_size=batch_size)
        self.last_nfe = nfe
        return u8

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma) -> Tensor:
        """The EMA denoiser ``D(x, sigma) -> x0_hat`` in the model's space (``x = x0 + sigma n``
        with x0 the padded image times ``data.scale``); ``sigma`` a number or one per image."""
        x = x.to(self.device, torch.float32)
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        s = s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(-1)
        return self.module.denoiser(use_ema=True)(x, s)


def load(ckpt: str | Path, device: str | torch.device = "cpu") -> Model:
    """The model of a training checkpoint (``checkpoints/last.ckpt`` of a run folder)."""
    from .module import load_module

    return Model(load_module(ckpt, setting="ckpt").to(device))


def evaluate(images: Tensor, *, data_root: str | Path | None = None, floor: bool = True,
             seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """FID and KID of uint8 images ``[n, 1, 28, 28]`` against the Fashion-MNIST test split in the
    shipped classifier's features (the protocol of eval.py), and with ``floor`` the same numbers
    for n real training images (the best any generator can score at this n)."""
    from .evaluation import floor_images, make_evaluator

    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError("images must be a uint8 tensor [n, 1, 28, 28] (as Model.sample returns)")
    evaluator = make_evaluator(data_root, device=device)
    scores = evaluator.score(images)
    out = {"fid": scores["fid"], "kid": scores["kid_mean"], "kid_std": scores["kid_std"],
           "n": scores["n"]}
    if floor:
        real = evaluator.floor(floor_images(len(images), data_root, seed=seed))
        out.update(floor_fid=real["fid"], floor_kid=real["kid_mean"])
    return out
