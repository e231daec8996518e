"""The LightningModules: training step, EMA, validation loss, periodic sample grids.

A module is constructed from a spec of built objects (:mod:`diffexp.build`: schedule, objective,
network settings, data, optimizer, sampling) and reads no config keys itself. The spec's config
(read-only) is stored in every checkpoint, so a checkpoint alone rebuilds its module through the
same builders (see :func:`load_module`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from . import sampling
from .build import (
    DiffusionSpec,
    NoiseLevelSpec,
    diffusion_spec,
    noise_level_spec,
    thawed,
    upgrade_config,
    with_changes,
)
from .checkpoint_io import CHECKPOINT_FORMAT, read_checkpoint
from .config import ConfigError
from .data import DeviceData, decode
from .ema import EMA
from .errors import CheckpointError
from .models.alpha_bar_net import AlphaBarNet
from .models.unet import count_parameters
from .no_t import ABAR_EPS, no_t_denoiser
from .objectives import make_denoiser
from .precision import autocast as precision_autocast
from .preemption import step_seed
from .say import say
from .viz import save_grid

__all__ = ["DiffusionModule", "IndexBatches", "AlphaBarModule", "load_module",
           "load_noise_level_net"]


class IndexBatches:
    """An iterable of int64 index batches over ``indices``: a fresh seeded permutation per epoch
    (``seed + epoch``), so the order is reproducible and resumable. Only indices travel; the images
    are gathered on the device by :meth:`DeviceData.batch`.

    ``rank`` / ``world_size`` give each process a disjoint, equally sized share of every epoch.

    ``state_dict`` / ``load_state_dict`` (the protocol Lightning's fit loop saves into a checkpoint
    and restores when it resumes mid-epoch) hold the epoch and how many of its batches were handed
    out, so a resumed run's next iteration starts at the first batch not yet trained on."""

    def __init__(self, indices: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1):
        self.indices, self.batch_size = indices, int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._served = 0  # batches handed out in the current iteration
        self._skip = (0, 0)  # (epoch, batches): where a resumed iteration starts (load_state_dict)

    def _share(self) -> int:
        return len(self.indices) // self.world_size

    def __len__(self) -> int:
        n = self._share()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        # the skip applies once, and only to the epoch it was saved in: a checkpoint from an
        # epoch's end is followed by the next epoch (on_train_epoch_start sets it before the
        # first batch is drawn), which starts from its first batch
        (epoch, skip), self._skip = self._skip, (0, 0)
        skip = skip if epoch == self.epoch else 0
        if skip and skip >= len(self):
            # saved after the epoch's last batch but before its end: Lightning resumes with the
            # next epoch without calling on_train_epoch_start, so the loader moves on by itself
            self.epoch, skip = self.epoch + 1, 0
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g)]
        n = self._share()
        idx = idx[self.rank * n:(self.rank + 1) * n]
        self._served = skip
        for b in range(skip, len(self)):
            self._served = b + 1  # counted when handed out: a checkpoint taken after the step
            yield idx[b * self.batch_size:(b + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._skip = (self.epoch, int(state["served"]))


class _DataModuleMixin(pl.LightningModule):
    """Shared plumbing: device-resident data, index batches, the optimizer and LR schedule.
    Subclasses set ``self.net`` (the trained network) and implement the steps."""

    def __init__(self, spec: DiffusionSpec | NoiseLevelSpec):
        super().__init__()
        self.save_hyperparameters({"cfg": thawed(spec.config)}, logger=False)
        self.spec = spec
        #: the mixed precision sampling runs under (a runtime choice, like the device)
        self.precision = spec.precision
        self.data: DeviceData | None = None
        self.run_dir: Path | None = None
        self._train_loader: IndexBatches | None = None
        self._noise_generator: torch.Generator | None = None
        self._loader_state: dict | None = None  # the train loader's position, from a checkpoint
        #: a time budget's run: the LR schedule's length is fixed once the run has timed its
        #: own steps (diffexp.runs.budget), so it starts as a held schedule of unknown length
        self.length_set_by_budget = False

    @property
    def cfg(self) -> dict:
        """The config this module was built from (read-only; sigma_data as measured)."""
        return self.spec.config

    # ------------------------------------------------------------------ data
    def attach_data(self, data: DeviceData, run_dir: str | Path | None = None) -> None:
        self.data = data
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def setup(self, stage: str) -> None:
        if self.data is not None:
            self.data.to(self.device)

    def train_dataloader(self):
        t = self.spec.train
        self._train_loader = IndexBatches(
            self.data.train_index, t.batch_size, shuffle=True, seed=t.seed,
            rank=self.global_rank, world_size=self.trainer.world_size if self._trainer else 1)
        if self._loader_state is not None:
            self._train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return self._train_loader

    def val_dataloader(self):
        if len(self.data.val_index) == 0:
            return []
        return IndexBatches(self.data.val_index, self.spec.train.batch_size, shuffle=False,
                            drop_last=False, rank=self.global_rank,
                            world_size=self.trainer.world_size if self._trainer else 1)

    def on_train_epoch_start(self) -> None:
        if self._train_loader is not None:
            self._train_loader.epoch = self.current_epoch

    # The train loader's position travels in the checkpoint under a key of ours too. Lightning's
    # fit loop saves it as well, but restores it only into a loader it creates after the restore;
    # with a OneCycle or cosine LR schedule, configure_optimizers has already created the loader
    # (estimated_stepping_batches), and a resumed run would restart its epoch from batch 0.
    # on_load_checkpoint runs before configure_optimizers, so train_dataloader() applies it.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._train_loader is not None:
            checkpoint["diffexp_train_loader"] = self._train_loader.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._loader_state = checkpoint.get("diffexp_train_loader")
        if self._loader_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(self._loader_state)

    def training_generator(self) -> torch.Generator:
        """The generator of this optimizer step's training noise, seeded from (seed, rank, global
        step): a run resumed from any checkpoint draws exactly the noise the uninterrupted run
        drew, whatever else used the global RNG in between (sample grids, validation, another
        process's history), and each DDP rank draws its own. One generator per module, re-seeded
        each step on the host (no device sync)."""
        g = self._noise_generator
        if g is None or g.device != self.device:
            g = self._noise_generator = torch.Generator(device=self.device)
        return g.manual_seed(step_seed(self.spec.train.seed, self.global_rank, self.global_step))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
        gradients itself (the fused Adam used on CUDA), under bf16 too, which has no gradient
        scaler: the gradients here are the true ones, so they are clipped directly. fp16 (which
        has a scaler) keeps Lightning's path."""
        if (gradient_clip_val and optimizer.defaults.get("fused")
                and self.trainer.precision != "16-mixed"):
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _logging_step(self) -> bool:
        """Whether this optimizer step is one the logger records (``trainer.log_every_n_steps``):
        the extra training diagnostics are computed only then."""
        if self._trainer is None or not self.trainer.loggers:
            return False
        return self.global_step % max(int(self.trainer.log_every_n_steps), 1) == 0

    def on_before_optimizer_step(self, optimizer) -> None:
        # the gradient norm before clipping (Lightning clips after this hook), on logging steps
        if self._logging_step():
            grads = [p.grad.detach().norm(2) for p in self.net.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(grads)),
                         on_step=True, on_epoch=False)

    def _loss_on_prog_bar(self) -> bool:
        """Lightning converts every ``prog_bar`` metric to a Python number after each batch, a
        host-device sync per step on a GPU even with no bar shown; so the training loss goes to the
        progress bar only when there is one."""
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def configure_optimizers(self):
        o = self.spec.optim
        params = self.net.parameters()
        kw = dict(lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        if self.device.type == "cuda":
            kw["fused"] = True
        else:
            kw["foreach"] = True
        opt = (torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam)(params, **kw)
        sched = o.lr_schedule
        if sched == "constant":
            return opt
        total = self.trainer.estimated_stepping_batches
        if self.trainer.fast_dev_run:  # a smoke run of a few batches: the schedule is not run out
            total = max(total, 3)

        def make(steps: int):
            if sched == "onecycle":  # a warm-up of at least 2 steps (OneCycleLR divides by it)
                return torch.optim.lr_scheduler.OneCycleLR(
                    opt, max_lr=o.lr, total_steps=steps, pct_start=max(o.pct_start, 2.0 / steps))
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

        if self.length_set_by_budget or o.hold_steps:
            from .lr_schedule import HeldSchedule

            # a time budget's run: the length is fixed once the run has timed its own steps
            s = HeldSchedule(opt, make) if self.length_set_by_budget else \
                HeldSchedule(opt, make, hold=o.hold_steps, total=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "step"}}
        if sched == "onecycle":
            if total < 3:
                raise ValueError(f"optim.lr_schedule=onecycle needs at least 3 optimizer steps "
                                 f"(this run has {total}); use optim.lr_schedule=constant")
            # the warm-up phase needs at least two steps (OneCycleLR divides by its length)
            pct = max(o.pct_start, 2.0 / total)
            if pct != o.pct_start and self.trainer.is_global_zero:
                say(f"[diffexp] optim.pct_start={o.pct_start} gives a warm-up under 2 "
                    f"steps for {total} steps; using {pct:.3f}")
            s = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total,
                                                    pct_start=pct)
        else:  # cosine
            s = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "step"}}



class DiffusionModule(_DataModuleMixin):
    """A diffusion model in training: network, EMA, objective, schedule (from a
    :class:`~diffexp.build.DiffusionSpec`; :meth:`from_config` builds one from a config)."""

    def __init__(self, spec: DiffusionSpec):
        super().__init__(spec)
        self.schedule = spec.schedule
        self.objective = spec.objective
        self.net = spec.network()
        self.ema = EMA(self.net, spec.train.ema_decay)
        self._noise_level_net = None
        self.channels_last = spec.channels_last
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.ema.shadow.to(memory_format=torch.channels_last)
        # model.compile: the training forward goes through a compiled view of the same module,
        # kept out of the module registry so checkpoint keys stay those of the plain network
        fwd = torch.compile(self.net) if spec.compile else self.net
        object.__setattr__(self, "_train_forward", fwd)

    @classmethod
    def from_config(cls, c: dict, data=None) -> DiffusionModule:
        """Built from a validated config (``sigma_data: auto`` measured on ``data`` or on the
        config's data set)."""
        return cls(diffusion_spec(c, data))

    # ------------------------------------------------------------------ steps
    def diffusion_loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean over the batch of loss_weight(sigma) * mean-squared error on the objective's target."""
        b = x0.shape[0]
        sigma = self.schedule.sample_training_sigma(
            b, generator=generator, device=x0.device, stratified=self.spec.train.stratified_noise)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x = x0 + sigma.view(-1, 1, 1, 1) * noise
        inp, cond = self.objective.net_input(x, sigma)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        out = self._train_forward(inp, cond).float()
        target = self.objective.target(x0, noise, sigma)
        per_image = (out - target).pow(2).mean(dim=(1, 2, 3))
        return (self.objective.loss_weight(sigma) * per_image).mean()

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(self.data.batch(idx), generator=self.training_generator())
        self.log("train/loss", loss, on_step=True, on_epoch=True,
                 prog_bar=self._loss_on_prog_bar(), batch_size=len(idx))
        return loss

    def validation_step(self, idx: Tensor, batch_idx: int) -> None:
        # fixed noise per validation batch: the val loss is comparable across epochs
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss = self.diffusion_loss(self.data.batch(idx), generator=g)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(idx),
                 sync_dist=True)

    def optimizer_step(self, *args, **kwargs) -> None:
        # the EMA follows each optimizer step here rather than in on_train_batch_end, which runs
        # after the callbacks' hooks: a checkpoint a callback writes at the end of a batch
        # (mid-epoch or on a signal) then holds the EMA of that very step
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.net)
        if self._logging_step():
            # straight to the loggers: a host number, which self.log would turn into a device
            # tensor read back at the logging step
            for lg in self.loggers:
                lg.log_metrics({"train/ema_decay": self.ema.last_decay}, step=self.global_step)

    # ------------------------------------------------------------------ sampling
    def denoiser(self, use_ema: bool = True, record: list | None = None, clip: bool = False):
        """``denoiser(x, sigma) -> x0_hat`` of the EMA (or raw) network; ``clip`` clamps every
        estimate to the data range [-data.scale, data.scale]."""
        net = self.ema.shadow if use_ema else self.net
        no_t = self.spec.no_t
        if no_t is None:
            den = make_denoiser(net, self.objective)
        else:
            pred = self.noise_level_net() if no_t.use_predicted_noise_level else None
            den = no_t_denoiser(net, pred, use_predicted=no_t.use_predicted_noise_level,
                                clamp_factor=no_t.clamp_factor, clamp=no_t.noise_level_clamp,
                                record=record,
                                normalize_input=self.objective.normalize_input)
        if not clip:
            return den
        bound = float(self.spec.data.scale)

        def clipped(x, sigma):
            return den(x, sigma).clamp(-bound, bound)

        return clipped

    def noise_level_net(self):
        """The no_t model's noise-level predictor (loaded once from objective.noise_level_ckpt)."""
        if self._noise_level_net is None:
            path = self.spec.no_t.noise_level_ckpt
            if not path:
                raise ConfigError("objective.noise_level_ckpt is required to sample a no_t model "
                                  "with objective.use_predicted_noise_level=true")
            net, pcfg = load_noise_level_net(path)
            mine = self.spec.data
            for k in ("scale", "pad"):
                if getattr(mine, k) != pcfg["data"][k]:
                    raise ConfigError(f"objective.noise_level_ckpt={path!r} was trained with "
                                      f"data.{k}={pcfg['data'][k]}, this model with "
                                      f"{getattr(mine, k)}: train a predictor at data.{k}="
                                      f"{getattr(mine, k)} (task=noise_level)")
            # kept out of the module registry: the predictor lives in its own checkpoint
            object.__setattr__(self, "_noise_level_net", net.to(self.device).eval())
        return self._noise_level_net

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, sampler_cfg: dict | None = None,
                 grid_cfg: dict | None = None, use_ema: bool = True,
                 batch_size: int | None = None, callback=None, progress: str | None = None):
        """Sample ``n`` images with a sampler config and a grid config (default: the run's own);
        returns ``(x0 in the data range, uint8 images, nfe)``. ``progress``: a label under which
        to report progress on stderr (:class:`~diffexp.progress.Progress`)."""
        from .build import SamplingSpec

        if sampler_cfg is None and grid_cfg is None:
            spec = self.spec.sampling
        else:
            spec = SamplingSpec.from_config(sampler_cfg or self.spec.sampling.sampler,
                                            grid_cfg or self.spec.sampling.grid)
        grid_kw, options = spec.sampler_arguments()
        was_training = self.training
        self.eval()
        den = self.denoiser(use_ema, clip=spec.clip_denoised)
        bar = None
        if progress:
            from .progress import Progress

            bar = Progress(n, progress)
        with self._autocast():
            res = sampling.sample(den, self.schedule, n=n,
                                  shape=self.image_shape, seed=seed,
                                  batch_size=batch_size or self.spec.train.batch_size,
                                  device=self.device, callback=callback,
                                  on_batch=bar.update if bar else None, **grid_kw, **options)
        if bar:
            bar.close()
        self.train(was_training)
        d = self.spec.data
        return res.x0, decode(res.x0, d.pad, d.scale), res.nfe

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.data.image_shape

    def _autocast(self):
        return precision_autocast(self.device, self.precision)

    def on_train_epoch_end(self) -> None:
        if self.trainer.fast_dev_run:  # a smoke run: no sample grids
            return
        every = self.spec.train.sample_every_n_epochs
        # the last epoch, or the one trainer.max_steps ends (a time budget's step count) early
        last = (self.current_epoch + 1 >= self.trainer.max_epochs
                or 0 <= self.trainer.max_steps <= self.global_step)
        if (every and (self.current_epoch + 1) % every == 0) or last:
            self.log_sample_grid(tag="final" if last else f"epoch_{self.current_epoch + 1:03d}")

    def log_sample_grid(self, tag: str) -> Path | None:
        if self.run_dir is None or not self.trainer.is_global_zero:
            return None
        t0 = time.perf_counter()
        n = self.spec.train.n_sample_images
        _, u8, nfe = self.generate(n, seed=self.spec.train.seed)
        path = self.run_dir / "samples" / f"{tag}.png"
        save_grid(u8, path)
        for lg in self.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key="samples", images=[str(path)], caption=[f"{tag} (nfe={nfe})"],
                             step=self.global_step)
        say(f"[diffexp] sample grid {path} ({n} images, {nfe} NFE, "
                   f"{time.perf_counter() - t0:.1f}s)")
        return path

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["diffexp_version"] = CHECKPOINT_FORMAT


class AlphaBarModule(_DataModuleMixin):
    """Trains :class:`AlphaBarNet` to read alpha_bar off a noised VP image.

    Each image gets its own alpha_bar, uniform in (0, 1) (``noise_level.abar_dist=uniform``, kept
    within [1e-4, 1 - 1e-4]) or drawn from the schedule's training distribution
    (``schedule``); the image is noised in the VP form, and the loss is the MSE between prediction
    and target (``logit(abar)`` or ``abar``), both flattened to [B] so nothing broadcasts. The loss
    of the best constant predictor on the same batch (the targets' variance) is logged beside it as
    ``*/baseline``."""

    def __init__(self, spec: NoiseLevelSpec):
        super().__init__(spec)
        self.target = spec.target
        self.net = spec.network()
        self.schedule = spec.schedule

    @classmethod
    def from_config(cls, c: dict) -> AlphaBarModule:
        return cls(noise_level_spec(c))

    def draw_alpha_bar(self, n: int, device, generator=None) -> Tensor:
        if self.spec.abar_dist == "schedule":
            sigma = self.schedule.sample_training_sigma(n, generator=generator, device=device)
            abar = 1.0 / (1.0 + sigma.double() ** 2)
        else:
            abar = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return abar.clamp(ABAR_EPS, 1 - ABAR_EPS).float()

    def losses(self, x0: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loss, baseline, prediction, true abar) for a batch of clean images."""
        abar = self.draw_alpha_bar(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        a = abar.view(-1, 1, 1, 1)
        x_vp = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = torch.logit(abar) if self.target == "logit" else abar
        pred = self.net(x_vp).float().reshape(-1)
        target = target.reshape(-1)
        loss = (pred - target).pow(2).mean()
        baseline = (target - target.mean()).pow(2).mean()
        return loss, baseline, pred, abar

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        loss, base, _, _ = self.losses(self.data.batch(idx), generator=self.training_generator())
        self.log("train/loss", loss, on_step=True, on_epoch=True,
                 prog_bar=self._loss_on_prog_bar(), batch_size=len(idx))
        self.log("train/baseline", base, on_step=False, on_epoch=True, batch_size=len(idx))
        return loss

    def validation_step(self, idx: Tensor, batch_idx: int) -> None:
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        loss, base, pred, abar = self.losses(self.data.batch(idx), generator=g)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(idx),
                 sync_dist=True)
        self.log("val/baseline", base, on_epoch=True, batch_size=len(idx), sync_dist=True)
        abar_hat = torch.sigmoid(pred) if self.target == "logit" else pred
        self.log("val/abar_mse", (abar_hat - abar).pow(2).mean(), on_epoch=True,
                 batch_size=len(idx), sync_dist=True)

    @torch.no_grad()
    def held_out(self, n: int = 1024, seed: int = 0) -> dict:
        """Held-out errors on validation images with fixed noise: MSE on the model's own target,
        the constant baseline, and the MSE of alpha_bar itself (comparable across targets)."""
        idx = self.data.val_index[:n] if len(self.data.val_index) else self.data.train_index[:n]
        g = torch.Generator(device=self.device).manual_seed(seed)
        was = self.training
        self.eval()
        loss, base, pred, abar = self.losses(self.data.batch(idx), generator=g)
        self.train(was)
        abar_hat = torch.sigmoid(pred) if self.target == "logit" else pred
        logit_hat = pred if self.target == "logit" else torch.logit(pred.clamp(1e-6, 1 - 1e-6))
        return {"target": self.target, "n": len(idx), "mse": float(loss),
                "baseline_mse": float(base), "abar_mse": float((abar_hat - abar).pow(2).mean()),
                "logit_mse": float((logit_hat - torch.logit(abar)).pow(2).mean()),
                "abar": abar.cpu(), "abar_hat": abar_hat.cpu()}

    def on_train_epoch_end(self) -> None:
        if self.run_dir is None or not self.trainer.is_global_zero or self.trainer.fast_dev_run:
            return
        # the last epoch, or the one trainer.max_steps ends (a time budget's step count) early
        last = (self.current_epoch + 1 >= self.trainer.max_epochs
                or 0 <= self.trainer.max_steps <= self.global_step)
        every = self.spec.train.sample_every_n_epochs
        if last or (every and (self.current_epoch + 1) % every == 0):
            from .viz import alpha_bar_scatter, save_figure

            h = self.held_out(n=self.spec.n_scatter)
            tag = "final" if last else f"epoch_{self.current_epoch + 1:03d}"
            path = save_figure(alpha_bar_scatter(h["abar"], h["abar_hat"], self.target),
                               self.run_dir / "samples" / f"noise_level_{tag}.png")
            for lg in self.loggers:
                if hasattr(lg, "log_image"):
                    lg.log_image(key="noise_level", images=[str(path)], step=self.global_step)


def load_noise_level_net(path: str | Path) -> tuple[AlphaBarNet, dict]:
    """The predictor of a ``task=noise_level`` checkpoint and that run's config."""
    ckpt = read_checkpoint(path, setting="objective.noise_level_ckpt", task="noise_level")
    cfg = ckpt["hyper_parameters"]["cfg"]
    module = AlphaBarModule.from_config(cfg)
    module.load_state_dict(ckpt["state_dict"])
    return module.net, cfg


def load_module(path: str | Path, map_location="cpu", *, setting: str = "ckpt",
                changes: dict[str, dict] | None = None) -> DiffusionModule:
    """Rebuild a module from a checkpoint written by training (config from the checkpoint).
    ``changes`` (``{group: {key: value}}``) is laid over that config before the module is built:
    settings that change how it samples, not what was trained (a no_t model's noise-level
    options). A missing, damaged, foreign or wrong-task file raises a one-line
    :class:`CheckpointError` naming ``setting``."""
    ckpt = read_checkpoint(path, setting=setting, task="diffusion")
    cfg = upgrade_config(ckpt["hyper_parameters"]["cfg"])
    if changes:
        cfg = with_changes(cfg, changes)
    try:
        module = DiffusionModule(diffusion_spec(cfg))
        module.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        # torch's load_state_dict error opens with a generic line; the first fault follows
        first = (lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else
                 (lines or [type(e).__name__])[0])[:160]
        raise CheckpointError(f"{setting}={str(path)!r}: its weights do not fit the model its "
                              f"config describes ({first})") from None
    return module.to(map_location) if map_location != "cpu" else module


def describe(module: DiffusionModule) -> str:
    return (f"model {module.spec.model['name']}: {count_parameters(module.net):,} parameters; "
            f"schedule {module.schedule.name}, objective {module.objective.name}")
