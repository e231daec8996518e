"""Preemption-safe training: mid-epoch checkpoints, exact resume after SIGKILL / SIGTERM, SLURM
requeue on SIGUSR1. "Exact" means bitwise: the same global step, and the same net, EMA, optimizer
and LR-schedule state as one uninterrupted run with the same seed.

Every run here uses one CPU thread (the training processes started from the command line too):
CPU kernels split their sums by thread count, so bitwise comparisons hold between runs with the
same count, and on a shared 2-core machine one thread is also many times faster."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from diffexp.config import ConfigError, validate_train_config
from diffexp.module import IndexBatches
from diffexp.preemption import Preempted, slurm_job_id, step_seed
from diffexp.runs.train import train

from .helpers import REPO, TINY_MODEL, compose_train, train_config

STEPS_PER_EPOCH, EPOCHS = 4, 2  # 32 training images (48 - 16 held out) in batches of 8
ARGS = ["data=synthetic", "data.subset=48", "data.val_size=16", "train.batch_size=8",
        f"train.epochs={EPOCHS}", "train.sample_every_n_epochs=0", "train.n_sample_images=2",
        "sampler.steps=1", "train.eval_at_end=false", "train.checkpoint_every_minutes=null",
        "trainer.limit_val_batches=1", "logger=none", "callbacks.checkpoints.every_k_epochs=1",
        *TINY_MODEL]
TOTAL = STEPS_PER_EPOCH * EPOCHS


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest.py


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys() and any(k.startswith("ema.") for k in sa)
    for k in sa:  # net.* and ema.* (shadow weights and update count)
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread_module):
    """The uninterrupted run every interrupted one is compared with."""
    run = tmp_path_factory.mktemp("reference") / "run"
    s = train(train_config(*ARGS), run)
    assert s["global_step"] == TOTAL
    ck = _load(run / "checkpoints" / "last.ckpt")
    assert int(ck["state_dict"]["ema.num_updates"]) == TOTAL
    return ck


class SendSignal(pl.Callback):
    """Sends ``sig`` to this process as the step ``at`` begins (the handler then runs at once,
    in the middle of the training loop)."""

    def __init__(self, sig, at: int):
        self.sig, self.at = sig, at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.sig)


def _fake_scontrol(tmp_path, monkeypatch) -> Path:
    """``scontrol`` on PATH that records its arguments, one call per line."""
    bindir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bindir.mkdir()
    exe = bindir / "scontrol"
    exe.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    return log


# where the signal lands: the step it arrives in, the step and train-loader position that
# last.ckpt then holds, and the epoch-end files already written
SIGTERM_CASES = {
    "mid-epoch": (STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 2, {"epoch": 1, "served": 2}, []),
    # in an epoch's last step: the epoch's end (validation, epoch checkpoint) runs, then it stops
    "last-step-of-epoch": (STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH,
                           {"epoch": 0, "served": STEPS_PER_EPOCH}, ["checkpoints/epoch000.ckpt"]),
    "last-step-of-run": (TOTAL - 1, TOTAL, {"epoch": 1, "served": STEPS_PER_EPOCH},
                         ["checkpoints/epoch001.ckpt", "samples/final.png"]),
}


@pytest.mark.parametrize("case", list(SIGTERM_CASES))
def test_sigterm_writes_checkpoint_exits_nonzero_and_resumes_bitwise(case, tmp_path, monkeypatch,
                                                                     reference):
    at, saved_step, loader, written = SIGTERM_CASES[case]
    # under SLURM too, SIGTERM (scancel, or the end of the grace time) stops without a requeue
    log = _fake_scontrol(tmp_path, monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(Preempted) as e:
        train(train_config(*ARGS), run, callbacks=[SendSignal(signal.SIGTERM, at)])
    assert e.value.code == 128 + signal.SIGTERM
    ck = _load(run / "checkpoints" / "last.ckpt")
    # the step under way when the signal came was finished, then saved
    assert ck["global_step"] == saved_step
    assert ck["diffexp_train_loader"] == loader
    assert all((run / f).is_file() for f in written)
    assert not (run / "summary.json").exists()
    assert not log.exists()
    s = train(train_config(*ARGS), run)  # train.auto_resume picks up last.ckpt
    assert s["global_step"] == TOTAL
    _assert_same_training_state(_load(run / "checkpoints" / "last.ckpt"), reference)
    assert (run / "samples" / "final.png").is_file() and (run / "summary.json").is_file()


def test_kill_during_the_last_epochs_end_resumes_bitwise_and_runs_that_end(tmp_path, reference):
    """A kill after the run's last step but before its epoch end has saved (validation, epoch
    checkpoint, final grid) must leave a last.ckpt that resumes into that epoch end: one taken
    right after the last step would be resumed by Lightning as a finished epoch (its end skipped,
    the epoch counter one ahead). Rebuilt here as the files such a kill leaves behind."""

    class Snapshot(pl.Callback):  # runs before the checkpoint callbacks' own epoch-end saves
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == EPOCHS - 1:
                last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
                (last.parent / "at-kill.ckpt").write_bytes(last.read_bytes())

    run = tmp_path / "run"
    train(train_config(*ARGS, "train.checkpoint_every_n_steps=1"), run, callbacks=[Snapshot()])
    ckpts = run / "checkpoints"
    (ckpts / "at-kill.ckpt").replace(ckpts / "last.ckpt")
    for f in ("checkpoints/epoch001.ckpt", "samples/final.png", "summary.json"):
        (run / f).unlink()
    assert _load(ckpts / "last.ckpt")["global_step"] == TOTAL - 1
    s = train(train_config(*ARGS, "train.checkpoint_every_n_steps=1"), run)
    assert s["global_step"] == TOTAL
    _assert_same_training_state(_load(ckpts / "last.ckpt"), reference)
    assert (ckpts / "epoch001.ckpt").is_file() and (run / "samples" / "final.png").is_file()


def test_slurm_sigusr1_checkpoints_and_requeues(tmp_path, monkeypatch):
    log = _fake_scontrol(tmp_path, monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(Preempted) as e:
        train(train_config(*ARGS, "train.epochs=1"), run, callbacks=[SendSignal(signal.SIGUSR1, 1)])
    assert e.value.code == 128 + signal.SIGUSR1
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert log.read_text().splitlines() == ["requeue 4242"]


def test_slurm_job_id_of_an_array_task(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert slurm_job_id() == "77"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "70_3"  # the array task, not the job id it runs under


def test_mid_epoch_checkpoint_at_the_step_interval(tmp_path):
    class LastStep(pl.Callback):  # what last.ckpt holds as each step begins
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            p = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            self.seen.append(_load(p)["global_step"] if p.exists() else None)

    every = 3
    seen = LastStep()
    train(train_config(*ARGS, f"train.checkpoint_every_n_steps={every}"), tmp_path / "run",
          callbacks=[seen])
    # every 3 steps mid-epoch, and at each epoch's end (step 4)
    expected = []
    for s in range(TOTAL):
        saved = [k for k in range(1, s + 1) if k % every == 0 or k % STEPS_PER_EPOCH == 0]
        expected.append(max(saved) if saved else None)
    assert seen.seen == expected == [None, None, None, 3, 4, 4, 6, 6]
    assert not list((tmp_path / "run" / "checkpoints").glob("last-v*.ckpt"))

    # the time interval: a tiny one saves after every step
    seen = LastStep()
    train(train_config(*ARGS, "train.epochs=1", "train.checkpoint_every_minutes=0.0001"),
          tmp_path / "run2", callbacks=[seen])
    assert seen.seen == [None, 1, 2, 3]


class CountCollectives:
    """Records every collective a Trainer's strategy is asked for during training, but those of
    a checkpoint write: which hook asked for it and the step then."""

    METHODS = ("reduce", "broadcast", "reduce_boolean_decision", "barrier", "all_gather")

    def __init__(self, monkeypatch):
        from pytorch_lightning.strategies import SingleDeviceStrategy

        self.calls = []
        for name in self.METHODS:
            real = getattr(SingleDeviceStrategy, name)

            def wrapped(strategy, *a, _real=real, _name=name, **kw):
                trainer = strategy.lightning_module.trainer
                if trainer.training and not trainer.sanity_checking:
                    f, hook = sys._getframe(1), None
                    while f is not None and hook is None:
                        if f.f_code.co_name == "save_checkpoint":
                            hook = "save"
                        elif f.f_code.co_name.startswith("on_train_"):
                            hook = f.f_code.co_name
                        f = f.f_back
                    if hook != "save":
                        self.calls.append((hook, trainer.global_step, _name))
                return _real(strategy, *a, **kw)

            monkeypatch.setattr(SingleDeviceStrategy, name, wrapped)

    def at_batch_end(self):
        return [(step, name) for hook, step, name in self.calls if hook == "on_train_batch_end"]


def test_no_collective_per_step_in_a_single_process(tmp_path, monkeypatch):
    # the time interval too: Lightning's own check broadcasts its decision on every step
    count = CountCollectives(monkeypatch)
    train(train_config(*ARGS, "train.checkpoint_every_minutes=10"), tmp_path / "run")
    assert count.at_batch_end() == []


def test_ranks_agree_on_a_cadence_not_on_every_step(tmp_path, monkeypatch, reference):
    """The code path of a DDP run, in one process: the preemption guard and the time-based
    checkpoint agree with one all-reduce on the steps of a StepCadence (here every 3 steps), not
    on every step, and a signal is still acted on (at the next agreed step) and resumes
    bitwise."""
    import diffexp.preemption as preemption

    monkeypatch.setattr(preemption, "needs_agreement", lambda trainer: True)
    monkeypatch.setattr(preemption.StepCadence, "MAX_STEPS", 3)
    monkeypatch.setattr(preemption.StepCadence, "SECONDS", 1e9)
    count = CountCollectives(monkeypatch)
    cfg = ("train.checkpoint_every_minutes=0.0001",)
    train(train_config(*ARGS, *cfg), tmp_path / "full")
    # the guard: steps 1, 4, 7 (then 10 > 8); the checkpoint: 1, then 4 is an epoch's last
    # step (the epoch-end checkpoint saves there), so 5 (then 8 is the run's last)
    assert count.at_batch_end() == [(1, "reduce"), (1, "reduce"), (4, "reduce"), (5, "reduce"),
                                    (7, "reduce")]
    # besides: once per epoch at its start and end, and Lightning's setup before the first step
    hooks = [(hook, step) for hook, step, _ in count.calls if hook != "on_train_batch_end"]
    assert [h for h in hooks if h[0] is not None] == [
        ("on_train_epoch_start", 0), ("on_train_epoch_end", 4), ("on_train_epoch_start", 4),
        ("on_train_epoch_end", 8)]
    assert all(step == 0 for hook, step in hooks if hook is None)
    ck = _load(tmp_path / "full" / "checkpoints" / "last.ckpt")
    _assert_same_training_state(ck, reference)

    # SIGTERM as step 6 begins: step 6 is not agreed on, step 7 is; saved there, and resumed
    run = tmp_path / "run"
    with pytest.raises(Preempted) as e:
        train(train_config(*ARGS, *cfg), run, callbacks=[SendSignal(signal.SIGTERM, 5)])
    assert e.value.code == 128 + signal.SIGTERM
    ck = _load(run / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 7 and ck["diffexp_train_loader"] == {"epoch": 1, "served": 3}
    assert train(train_config(*ARGS, *cfg), run)["global_step"] == TOTAL
    _assert_same_training_state(_load(run / "checkpoints" / "last.ckpt"), reference)


@pytest.mark.parametrize("key", ["checkpoint_every_minutes", "checkpoint_every_n_steps"])
def test_checkpoint_interval_keys_are_validated(key):
    for bad in ("-1", "abc"):
        with pytest.raises(ConfigError) as e:
            validate_train_config(compose_train([f"train.{key}={bad}"]))
        assert f"train.{key}" in str(e.value) and "\n" not in str(e.value)
    for ok in ("null", "0", "5"):
        validate_train_config(compose_train([f"train.{key}={ok}"]))
    c = validate_train_config(compose_train([]))
    assert c["train"]["checkpoint_every_minutes"] == 10  # on by default
    assert c["train"]["checkpoint_every_n_steps"] is None


def test_index_batches_resume_at_the_next_batch():
    idx = torch.arange(40)
    full = IndexBatches(idx, 8, seed=5)
    full.epoch = 2
    want = [b.tolist() for b in full]
    it = IndexBatches(idx, 8, seed=5)
    it.epoch = 2
    first = iter(it)
    got = [next(first).tolist() for _ in range(3)]
    state = it.state_dict()
    assert state == {"epoch": 2, "served": 3}
    resumed = IndexBatches(idx, 8, seed=5)
    resumed.load_state_dict(state)
    assert got + [b.tolist() for b in resumed] == want
    assert [b.tolist() for b in resumed] == want  # the skip applies once
    # a position saved after an epoch's last batch continues with the next epoch
    end = IndexBatches(idx, 8, seed=5)
    end.load_state_dict({"epoch": 2, "served": 5})
    nxt = IndexBatches(idx, 8, seed=5)
    nxt.epoch = 3
    assert [b.tolist() for b in end] == [b.tolist() for b in nxt] and end.epoch == 3


def test_step_seed_separates_steps_ranks_and_seeds():
    seeds = {step_seed(s, r, t) for s in range(3) for r in range(2) for t in range(100)}
    assert len(seeds) == 600 and all(0 <= x < 2 ** 63 for x in seeds)
    assert step_seed(0, 0, 5) == step_seed(0, 0, 5)


def _ckpt_step(path: Path):
    try:
        return _load(path)["global_step"]
    except Exception:  # noqa: BLE001 - not there yet
        return None


def _run_cli(cwd, *extra):
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *ARGS, "hydra.run.dir=run",
                             *extra], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_step(p, last: Path, step: int, deadline: float) -> bool:
    while (_ckpt_step(last) or 0) < step:
        if p.poll() is not None:
            return False
        assert time.time() < deadline, "no progress"
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_sigterm_cli_exits_nonzero_and_resumes_bitwise(tmp_path, reference):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    p = _run_cli(tmp_path, "train.checkpoint_every_n_steps=2")
    assert _wait_for_step(p, last, 2, time.time() + 600)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM: stopping at step" in err
    assert 2 < _ckpt_step(last) < TOTAL
    p = _run_cli(tmp_path, "train.checkpoint_every_n_steps=2")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    _assert_same_training_state(_load(last), reference)


@pytest.mark.slow
def test_sigkill_at_five_random_moments_resumes_bitwise(tmp_path, reference):
    """The same command, killed with SIGKILL five times at seeded random moments (after a random
    step has been checkpointed, plus a random delay: mid-step, mid-save, mid-validation), then run
    to the end: the final state equals the uninterrupted run's bit for bit."""
    rng = random.Random(20240607)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    targets = sorted(rng.sample(range(1, TOTAL), 5))
    deadline = time.time() + 1200
    left = []  # (global step, loader position) of the checkpoint each kill left behind
    for target in targets:
        p = _run_cli(tmp_path, "train.checkpoint_every_n_steps=1")
        alive = _wait_for_step(p, last, target, deadline)
        time.sleep(rng.uniform(0.0, 0.4))
        assert alive and p.poll() is None, "the run ended before it could be killed"
        p.kill()
        p.communicate()
        ck = _load(last)  # loadable whatever the kill interrupted
        left.append((ck["global_step"], ck["diffexp_train_loader"]["served"]))
    assert not (tmp_path / "run" / "summary.json").exists()
    # some kills landed mid-epoch: their checkpoint resumes inside an epoch
    assert any(0 < served < STEPS_PER_EPOCH for _, served in left), left
    p = _run_cli(tmp_path, "train.checkpoint_every_n_steps=1")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    _assert_same_training_state(_load(last), reference)
