"""A user's own components from config: ``_target_`` entries, Hydra's convention.

``callbacks.extra`` and ``logger.extra`` are dicts of named entries, each a ``_target_`` (the
dotted path of a class or function, importable from the working directory or an installed
package) with its keyword arguments; ``null`` drops an entry (an experiment's, say)::

    callbacks:
      extra:
        stop: {_target_: pytorch_lightning.callbacks.EarlyStopping, monitor: val/loss}

The target is imported when the config is validated, so a typo is a one-line error before any
work; the object is built where the run needs it (Hydra's ``instantiate``: nested ``_target_``
entries and ``_partial_`` work as in Hydra), and must be of the kind its setting names.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .errors import ConfigError, first_line

__all__ = ["check_entries", "import_target", "build"]


def import_target(path: Any, setting: str):
    """The object ``path`` names (``package.module.Name``); a ConfigError naming ``setting``
    where it is not a dotted path or does not import."""
    if not isinstance(path, str) or "." not in path.strip(". "):
        raise ConfigError(f"{setting}={path!r}: must be the dotted path of a class or function "
                          f"(e.g. pytorch_lightning.callbacks.EarlyStopping)")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigError(f"{setting}={path}: cannot import {module} ({first_line(e)}); is "
                          f"its package installed, or its folder on PYTHONPATH?") from None
    except AttributeError:
        raise ConfigError(f"{setting}={path}: {module} has no {name!r}") from None


def check_entries(entries: Any, setting: str) -> dict[str, dict]:
    """``entries`` (name -> ``_target_`` entry, or null to drop it) checked: each a mapping with
    an importable ``_target_``. Returns the kept entries."""
    if entries is None:
        return {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{setting} must be a mapping of names to entries with a _target_ "
                          f"(got {entries!r})")
    out = {}
    for name, entry in entries.items():
        if entry is None:
            continue
        if not isinstance(entry, dict) or "_target_" not in entry:
            raise ConfigError(f"{setting}.{name} must be a mapping with a _target_ (the dotted "
                              f"path of a class), e.g. {{_target_: package.Class, arg: 1}}; "
                              f"got {entry!r}")
        import_target(entry["_target_"], f"{setting}.{name}._target_")
        out[str(name)] = entry
    return out


def build(entry: dict, setting: str, kind: type, **defaults) -> Any:
    """The object ``entry`` describes, built with Hydra's ``instantiate``. ``defaults`` are
    passed where the target takes a parameter of that name and the entry does not give one
    (a logger's ``save_dir``: the run folder). A failure to build, or an object that is not a
    ``kind``, is a one-line ConfigError naming ``setting``."""
    from hydra.utils import instantiate

    target = import_target(entry["_target_"], f"{setting}._target_")
    given = dict(entry)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in defaults.items():
        if key in params and key not in given:
            given[key] = value
    try:
        obj = instantiate(given)
    except Exception as e:  # the user's constructor: any error, reported as one line
        cause = e.__cause__ or e
        raise ConfigError(f"{setting}: {entry['_target_']}(...) failed: "
                          f"{type(cause).__name__}: {first_line(cause)}") from None
    if not isinstance(obj, kind):
        raise ConfigError(f"{setting}: {entry['_target_']} built a {type(obj).__name__}, not a "
                          f"{kind.__module__}.{kind.__qualname__}")
    return obj
