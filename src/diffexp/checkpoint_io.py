"""Checkpoint files: writes that a kill (or a full disk) at any moment cannot corrupt, and reads
that check what they load.

Writes go to a temporary file in the same folder, flushed to disk, and renamed over the target
(``os.replace`` is atomic on POSIX within one file system), so the previous checkpoint stays
loadable until the new one is complete.

Reads use ``torch.load(weights_only=True)``: a diffexp checkpoint holds only tensors, numbers,
strings and plain containers, so nothing in it needs unpickling code, and a file that would (a
pickled model object, say) is refused rather than run. Every way a file can be wrong becomes a
:class:`~diffexp.errors.CheckpointError` whose one line names the setting, the file and the fault."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import CheckpointError, first_line
from .files import atomic_open

__all__ = ["AtomicCheckpointIO", "CHECKPOINT_FORMAT", "atomic_torch_save", "read_checkpoint"]

#: the checkpoint layout this version writes (``checkpoint["diffexp_version"]``) and can read
CHECKPOINT_FORMAT = 1

_TASK_HINT = {"diffusion": "train one with train.py",
              "noise_level": "train one with train.py task=noise_level"}


def read_checkpoint(path: str | os.PathLike, *, setting: str, task: str | None = "diffusion"
                    ) -> dict:
    """Load a training checkpoint written by diffexp, checked: ``setting`` names the option that
    gave ``path`` (for the message); ``task`` the kind of run it must come from (None: any)."""
    p = Path(path)
    where = f"{setting}={str(path)!r}"
    if not p.exists():
        raise CheckpointError(f"{where}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{where} is a folder, not a checkpoint file (a run's checkpoint is "
                              f"RUN/checkpoints/last.ckpt)")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): a truncated or unfinished write")
    # torch.save writes a zip archive whose directory sits at the end of the file, so a
    # truncated file, or one that is not a checkpoint at all, fails this cheap check
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{where} is not a PyTorch checkpoint ({size:,} bytes with no "
                              f"readable archive): truncated, corrupt or a different kind of file")
    try:  # every member's CRC-32, which torch.load does not check: a flipped byte in the weights
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        bad = f"({e})"
    if bad is not None:
        raise CheckpointError(f"{where} is corrupt: archive member {bad} fails its checksum")
    try:
        ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"a pickled {name.group(1)} object" if name else "pickled Python objects"
        raise CheckpointError(f"{where} holds {what}, not a diffexp checkpoint (loading it would "
                              f"run code from the file; refused)") from None
    except Exception as e:  # noqa: BLE001 - any reader failure is a damaged file
        first = first_line(e)
        raise CheckpointError(f"{where} cannot be read ({first}): corrupt or truncated") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        kind = ("a bare dict of tensors (a state_dict?)" if isinstance(ckpt, dict)
                else f"a {type(ckpt).__name__}")
        raise CheckpointError(f"{where} holds {kind}, not a diffexp training checkpoint")
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where} is a Lightning checkpoint without a diffexp config "
                              f"(hyper_parameters.cfg): not written by diffexp")
    version = ckpt.get("diffexp_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} was written in checkpoint format {version}, newer than "
                              f"this diffexp reads ({CHECKPOINT_FORMAT}): upgrade diffexp")
    found = cfg.get("task", "diffusion")
    if task is not None and found != task:
        raise CheckpointError(f"{where} is a task={found} checkpoint; this needs a task={task} "
                              f"checkpoint ({_TASK_HINT.get(task, '')})")
    return ckpt


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
