"""``train.threads``, ``train.trial_threads`` and ``train.trial_steps``: torch's CPU thread count,
step by step.

On a machine that other work shares, more threads are not always faster: a parallel region waits
for its slowest thread, and a thread the scheduler gave to another process stalls the step
(docs/PERFORMANCE.md, "Threads on a shared 2-core machine": with one other busy process, two
threads ran 4.7x slower than one). Which count is faster depends on the load of the moment, so a
time-budgeted CPU run tries them on its own first steps:

* Steps ``0 .. trial_steps - 1`` cycle through ``train.trial_threads``, one step each, by step
  number (step ``s`` uses ``trial_threads[s % len(trial_threads)]``): neighbouring steps see the
  same load, so the counts are compared under it even when a step takes seconds.
* From step ``trial_steps`` on, the run uses ``train.threads`` (null: torch's own count).

A budgeted CPU run with more than one torch thread and no thread setting given cycles between
torch's count and one thread, keeps the faster (runs/budget.py) and records all three settings,
so ``trainer.max_steps=N optim.hold_steps=K train.threads=T train.trial_threads=[..]
train.trial_steps=S`` sets the same thread count at every step and trains the same bits
(threads change a float sum's order, hence the bits).
"""

from __future__ import annotations

import torch

__all__ = ["ThreadPlan", "threads_for_step"]


def threads_for_step(step: int, trial_steps: int | None, trial_threads: list[int] | None,
                     threads: int | None) -> int | None:
    """The thread count of optimizer step ``step`` (0-based); None: torch's own.
    ``trial_steps`` None: the trial has not ended (a budget's run before its choice)."""
    if trial_threads and (trial_steps is None or step < trial_steps):
        return int(trial_threads[step % len(trial_threads)])
    return threads


class ThreadPlan:
    """The Lightning callback that sets torch's thread count before each training batch
    (module docstring). ``trial_steps`` and ``threads`` may be set while the run goes (a
    budget's choice fixes them)."""

    def __init__(self, trial_steps: int | None, trial_threads: list[int] | None,
                 threads: int | None):
        import pytorch_lightning as pl

        self.trial_steps, self.trial_threads, self.threads = trial_steps, trial_threads, threads
        self.default = torch.get_num_threads()
        plan = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                plan.set(trainer.global_step)

            def on_train_end(self, trainer, module):  # what follows (evaluation) keeps it
                plan.set(trainer.global_step)

        self.callback = _Callback()

    @property
    def trying(self) -> bool:
        """The trial is under way and its end is not fixed (a budget's run chooses it)."""
        return self.trial_steps is None and len(set(self.trial_threads or ())) > 1

    def count(self, step: int) -> int:
        n = threads_for_step(step, self.trial_steps, self.trial_threads, self.threads)
        return self.default if n is None else n

    def set(self, step: int) -> None:
        n = self.count(step)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
