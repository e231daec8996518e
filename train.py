"""Thin wrapper: ``python train.py ...`` from the repository root (same as diffexp-train)."""

from diffexp.cli.train import main

if __name__ == "__main__":
    main()
