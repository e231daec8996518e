"""An LR schedule whose length may be fixed after training has begun (pure torch).

A time-budgeted run (:mod:`diffexp.runs.budget`) learns its length from its own pace; until then
it trains at the schedule's starting values, so nothing it does depends on the length it will
have. The same schedule, given the held steps and the length up front (``optim.hold_steps``,
``trainer.max_steps``), sets the same learning rates and betas at every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["HeldSchedule"]


class HeldSchedule(torch.optim.lr_scheduler.LRScheduler):
    """An LR schedule that holds the optimizer at the starting values of ``make``'s schedule for
    ``hold`` optimizer steps and then runs ``make(total - hold)``. ``hold`` and ``total`` may be
    unknown at the start (a time budget's run): :meth:`commit` fixes them later, and the steps
    taken until then are the held ones.

    ``make(n)`` builds the underlying schedule over ``n`` steps on the same optimizer; building
    it sets the optimizer to the schedule's starting values (as every torch schedule does), which
    is what the held steps use."""

    def __init__(self, optimizer, make: Callable, hold: int | None = None,
                 total: int | None = None):
        # no super().__init__: the underlying schedule is the torch one and does that work
        self.optimizer = optimizer
        self._make = make
        self.k = 0  # optimizer steps taken
        self.hold, self.total = None, None
        self.inner = make(3)  # sets the starting values; replaced once the length is known
        if total is not None:
            self.commit(total, hold or 0)

    @property
    def committed(self) -> bool:
        return self.total is not None

    def commit(self, total: int, hold: int | None = None) -> None:
        """Fix the run's length: ``total`` optimizer steps, of which the first ``hold`` (default:
        those taken so far) hold the starting values."""
        hold = self.k if hold is None else hold
        if total - hold < 1:
            raise ValueError(f"the schedule needs a step after the {hold} held ones "
                             f"(total {total})")
        self.hold, self.total = hold, total
        self.inner = self._make(total - hold)

    def step(self, epoch=None) -> None:  # noqa: ARG002 - torch's signature
        self.k += 1
        if self.committed and self.k > self.hold:
            self.inner.step()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"k": self.k, "hold": self.hold, "total": self.total,
                "inner": self.inner.state_dict() if self.committed else None}

    def load_state_dict(self, state: dict) -> None:
        # building the schedule again resets the optimizer's lr and betas; the optimizer's own
        # restored values are the ones the next step must use
        kept = [{k: g[k] for k in ("lr", "betas", "momentum") if k in g}
                for g in self.optimizer.param_groups]
        self.k = state["k"]
        self.hold, self.total = None, None
        if state["total"] is not None:
            self.commit(state["total"], state["hold"])
            self.inner.load_state_dict(state["inner"])
        for g, values in zip(self.optimizer.param_groups, kept):
            g.update(values)
