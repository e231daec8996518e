"""Thin wrapper so ``python eval.py ...`` works from the repository root (same as diffexp-eval)."""

from diffexp.cli.eval import main

if __name__ == "__main__":
    main()
