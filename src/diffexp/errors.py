"""User-facing errors: the message is one line naming the setting or the file at fault, and the
command-line tools print it and exit with status 2 (no traceback)."""


class DiffexpError(ValueError):
    """A setting or an input file is wrong; the message says which and what to do."""


class ConfigError(DiffexpError):
    """A setting is wrong; the message is one line naming it."""


class CheckpointError(DiffexpError):
    """A checkpoint file is missing, truncated, corrupt, foreign or of the wrong kind."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's first message line (its type name when it has no message), cut to
    ``limit`` characters: what a one-line error quotes of the fault beneath it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
