"""``train.threads`` and ``train.hold_threads``: torch's CPU thread count, step by step.

On a machine that other work shares, more threads are not always faster: a parallel region waits
for its slowest thread, and a thread the scheduler gave to another process stalls the step
(docs/PERFORMANCE.md, "Threads on a shared 2-core machine": with one other busy process, two
threads ran 4.7x slower than one). Which count is faster depends on the load of the moment, so a
time-budgeted CPU run measures it on its own held steps:

* While the LR schedule holds (``optim.hold_steps``, or a budget's run before its plan), the
  steps cycle through ``train.hold_threads`` one step each, by step number (step ``s`` uses
  ``hold_threads[s % len(hold_threads)]``): neighbouring steps see the same load, so the
  counts are compared under it even when a step takes seconds.
* From the first step after the hold, the run uses ``train.threads`` (null: torch's own count).

A budgeted CPU run with more than one torch thread and neither setting given cycles between
torch's count and one thread, and at its plan keeps the faster (runs/budget.py); it records both
settings, so ``trainer.max_steps=N optim.hold_steps=K train.threads=T train.hold_threads=[..]``
sets the same thread count at every step and trains the same bits (threads change a float
sum's order, hence the bits).
"""

from __future__ import annotations

import torch

__all__ = ["ThreadPlan", "threads_for_step"]


def threads_for_step(step: int, hold: int | None, hold_threads: list[int] | None,
                     threads: int | None) -> int | None:
    """The thread count of optimizer step ``step`` (0-based); None: leave torch's as it is.
    ``hold`` None: the run still holds (a budget's run before its plan)."""
    held = hold is None or step < hold
    if held and hold_threads:
        return int(hold_threads[step % len(hold_threads)])
    return threads


class ThreadPlan:
    """The Lightning callback that sets torch's thread count before each training batch
    (module docstring). ``hold`` and ``threads`` may be changed while the run goes (a budget's
    plan fixes them)."""

    def __init__(self, hold: int | None, hold_threads: list[int] | None, threads: int | None):
        import pytorch_lightning as pl

        self.hold, self.hold_threads, self.threads = hold, hold_threads, threads
        self.default = torch.get_num_threads()
        plan = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                plan.set(trainer.global_step)

            def on_train_end(self, trainer, module):  # what follows (evaluation) keeps it
                plan.set(trainer.global_step)

        self.callback = _Callback()

    def count(self, step: int) -> int:
        n = threads_for_step(step, self.hold, self.hold_threads, self.threads)
        return self.default if n is None else n

    def set(self, step: int) -> None:
        n = self.count(step)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
