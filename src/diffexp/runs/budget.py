"""``train.time_budget_s``: train as many optimizer steps as fit in a wall-clock budget.

The step count is decided *before* training, from a measured pace, so the run itself is an
ordinary fixed-length run: its LR schedule knows its length from the first step, a resumed run
continues the same schedule, and ``trainer.max_steps=N`` trains exactly the same steps again.

The pace comes from a probe: a short ``Trainer.fit`` of a copy of the run's module (same network,
data, batch size, precision, optimizer and EMA; no logger, checkpoints, validation or sample
grids) on this machine. After :data:`PROBE_WARMUP` steps (allocator and oneDNN warm-up) it times
:data:`PROBE_STEPS` steps; the run then trains ``(budget - probe time) / pace`` steps rounded down
to a multiple of :data:`ROUND_TO` (so that small jitter in the pace gives the same count on the
same machine), and never more than ``train.epochs`` epochs. The probe runs with the random streams
saved and restored, so the run draws exactly what it would draw without it.

The budget holds only as well as the probe's pace predicts the run's: on a shared 2-core machine
the pace drifts by 10-20% over minutes (docs/TUNING.md, "Fifth round"), so leave a margin. Not in
the budget: validation and sample grids at epoch ends, and the end-of-run evaluation.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch

from ..config import ConfigError

PROBE_WARMUP = 10  # steps before the clock starts
PROBE_STEPS = 60  # steps timed
ROUND_TO = 100  # the step count is rounded down to a multiple of this (when it is larger)


def measure_pace(spec, data, *, accelerator: str, precision: str, deterministic: bool) -> float:
    """Seconds per optimizer step of the real training loop for ``spec`` on ``data``."""
    import pytorch_lightning as pl

    from ..module import DiffusionModule

    stamps: list[float] = []

    class _Clock(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)
            stamps.append(time.perf_counter())

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            module = DiffusionModule(spec)
            module.attach_data(data, None)  # no run folder: no sample grids
            trainer = pl.Trainer(
                max_steps=PROBE_WARMUP + PROBE_STEPS, max_epochs=-1, accelerator=accelerator,
                devices=1, precision=precision, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                num_sanity_val_steps=0, callbacks=[_Clock()], deterministic=deterministic)
            trainer.fit(module)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    timed = stamps[PROBE_WARMUP - 1:]
    if len(timed) < 2:
        raise RuntimeError(f"the pace probe ran {len(stamps)} steps, fewer than "
                           f"{PROBE_WARMUP + 1}: too few training images for a probe")
    return (timed[-1] - timed[0]) / (len(timed) - 1)


def steps_for_budget(budget_s: float, pace_s: float, steps_per_epoch: int, epochs: int,
                     onecycle: bool, setting_budget: float | None = None) -> int:
    """The optimizer steps a run trains in ``budget_s`` at ``pace_s`` seconds per step: rounded
    down to a multiple of :data:`ROUND_TO` where that leaves any, capped at ``epochs`` epochs.
    ``setting_budget``: the ``train.time_budget_s`` the error message names (default
    ``budget_s``)."""
    fit = max(math.floor(budget_s / pace_s), 0)
    shown = budget_s if setting_budget is None else setting_budget
    steps = fit - fit % ROUND_TO if fit >= ROUND_TO else fit
    steps = min(steps, steps_per_epoch * epochs)
    if steps < (3 if onecycle else 1):
        raise ConfigError(f"train.time_budget_s={shown:g} fits {fit} optimizer step(s) at the "
                          f"measured {pace_s:.3g} s per step"
                          + ("; optim.lr_schedule=onecycle needs at least 3" if onecycle else "")
                          + ": raise it")
    return steps
