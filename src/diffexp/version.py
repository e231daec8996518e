"""The package's version (pyproject.toml's), in a module of its own: the model store hashes it
into every training fingerprint without importing the package root."""

__version__ = "0.1.0"
