"""diffexp's own messages (``[diffexp] ...``): one function, :func:`say`, for all of them.

Each message goes to the terminal as a plain line (stdout, or stderr for errors and warnings) and,
through the ``diffexp`` logger, to every log file the command line attached
(:func:`attach_file_handlers`: Hydra's ``train.log`` / ``eval.log`` in the run folder), so a run
folder's log holds every line the terminal showed, Lightning's and diffexp's alike.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["say", "attach_file_handlers", "LOGGER"]

LOGGER = logging.getLogger("diffexp")


class _Console(logging.Handler):
    """The terminal: the message alone, written to the stream current at the time (pytest and
    the progress bar swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "console", True):
            return
        stream = sys.stderr if getattr(record, "stderr", False) else sys.stdout
        print(record.getMessage(), file=stream, flush=True)


if not any(isinstance(h, _Console) for h in LOGGER.handlers):
    LOGGER.addHandler(_Console())
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # the root logger's console handler would print it a second time

_attached: list[logging.Handler] = []


def say(message: str, *, stderr: bool = False, console: bool = True) -> None:
    """``message`` on the terminal (stderr with ``stderr=True``; not at all with
    ``console=False``, for a line the caller shows another way) and in the attached logs."""
    LOGGER.info(message, extra={"stderr": stderr, "console": console})


def attach_file_handlers() -> None:
    """Send diffexp's messages also to the log files the root logger writes now (Hydra sets them
    up per job; a multirun's next job replaces the previous job's)."""
    for h in _attached:
        LOGGER.removeHandler(h)
    _attached.clear()
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            LOGGER.addHandler(h)
            _attached.append(h)
