"""``train.time_budget_s``: train as many optimizer steps as fit in a wall-clock budget.

The pace is measured on the run itself, not on a separate probe: a probe of a few seconds is at
the mercy of whatever else the machine does in those seconds, and its steps are lost to the run.

* **Hold.** The run starts with no step count. Its LR schedule (one-cycle or cosine) holds the
  optimizer at the schedule's starting values (one-cycle: ``lr / 25`` and beta1 0.95) while the
  run times its own steps: nothing it does yet depends on the run's length.
* **Plan.** Once :data:`PLAN_AT` of the budget has passed, the pace is taken over the steps of
  the later half of that window: slowness that ended before it (another process on the cores at
  the start) does not enter at all, and within it the pace is the larger of the median step time
  and the mean without the slowest step (:func:`robust_pace`), which one slow step does not
  move. On a CPU with more than one torch thread (and ``train.threads`` not given), the held
  steps first alternate between torch's thread count and one thread (runs/threads.py); at
  :data:`CHOOSE_AT` of the budget the run keeps the count that went faster over its latest
  steps (:func:`choose_threads`: under other work on the cores, one thread is steadier and
  faster than several), and plans at :data:`TRIAL_PLAN_AT` from that count's own steps (the
  switching itself costs some 5-15% a step, which the rest of the run does not pay). The
  step count is then the steps taken plus those that fit in what is left of the budget at that
  pace, rounded down to :data:`SIGNIFICANT` significant digits, never more than ``train.epochs``
  epochs. The schedule then runs over the remaining steps exactly as it would over a run of
  that length.
* **Record.** The count ``N`` and the held steps ``K`` go into the run's ``config.yaml``
  (``trainer.max_steps: N``, ``optim.hold_steps: K``, and ``train.threads``,
  ``train.trial_threads``, ``train.trial_steps`` where it chose) and its checkpoints.
  ``trainer.max_steps=N optim.hold_steps=K`` (with the thread settings it printed) trains the
  same weights again
  (the planner draws no random numbers), and a run killed and restarted in its folder continues
  the plan from its last checkpoint: to the planned ``N`` when the plan was made, else still
  holding, with the budget's time already spent counted.

Where the epochs' cap is in sight before :data:`PLAN_AT` of the budget (a budget larger than the
epochs need), the plan is made once a tenth of the capped steps is done, at the cap.

In the budget: everything from the start of the fit, the epoch-end validation and sample grids
included. Not in it: start-up before the fit and the end-of-run evaluation. The budget holds as
well as the pace of the planning window predicts the rest of the run's.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from ..lr_schedule import HeldSchedule
from ..say import say
from .threads import ThreadPlan

__all__ = ["PLAN_AT", "CHOOSE_AT", "TRIAL_PLAN_AT", "SIGNIFICANT", "MIN_PLAN_STEPS", "HeldSchedule",
           "BudgetPlanner", "robust_pace", "choose_threads", "steps_for_budget"]

PLAN_AT = 0.1  # the plan is made when this share of the budget has passed
CHOOSE_AT = 0.1  # with a thread trial: the count is chosen then ...
TRIAL_PLAN_AT = 0.2  # ... and the plan made then, from the chosen count's own steps (at 0.14,
                     # a steadily loaded run planned on the first seconds after the switch,
                     # 14% slower than the rest of it went, and used 83% of its budget)
MIN_PLAN_STEPS = 20  # ... and at least this many steps have been timed in this process (or at
                     # half the budget, whatever has been timed)
SIGNIFICANT = 3  # the step count is rounded down to this many significant digits (under 1%
                 # of it: a round 100 cost a 1,193-step run 8% of its budget)
TRIM = 1  # the slowest timed steps the pace's mean leaves out (one slow moment)
CHOOSE_STEPS = 20  # the latest steps of each thread count that choose between them


def robust_pace(stamps: list[float]) -> float:
    """Seconds per step from the end times ``stamps`` of consecutive steps (seconds since some
    start), over the steps that ended in the later half of the time covered (at least the last
    :data:`MIN_PLAN_STEPS` // 2): the larger of their median and their mean without the slowest
    :data:`TRIM` of them. One slow step moves neither; on a machine whose steps are steadily
    uneven (threads descheduled by other work), where the median is a typical step but the
    run's time is the sum of all, the mean is the one that counts, its slow tail included."""
    if len(stamps) < 2:
        raise ValueError("a pace needs at least two timed steps")
    durations = [b - a for a, b in zip(stamps, stamps[1:])]
    half = stamps[0] + (stamps[-1] - stamps[0]) / 2
    recent = [d for d, end in zip(durations, stamps[1:]) if end >= half]
    least = min(len(durations), MIN_PLAN_STEPS // 2)
    if len(recent) < least:
        recent = durations[-least:]
    return _pace(recent)


def _pace(durations: list[float]) -> float:
    """The larger of the median and the mean without the slowest :data:`TRIM` (robust_pace)."""
    kept = sorted(durations)[:max(1, len(durations) - TRIM)]
    return max(statistics.median(durations), statistics.fmean(kept))


def choose_threads(stamps: list[float], steps: list[int],
                   count: Callable[[int], int]) -> tuple[int, dict[int, float]]:
    """``(thread count, {count: pace})`` for steps that cycled thread counts (runs/threads.py):
    step ``steps[i]`` ended at ``stamps[i]`` and ran with ``count(steps[i])`` threads. The counts
    are compared over the latest :data:`CHOOSE_STEPS` steps of each (slowness that has ended,
    such as a burst of other work at the start, does not choose), each by
    :func:`robust_pace`'s statistic; with under 3 steps of some count (a very slow machine), by
    their means. Ties go to the larger count."""
    if len(stamps) < 2:
        raise ValueError("a choice needs at least two timed steps")
    recent: dict[int, list[float]] = {}
    for a, b, s in reversed(list(zip(stamps, stamps[1:], steps[1:]))):
        kept = recent.setdefault(count(s), [])
        if len(kept) < CHOOSE_STEPS:
            kept.append(b - a)
    if all(len(d) >= 3 for d in recent.values()):
        paces = {n: _pace(d) for n, d in sorted(recent.items(), reverse=True)}
    else:
        paces = {n: statistics.fmean(d) for n, d in sorted(recent.items(), reverse=True)}
    return min(paces, key=paces.get), paces


def steps_for_budget(left_s: float, pace_s: float, done: int, cap: int, least: int) -> int:
    """The run's step count: the ``done`` steps plus those that fit in ``left_s`` seconds at
    ``pace_s`` per step, rounded down to :data:`SIGNIFICANT` significant digits where that
    still leaves ``least`` after ``done``, at most ``cap``, at least ``done + least`` (the
    schedule's minimum after the held steps)."""
    total = done + max(math.floor(left_s / pace_s), 0)
    unit = 10 ** max(len(str(total)) - SIGNIFICANT, 0)
    if total - total % unit >= done + least:
        total -= total % unit
    return max(min(total, cap), min(done + least, max(cap, done + least)))


class BudgetPlanner:
    """The Lightning callback that times a budgeted run's steps and fixes its length once
    (module docstring). ``on_plan(plan)`` is called with the plan when it is made (the run
    writes it into its config.yaml). Its state (time spent, the plan) travels in checkpoints."""

    def __init__(self, budget_s: float, cap: int, least: int, batch_size: int,
                 per_epoch: int, on_plan: Callable[[dict], None] | None = None,
                 threads: ThreadPlan | None = None):
        import pytorch_lightning as pl

        planner = self

        class _Callback(pl.Callback):
            @property
            def state_key(self) -> str:
                return "BudgetPlanner"

            def state_dict(self) -> dict:
                return {"budget_s": planner.budget_s, "spent_s": planner.spent(),
                        "plan": planner.plan, "choice": planner.choice}

            def load_state_dict(self, state: dict) -> None:
                planner.spent_before = float(state["spent_s"])
                planner.plan = state["plan"]
                planner.choice = state.get("choice")

            def on_fit_start(self, trainer, module):
                planner.t0 = time.perf_counter()

            def on_train_start(self, trainer, module):
                if planner.choice is not None and planner.plan is None:  # resumed in between
                    planner.apply_choice(planner.choice)
                if planner.plan is not None:  # resumed after the plan: run it out
                    planner.apply(trainer)
                    if planner.on_plan is not None:  # the run's config.yaml records it again
                        planner.on_plan(planner.plan)
                    say(f"[diffexp] train.time_budget_s={planner.budget_s:g}: the resumed "
                        f"run trains to the planned step {planner.plan['steps']}")

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if planner.plan is None:
                    planner.tick(trainer, module)

        self.budget_s = float(budget_s)
        self.cap, self.least = int(cap), int(least)
        self.batch_size, self.per_epoch = batch_size, per_epoch
        self.on_plan = on_plan
        self.plan: dict | None = None
        self.spent_before = 0.0  # budget seconds spent before this process (a resumed run)
        self.t0 = time.perf_counter()
        self.stamps: list[float] = []  # when each timed optimizer step ended (budget seconds)
        self.steps: list[int] = []  # ... and which step it was
        self.threads = threads  # the run's thread counts per step (runs/threads.py), if any
        self.choice: dict | None = None  # the thread trial's outcome, once chosen
        self._last_step = -1
        self.callback = _Callback()

    def spent(self) -> float:
        return self.spent_before + (time.perf_counter() - self.t0)

    def tick(self, trainer, module) -> None:
        if module.device.type == "cuda":  # the step's kernels, not their launches
            torch.cuda.synchronize(module.device)
        done = trainer.global_step
        if done == self._last_step:  # a batch that accumulated gradients, no optimizer step
            return
        self._last_step = done
        now = self.spent()
        self.stamps.append(now)
        self.steps.append(done - 1)  # the step that just ended
        near_cap = done >= self.cap - self.least
        if self.threads is not None and self.threads.trying:
            due = now >= CHOOSE_AT * self.budget_s or done >= math.ceil(CHOOSE_AT * self.cap)
            counts = {self.threads.count(s) for s in self.steps[1:]}
            late = now >= 0.3 * self.budget_s and len(self.stamps) >= 2
            if (due and len(counts) > 1 and len(self.stamps) > 6) or late or near_cap:
                self.choose(done)
            if not near_cap:
                return
        # the plan's pace: the steps after the trial's end (the first one, the switch, left out)
        first = self.choice["trial_steps"] + 1 if self.choice else None
        stamps = [t for t, s in zip(self.stamps, self.steps) if first is None or s >= first]
        timed = len(stamps) - 1
        plan_at = TRIAL_PLAN_AT if self.choice else PLAN_AT
        due = now >= plan_at * self.budget_s or done >= math.ceil(plan_at * self.cap)
        # so slow a machine that MIN_PLAN_STEPS take half the budget: plan with what there is
        late = now >= 0.5 * self.budget_s and timed >= 2
        if (timed >= MIN_PLAN_STEPS and due) or late or near_cap:
            self.make_plan(trainer, now, done, stamps)

    def choose(self, done: int) -> None:
        """End the thread trial at step ``done``: keep the faster count from here on."""
        if len(self.stamps) >= 2:
            chosen, paces = choose_threads(self.stamps, self.steps, self.threads.count)
        else:
            chosen, paces = self.threads.count(max(done - 1, 0)), {}
        self.choice = {"threads": chosen, "trial_steps": done,
                       "pace_by_threads": {n: round(p, 5) for n, p in paces.items()}}
        self.threads.trial_steps, self.threads.threads = done, chosen
        tried = ", ".join(f"{n} thread{'s' * (n > 1)} {p:.4f} s" for n, p in paces.items())
        say(f"[diffexp] train.time_budget_s={self.budget_s:g}: the first {done} steps tried "
            f"thread counts ({tried} per step); the run goes on with {chosen}")

    def make_plan(self, trainer, now: float, done: int, stamps: list[float]) -> None:
        if len(stamps) >= 2:
            pace = robust_pace(stamps)
        else:
            pace = now / max(done, 1)
        steps = steps_for_budget(self.budget_s - now, pace, done, self.cap, self.least)
        capped = " (train.epochs caps it)" if steps == self.cap else ""
        self.plan = {"budget_s": self.budget_s, "steps": steps, "hold_steps": done,
                     "pace_s_per_step": round(pace, 5), "planned_at_s": round(now, 2),
                     "source": "run", **(self.choice or {})}
        self.apply(trainer)
        replay = f"trainer.max_steps={steps} optim.hold_steps={done}"
        which = ""
        if self.choice:
            c = self.choice
            which = f" with {c['threads']} thread{'s' * (c['threads'] > 1)}"
            trial = ",".join(str(n) for n in self.threads.trial_threads)
            replay += (f" train.threads={c['threads']} train.trial_threads=[{trial}] "
                       f"train.trial_steps={c['trial_steps']}")
        say(f"[diffexp] train.time_budget_s={self.budget_s:g}: {pace:.4f} s per step{which} "
            f"(the run's steps after {stamps[0] if stamps else 0:.0f} s, at {now:.0f} s); "
            f"{steps} steps, {steps * self.batch_size:,} images, "
            f"{steps / self.per_epoch:.2f} epochs{capped}, the first {done} at the LR "
            f"schedule's starting values. The same run again: {replay}")
        if self.on_plan is not None:
            self.on_plan(self.plan)

    def apply_choice(self, record: dict) -> None:
        """The thread trial's end and the chosen count, from a plan or a choice."""
        if self.threads is not None and "threads" in record:
            self.threads.trial_steps = record["trial_steps"]
            self.threads.threads = record["threads"]

    def apply(self, trainer) -> None:
        """Make the trainer stop at the planned step, the LR schedule span it and the thread
        count after the hold be the chosen one."""
        trainer.fit_loop.epoch_loop.max_steps = self.plan["steps"]
        self.apply_choice(self.plan)
        for config in trainer.lr_scheduler_configs:
            s = config.scheduler
            if isinstance(s, HeldSchedule) and not s.committed:
                s.commit(self.plan["steps"], self.plan["hold_steps"])
