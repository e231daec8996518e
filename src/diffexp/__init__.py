"""diffexp: config-driven diffusion-model experiments (schedules, objectives, samplers, FID/KID).

From Python: ``diffexp.compose``, ``diffexp.train``, ``diffexp.load``, ``diffexp.evaluate``
(see :mod:`diffexp.api`); they are imported on first use, so ``import diffexp`` stays light."""

_API = ("Model", "compose", "evaluate", "load", "train")


def __getattr__(name: str):
    if name == "__version__":
        from .version import __version__

        return __version__
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffexp' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API, "__version__"])
