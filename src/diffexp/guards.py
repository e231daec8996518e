"""Divergence guard: a training run whose loss becomes NaN or infinite stops with a one-line
error giving the step, and never writes a checkpoint of the diverged weights, so the last good
checkpoint stays intact and loadable.

Reading the loss back to the host every step would stall a GPU's pipeline, so the check keeps
the first bad step on the device and reads it every 100 steps, at each epoch end and before every
checkpoint write: a run stops at most 100 steps after it diverged (the message gives the first bad
step), and no diverged weights are ever saved.
``train.skip_nonfinite=true`` instead drops a batch whose gradients are not finite (no weight
update from it), counts it, and goes on."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from .errors import DiffexpError

__all__ = ["DivergenceGuard", "TrainingDiverged"]


class TrainingDiverged(DiffexpError):
    """The training loss became non-finite."""


class DivergenceGuard(pl.Callback):
    CHECK_EVERY = 100  # steps between host reads of the device-side flag
    def __init__(self, skip_nonfinite: bool = False, last_checkpoint: str | None = None):
        self.skip_nonfinite = skip_nonfinite
        self.last_checkpoint = last_checkpoint  # the file named in the message, if it exists
        self.skipped = 0
        self._first_bad: torch.Tensor | None = None  # step of the first non-finite loss, or -1

    # -- skipping mode: gradients of a non-finite loss never reach the optimizer ----------------
    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if not self.skip_nonfinite:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.norm() for g in grads]).sum()):
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None  # Adam leaves parameters without a gradient untouched
            self.skipped += 1
            module.log("train/skipped_nonfinite", float(self.skipped), on_step=True)

    # -- stopping mode -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.skip_nonfinite:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        step = trainer.global_step  # optimizer steps done, this batch's included
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss)
        self._first_bad = torch.where(bad & (self._first_bad < 0),
                                      torch.full_like(self._first_bad, step), self._first_bad)
        if step % self.CHECK_EVERY == 0:
            self.check(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, module, checkpoint) -> None:
        # called while the checkpoint is assembled, before anything is written
        self.check(trainer)

    def check(self, trainer) -> None:
        if self._first_bad is None or self.skip_nonfinite:
            return
        step = int(self._first_bad)
        if step < 0:
            return
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        lr = f"lr {lrs[0]:.3g}, " if lrs else ""
        last = (f"last good checkpoint {self.last_checkpoint} kept"
                if self.last_checkpoint and Path(self.last_checkpoint).is_file()
                else "no checkpoint written")
        raise TrainingDiverged(
            f"training diverged: non-finite loss at step {step} ({lr}{last}); lower optim.lr, "
            f"keep train.grad_clip > 0, or set train.skip_nonfinite=true to skip such batches")
