"""Preemption-safe training: the per-step noise seed, and stopping on a signal with a checkpoint.

SIGTERM and SIGUSR1 (and, inside a submitit job, submitit's own preemption signal) do not stop
training where they land: the handler only records the signal, and the training loop acts at the
end of the current optimizer step, where the state is whole (after an epoch's last step, once the
epoch's end has run). There :class:`PreemptionGuard` writes ``checkpoints/last.ckpt``
(atomically, through the Trainer's checkpoint IO) and raises :class:`Preempted`, which ends the
process with status 128 + the signal number. Under SLURM
(``SLURM_JOB_ID`` set), SIGUSR1 also requeues the job (``scontrol requeue``); a handler that was
installed before training (submitit's) is called after the checkpoint instead, and requeues.

Lightning's own SLURM auto-requeue is not used: its handler saves from inside the signal handler,
at whatever point the step has reached, into ``hpc_ckpt_*.ckpt``, which a resumed run
(``train.auto_resume`` reads ``last.ckpt``) would not find, and which need not resume exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from .say import say

__all__ = ["Preempted", "PreemptionGuard", "step_seed", "slurm_job_id", "requeue_slurm_job"]

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

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                signum = guard._agreed_signal(trainer)
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

    def _agreed_signal(self, trainer) -> int | None:
        """The signal to stop on, the same on every rank (one small collective per step under
        DDP: a signal may reach one rank only), or None."""
        if trainer.world_size == 1:
            return self.signum
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return None
        return trainer.strategy.broadcast(self.signum) or signal.SIGTERM

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
