"""Preemption-safe training: the per-step noise seed, and stopping on a signal with a checkpoint.

SIGTERM and SIGUSR1 (and, inside a submitit job, submitit's own preemption signal) do not stop
training where they land: the handler only records the signal, and the training loop acts at the
end of the current optimizer step, where the state is whole (after an epoch's last step, once the
epoch's end has run). There :class:`PreemptionGuard` writes ``checkpoints/last.ckpt``
(atomically, through the Trainer's checkpoint IO) and raises :class:`Preempted`, which ends the
process with status 128 + the signal number. Under SLURM
(``SLURM_JOB_ID`` set), SIGUSR1 also requeues the job (``scontrol requeue``); a handler that was
installed before training (submitit's) is called after the checkpoint instead, and requeues.

In a run of several processes (DDP) a signal may reach one rank only, so the ranks agree on it
with one small all-reduce: not on every step (a collective and a host read per step would drain a
GPU's queue) but on the steps of a :class:`StepCadence` (about one a second, at most every 100
steps) and at each epoch's start and end. There the signal is acted on at the end of the first
agreed step after it came.

Lightning's own SLURM auto-requeue is not used: its handler saves from inside the signal handler,
at whatever point the step has reached, into ``hpc_ckpt_*.ckpt``, which a resumed run
(``train.auto_resume`` reads ``last.ckpt``) would not find, and which need not resume exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .say import say

__all__ = ["Preempted", "PreemptionGuard", "StepCadence", "step_seed", "slurm_job_id",
           "requeue_slurm_job"]

_MASK64 = (1 << 64) - 1


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for optimizer step ``step`` of process ``rank`` of a run seeded ``seed``
    (splitmix64's finaliser over a mix of the three: neighbouring steps and seeds get unrelated
    seeds, not neighbouring ones)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(rank) * 0xD1B54A32D192ED03 + int(step)) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


def after_epochs_last_step(trainer) -> bool:
    """True in ``on_train_batch_end`` of an epoch's last step, before the epoch's end (validation,
    sample grid, epoch checkpoint) has run. A checkpoint taken here is not one to resume from:
    Lightning resumes it as a finished epoch, so that epoch's end would be skipped and the epoch
    counter would run one ahead. The epoch-end checkpoint, written right after, is the one."""
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def needs_agreement(trainer) -> bool:
    """Whether the ranks must agree on a decision with a collective (a run of several processes);
    a single process decides alone, every step, for free."""
    return trainer.world_size > 1


def agree_max(trainer, values: list[int]) -> list[int]:
    """The element-wise maximum of ``values`` over all ranks: one all-reduce of a few integers
    and one read of its result (every rank must call it at the same point)."""
    import torch

    t = torch.tensor(values, dtype=torch.long, device=trainer.strategy.root_device)
    return [int(v) for v in trainer.strategy.reduce(t, reduce_op="max").tolist()]


class StepCadence:
    """The optimizer steps at which the ranks of a DDP run agree on something (a signal, whether
    a time-based checkpoint is due): one all-reduce there, none on the steps between, so that a
    GPU's queue is not drained by a host read and a collective on every step.

    The gap to the next agreed step is agreed with it: each rank proposes as many steps as took
    about ``SECONDS`` since the last agreed step (at least 1, at most ``MAX_STEPS``), and the
    smallest proposal wins. Every rank then holds the same next step, so the ranks always call
    the collective together."""

    SECONDS = 1.0
    MAX_STEPS = 100

    def __init__(self):
        self.next_step = 1
        self._t = time.monotonic()
        self._step = 0

    def start(self, step: int) -> None:
        """At the start of training (``trainer.global_step``, the same on every rank)."""
        self.next_step, self._t, self._step = step + 1, time.monotonic(), step

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def agree(self, trainer, values: list[int]) -> list[int]:
        """At a due step: :func:`agree_max` of ``values``, and the next agreed step fixed."""
        step, now = trainer.global_step, time.monotonic()
        per_step = (now - self._t) / max(1, step - self._step)
        propose = self.MAX_STEPS if per_step <= 0 else int(self.SECONDS / per_step)
        propose = max(1, min(self.MAX_STEPS, propose))
        *out, neg_gap = agree_max(trainer, [*values, -propose])
        self.next_step, self._t, self._step = step - neg_gap, now, step
        return out


class Preempted(SystemExit):
    """Training stopped on a signal (after writing last.ckpt when it stopped mid-training); exits
    with status 128 + the signal number, as a shell reports a process ended by that signal. A
    SystemExit, so a multirun stops instead of going on with its next job."""

    def __init__(self, signum: int):
        super().__init__(128 + int(signum))
        self.signum = int(signum)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (``ARRAYJOB_TASK`` for an array task)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def requeue_slurm_job(job_id: str) -> bool:
    try:
        r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"[diffexp] could not requeue SLURM job {job_id}: {e}", stderr=True)
        return False
    if r.returncode != 0:
        say(f"[diffexp] scontrol requeue {job_id} failed ({r.returncode}): "
            f"{(r.stderr or r.stdout).strip()}", stderr=True)
        return False
    say(f"[diffexp] requeued SLURM job {job_id}", stderr=True)
    return True


def _submitit_signal() -> int | None:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)


def _python_handler(h) -> bool:
    """A handler someone installed in Python (submitit's), not a default or ignore."""
    return callable(h) and h is not signal.default_int_handler


class PreemptionGuard:
    """Signal handling for one ``Trainer.fit`` and what follows it in the same job.

    :meth:`install` before ``fit``, :meth:`restore` after; ``callback`` goes to the Trainer. A
    signal during the training loop is acted on at the end of the step (checkpoint, then
    :class:`Preempted`); one outside it (data loading, the final evaluation) raises
    :class:`Preempted` at once, as there is no training state to save beyond the last checkpoint."""

    def __init__(self, last_ckpt: str | Path):
        import pytorch_lightning as pl

        self.last = Path(last_ckpt)
        self.signum: int | None = None
        self.in_loop = False
        self.acting = False  # stopping already: later signals (scontrol's SIGTERM) are ignored
        self.rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")) or 0)
        self._previous: dict[int, object] = {}
        self.cadence = StepCadence()
        guard = self

        class _CB(pl.Callback):
            def on_train_start(cb, trainer, module):
                guard.rank = trainer.global_rank
                # Lightning has just put its own SIGTERM handler in place, which would stop the
                # run at the next loop check without a checkpoint (and with status 0): ours
                # replaces it for the training loop; Lightning's teardown restores the handlers
                # of before fit, which are ours again (install).
                guard._register()
                guard.in_loop = True
                guard.cadence.start(trainer.global_step)

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                signum = guard._agreed_signal(trainer, every_step=False)
                if signum is None:
                    return
                trainer.save_checkpoint(guard.last)
                if after_epochs_last_step(trainer):
                    # the epoch's end runs first and saves again (on_train_epoch_end below);
                    # this save only covers a kill meanwhile
                    return
                guard._stop(trainer, signum)

            def on_train_epoch_end(cb, trainer, module):
                if guard._agreed_signal(trainer) is not None:
                    # the state Lightning's own epoch-end checkpoints have, and resume from
                    trainer.save_checkpoint(guard.last)

            def on_train_epoch_start(cb, trainer, module):
                # the previous epoch has ended and is saved (a checkpoint taken here would not
                # resume: Lightning then takes the new epoch for finished)
                signum = guard._agreed_signal(trainer)
                if signum is not None:
                    guard._stop(trainer, signum)

            def on_train_end(cb, trainer, module):
                guard.in_loop = False

            def on_exception(cb, trainer, module, exception):
                guard.in_loop = False

        self.callback = _CB()

    def _agreed_signal(self, trainer, every_step: bool = True) -> int | None:
        """The signal to stop on, the same on every rank, or None. A single process reads its
        own flag. Under DDP a signal may reach one rank only, so the ranks agree on it with one
        small all-reduce: at an epoch's start and end, and after steps on the guard's
        :class:`StepCadence` only (``every_step=False``; None on the steps between)."""
        if not needs_agreement(trainer):
            return self.signum
        local = [int(self.signum or 0)]
        if every_step:
            agreed = agree_max(trainer, local)[0]
        elif self.cadence.due(trainer.global_step):
            agreed = self.cadence.agree(trainer, local)[0]
        else:
            return None
        return agreed or None

    def _stop(self, trainer, signum: int) -> None:
        self.acting = True
        if trainer.is_global_zero:
            say(f"[diffexp] {signal.Signals(signum).name}: stopping at step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}), saved in {self.last}",
                stderr=True)
        raise Preempted(signum)

    # ------------------------------------------------------------------ handlers
    def signals(self) -> list[int]:
        sigs = [signal.SIGTERM, signal.SIGUSR1]
        sub = _submitit_signal()
        # inside a submitit job its preemption signal (USR2 by default) has submitit's handler:
        # ours goes in front, so the checkpoint is written before submitit requeues and exits
        if sub is not None and sub not in sigs and _python_handler(signal.getsignal(sub)):
            sigs.append(sub)
        return sigs

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (a launcher running jobs in threads)
        for s in self.signals():
            self._previous[s] = signal.getsignal(s)
        self._register()

    def _register(self) -> None:
        for s in self._previous:
            signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        # runs between two bytecodes of the main thread: record, nothing more (no printing: the
        # signal may have interrupted a write to the same stream)
        if self.acting:
            return
        if self.signum is None:
            self.signum = signum
        if not self.in_loop:
            self.acting = True
            raise Preempted(signum)

    # ------------------------------------------------------------------ after stopping
    def finish(self, signum: int) -> None:
        """After the checkpoint: hand over to a handler installed before ours (submitit's
        checkpoint-and-requeue, which exits itself), or requeue a SLURM job on SIGUSR1."""
        self.acting = True
        previous = self._previous.get(signum)
        if _python_handler(previous):
            previous(signum, None)
        elif signum == signal.SIGUSR1 and self.rank == 0 and (job := slurm_job_id()):
            requeue_slurm_job(job)
