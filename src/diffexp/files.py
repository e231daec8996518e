"""Files written so that a kill or a full disk at any moment leaves the previous version intact,
and run folders that only one live process writes at a time.

Every file the project writes (checkpoints, JSON, YAML, CSV, Markdown, PNGs and figures, caches)
goes through :func:`atomic_open`: written beside its path, flushed, renamed over it, with the
permissions a plain ``open()`` would give under the current umask (0644 under umask 022)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from pathlib import Path

from .errors import DiffexpError

__all__ = ["RunFolderBusy", "atomic_open", "atomic_open_text", "atomic_save", "atomic_write_bytes",
           "atomic_write_csv", "atomic_write_text", "hold_run_folder"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike):
    """Yield a binary file that replaces ``path`` when the block ends: it is written beside
    ``path``, flushed to disk and renamed over it (atomic on POSIX within one file system). On any
    error (ENOSPC included) the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; the file gets the permissions a plain open() would give
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_open_text(path: str | os.PathLike, newline: str | None = None, encoding: str = "utf-8"):
    """:func:`atomic_open` as a text file (``newline=""`` for :mod:`csv`)."""
    with atomic_open(path) as raw:
        f = io.TextIOWrapper(raw, encoding=encoding, newline=newline)
        try:
            yield f
            f.flush()
        finally:
            f.detach()  # leave closing the binary file to atomic_open


def atomic_write_csv(path: str | os.PathLike, rows, header=None) -> None:
    """Write ``rows`` (sequences) as CSV, after ``header`` if given."""
    with atomic_open_text(path, newline="") as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)


def atomic_save(path: str | os.PathLike, write) -> None:
    """``write(binary file)`` into ``path`` atomically: for writers that take a file object, e.g.
    ``lambda f: image.save(f, format="PNG")``, ``lambda f: fig.savefig(f, format="png")`` or
    ``lambda f: torch.save(obj, f)``."""
    with atomic_open(path) as f:
        write(f)


class RunFolderBusy(DiffexpError):
    """Another live process is writing this run folder."""


@contextlib.contextmanager
def hold_run_folder(run_dir: str | os.PathLike):
    """Hold an exclusive lock on ``run_dir`` while a run writes it; a second process refuses at
    once with a one-line :class:`RunFolderBusy`. The lock is an ``flock`` on ``run_dir/.lock``,
    which the operating system drops when the holder exits however it exits, so a killed run
    leaves no stale lock (the file itself stays and means nothing)."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderBusy(f"run folder {str(run_dir)!r} is being written by a running "
                                f"process ({holder}); wait for it to end or choose another "
                                f"folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield run_dir
    finally:
        f.close()  # closing the file drops the lock
