"""Checkpoint writes that a kill at any moment cannot corrupt.

The checkpoint is written to a temporary file in the same folder, flushed to disk, and renamed
over the target (``os.replace`` is atomic on POSIX within one file system), so the previous
checkpoint stays loadable until the new one is complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
