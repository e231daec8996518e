"""Thin wrapper: ``python eval.py ...`` from the repository root (same as diffexp-eval)."""

from diffexp.cli.eval import main

if __name__ == "__main__":
    main()
