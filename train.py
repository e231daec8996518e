"""Thin wrapper so ``python train.py ...`` works from the repository root (same as diffexp-train)."""

from diffexp.cli.train import main

if __name__ == "__main__":
    main()
