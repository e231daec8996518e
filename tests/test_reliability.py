"""Bad files, diverging runs, clashing processes and full disks end cleanly: one line naming the
file or setting, a non-zero exit, and nothing lost or half-written."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from diffexp.checkpoint_io import atomic_torch_save, read_checkpoint
from diffexp.config import ConfigError
from diffexp.errors import CheckpointError
from diffexp.files import RunFolderBusy, atomic_write_text, hold_run_folder
from diffexp.guards import TrainingDiverged
from diffexp.module import load_module, load_noise_level_net
from diffexp.runs.record import write_json
from diffexp.runs.train import check_resume, train

from .helpers import TINY_MODEL, run_cli, train_config

QUICK = ["data=synthetic", "debug=fast", "logger=csv", "train.batch_size=16", *TINY_MODEL,
         "train.epochs=2", "trainer.limit_train_batches=3", "train.sample_every_n_epochs=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real training checkpoint (2 epochs x 3 steps of a tiny model)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(train_config(*QUICK), run)
    return run / "checkpoints" / "last.ckpt"


# ----------------------------------------------------------------------------- bad files
def _bad_files(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error must contain)."""
    files = {}
    raw = good.read_bytes()
    (tmp / "random.ckpt").write_bytes(os.urandom(5000))
    files["random bytes"] = (tmp / "random.ckpt", "not a PyTorch checkpoint")
    (tmp / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (tmp / "truncated.ckpt", "truncated")
    (tmp / "empty.ckpt").write_bytes(b"")
    files["empty"] = (tmp / "empty.ckpt", "empty (0 bytes)")
    files["missing"] = (tmp / "nope.ckpt", "no such file")
    files["a folder"] = (tmp, "is a folder")
    # a zip archive with a damaged member: the archive opens, the tensor data does not
    damaged = bytearray(raw)
    with zipfile.ZipFile(good) as z:
        info = max(z.infolist(), key=lambda i: i.compress_size)
    # the data starts after the local header (30 bytes, the name and a local extra field)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    damaged[start:start + 64] = b"\xff" * 64
    (tmp / "damaged.ckpt").write_bytes(bytes(damaged))
    files["damaged member"] = (tmp / "damaged.ckpt", "fails its checksum")
    import torchvision

    torch.save(torchvision.ops.SqueezeExcitation(8, 4), tmp / "torchvision.pt")
    files["a pickled torchvision model"] = (tmp / "torchvision.pt",
                                            "torchvision.ops.misc.SqueezeExcitation")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp / "state_dict.pt")
    files["a bare state_dict"] = (tmp / "state_dict.pt", "not a diffexp training checkpoint")
    torch.save({"state_dict": {}, "epoch": 1}, tmp / "lightning.ckpt")
    files["a foreign Lightning checkpoint"] = (tmp / "lightning.ckpt", "not written by diffexp")
    ck = torch.load(good, weights_only=True)
    torch.save({**ck, "diffexp_version": 99}, tmp / "newer.ckpt")
    files["a newer checkpoint format"] = (tmp / "newer.ckpt", "newer than this diffexp reads")
    cfg = {**ck["hyper_parameters"]["cfg"], "task": "noise_level"}
    torch.save({**ck, "hyper_parameters": {"cfg": cfg}}, tmp / "predictor.ckpt")
    files["a noise-level predictor"] = (tmp / "predictor.ckpt", "is a task=noise_level checkpoint")
    w = dict(ck["state_dict"])
    w[next(iter(w))] = torch.zeros(3)
    torch.save({**ck, "state_dict": w}, tmp / "wrong_shapes.ckpt")
    files["weights of another model"] = (tmp / "wrong_shapes.ckpt", "do not fit the model")
    return files


def test_every_bad_checkpoint_gets_one_line_naming_it(tmp_path, trained):
    for what, (path, phrase) in _bad_files(tmp_path, trained).items():
        with pytest.raises(CheckpointError) as e:
            load_module(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and msg.startswith("ckpt="), (what, msg)
        assert phrase in msg, (what, msg)
    # the good file still loads, with weights_only reads
    assert load_module(trained).cfg["task"] == "diffusion"


def test_predictor_setting_and_resume_setting_name_themselves(tmp_path, trained):
    with pytest.raises(CheckpointError, match=r"^objective.noise_level_ckpt=.*task=diffusion"):
        load_noise_level_net(trained)
    (tmp_path / "r.ckpt").write_bytes(b"\0" * 100)
    c = train_config(*QUICK, f"ckpt_path={tmp_path / 'r.ckpt'}")
    with pytest.raises(CheckpointError, match=r"^ckpt_path=.*not a PyTorch checkpoint"):
        check_resume(c)


def test_pickled_code_is_never_run(tmp_path):
    flag = tmp_path / "ran"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (flag,))

    torch.save({"state_dict": Trap()}, tmp_path / "trap.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(tmp_path / "trap.ckpt", setting="ckpt")
    assert not flag.exists()


def _cli(script: str, *args, cwd: Path):
    return run_cli(script, *args, cwd=cwd, env={"WANDB_MODE": "offline", "MPLBACKEND": "Agg"})


def test_eval_cli_on_random_bytes_exits_2_with_one_line(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(os.urandom(4096))
    r = _cli("eval.py", f"ckpt={tmp_path / 'x.ckpt'}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a PyTorch checkpoint" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_fid_cache_is_named_and_rebuilt(tmp_path, capsys):
    from diffexp.data import synthetic_images
    from diffexp.metrics.fid import Evaluator

    ref = synthetic_images(64)[0]
    a = Evaluator(ref, cache_dir=tmp_path, kid_subset_size=16)
    a.cache_path.write_bytes(b"garbage")
    b = Evaluator(ref, cache_dir=tmp_path, kid_subset_size=16)
    err = capsys.readouterr().err
    assert f"FID reference cache {b.cache_path} is unreadable" in err
    assert not b.loaded_from_cache and torch.equal(a.ref_features, b.ref_features)
    assert Evaluator(ref, cache_dir=tmp_path, kid_subset_size=16).loaded_from_cache  # rewritten


# ----------------------------------------------------------------------------- resume refusal
@pytest.mark.parametrize(("override", "key"), [
    ("data.scale=2", "data.scale"), ("seed=1", "seed"), ("schedule=linear", "schedule.name"),
    ("objective=v", "objective.name"), ("model.blocks=2", "model.blocks"),
    ("data.subset=100", "data.subset")])
def test_resume_refuses_changes_to_what_was_trained(trained, override, key):
    c = train_config(*QUICK, override, f"ckpt_path={trained}")
    with pytest.raises(ConfigError, match=rf"^{key}=.*differs from the resumed run's") as e:
        check_resume(c)
    assert f"resume.allow_changes=[{key}]" in str(e.value)
    c = train_config(*QUICK, override, f"ckpt_path={trained}",
                     f"resume.allow_changes=[{key.split('.')[0]}]")
    check_resume(c)  # a named group (or key) may change when the user says so


def test_resume_compares_an_explicit_sigma_data(tmp_path):
    run = tmp_path / "k"
    train(train_config(*QUICK, "objective=karras", "schedule=karras", "objective.sigma_data=0.5",
                       "train.epochs=1"), run)
    ck = run / "checkpoints" / "last.ckpt"
    check_resume(train_config(*QUICK, "objective=karras", "schedule=karras", "objective.sigma_data=auto",
                              "train.epochs=1", f"ckpt_path={ck}"))  # auto continues the value
    with pytest.raises(ConfigError, match=r"^objective.sigma_data=0.3 differs"):
        check_resume(train_config(*QUICK, "objective=karras", "schedule=karras",
                                  "objective.sigma_data=0.3", "train.epochs=1", f"ckpt_path={ck}"))


def test_resume_accepts_where_and_how(trained):
    check_resume(train_config(*QUICK, f"ckpt_path={trained}", "data.root=/elsewhere",
                              "model.channels_last=true", "optim.lr=1e-3", "sampler=heun",
                              "eval.n_samples=8"))


# ----------------------------------------------------------------------------- divergence
class _Poison(pl.Callback):
    """Makes the loss of optimizer step ``at`` (1-based) infinite."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step + 1 == self.at:
            with torch.no_grad():
                next(module.net.parameters()).fill_(float("inf"))


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    c = train_config(*QUICK, "train.epochs=3")
    with pytest.raises(TrainingDiverged) as e:
        train(c, run, callbacks=[_Poison(at=5)])  # epoch 1 ends at step 3, checkpointed
    msg = str(e.value)
    assert "\n" not in msg and "non-finite loss at step 5" in msg and "last.ckpt kept" in msg
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    load_module(run / "checkpoints" / "last.ckpt")


def test_skip_nonfinite_drops_the_bad_batches_and_goes_on(tmp_path):
    class PoisonGrads(pl.Callback):  # step 2's gradients are NaN, the weights untouched
        def on_before_optimizer_step(self, trainer, module, optimizer):
            if trainer.global_step + 1 == 2:
                for p in module.net.parameters():
                    if p.grad is not None:
                        p.grad.fill_(float("nan"))

    c = train_config(*QUICK, "train.skip_nonfinite=true", "train.grad_clip=0")
    s = train(c, tmp_path / "run", callbacks=[PoisonGrads()])
    assert s["global_step"] == 6
    m = load_module(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in m.net.parameters())
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "train/skipped_nonfinite" in rows


def test_diverging_cli_run_exits_non_zero_with_one_line(tmp_path):
    r = _cli("train.py", *QUICK, "train.epochs=1", "trainer.limit_train_batches=6",
             "optim.lr=1e30", "optim.lr_schedule=constant", "train.grad_clip=0",
             "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    last = r.stderr.strip().splitlines()[-1]
    assert "training diverged: non-finite loss at step" in last, r.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


# ----------------------------------------------------------------------------- run folder lock
def test_a_second_process_on_a_live_run_folder_refuses(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from diffexp.files import hold_run_folder\n"
         "with hold_run_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"pid {holder.pid}") as e:
            with hold_run_folder(tmp_path / "run"):
                pass
        assert "\n" not in str(e.value)
        r = _cli("train.py", *QUICK, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert r.returncode == 2 and "is being written by a running process" in r.stderr
        assert not (tmp_path / "run" / "checkpoints").exists()  # nothing written beside it
    finally:
        holder.kill()
        holder.wait()
    with hold_run_folder(tmp_path / "run"):  # the killed holder left no stale lock
        pass


# ----------------------------------------------------------------------------- full disk
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_leaves_the_previous_files_intact(tmp_path, monkeypatch):
    write_json(tmp_path / "metrics.json", {"fid": 1.0})
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "last.ckpt")
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")

    monkeypatch.setattr("os.fsync", _enospc)  # the data never reaches the disk
    with pytest.raises(OSError):
        write_json(tmp_path / "metrics.json", {"fid": 2.0})
    with pytest.raises(OSError):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "last.ckpt")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "config.yaml", "a: 2\n")
    monkeypatch.undo()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"fid": 1.0}
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(3))
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "last.ckpt",
                                                          "metrics.json"]  # no temporaries left


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {})
        atomic_torch_save({}, tmp_path / "c.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == 0o644


def test_every_writer_follows_the_umask(tmp_path):
    """PNGs, figures, CSVs, Markdown and caches go through the one atomic writer of files.py:
    the permissions a plain open() gives under the umask, and no temporary file left behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffexp.files import atomic_open_text, atomic_write_csv
    from diffexp.metrics.fid import _write_atomically
    from diffexp.runs.report import write_report
    from diffexp.viz import save_figure, save_grid

    old = os.umask(0o027)
    try:
        save_grid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), tmp_path / "grid.png")
        save_figure(plt.subplots()[0], tmp_path / "fig.png")
        atomic_write_csv(tmp_path / "rows.csv", [[1, 2], [3, 4]], header=["a", "b"])
        with atomic_open_text(tmp_path / "text.md") as f:
            f.write("# x\n")
        _write_atomically(tmp_path / "cache" / "c.pt", lambda f: torch.save({}, f), "cache")
        job = tmp_path / "sweep" / "0"
        job.mkdir(parents=True)
        write_json(job / "metrics.json", {"fid": 1.0, "kid_mean": 0.1, "nfe": 10})
        write_report(tmp_path / "sweep")
    finally:
        os.umask(old)
    assert (tmp_path / "rows.csv").read_bytes() == b"a,b\r\n1,2\r\n3,4\r\n"
    assert (tmp_path / "text.md").read_text() == "# x\n"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"grid.png", "fig.png", "rows.csv", "text.md", "c.pt", "report.csv",
            "report.md"} <= names, names
    assert not [p for p in files if p.name.endswith(".tmp")]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o640"}, modes


def test_a_tiny_run_writes_files_with_the_umask(tmp_path):
    """Every file of a training run (checkpoints, sample grids, losses.csv, loss.png, the
    config and the records) gets the umask's permissions, not mkstemp's 0600."""
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        train(train_config(*QUICK, "train.sample_every_n_epochs=1", "train.epochs=1"), run)
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"last.ckpt", "losses.csv", "summary.json"} <= names, names
    assert any(p.suffix == ".png" for p in files), names
    modes = {str(p.relative_to(run)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_lock_survives_time(tmp_path):
    """Holding a run folder twice in one process is refused too (flock is per open file)."""
    with hold_run_folder(tmp_path):
        t0 = time.perf_counter()
        with pytest.raises(RunFolderBusy):
            with hold_run_folder(tmp_path):
                pass
        assert time.perf_counter() - t0 < 5  # refuses at once, does not wait
