"""Tools for timing diffexp against bare PyTorch (used by scripts/bench.py and scripts/gpu_check.py).

- :mod:`.timing`: how things are measured: wall and CPU clocks that synchronise CUDA, peak memory
  per path, medians and the diffexp / bare ratio with its verdict, the interleaving of two paths,
  and a description of the machine.
- :mod:`.bare`: the reference the diffexp paths are compared with: the same training step and
  the same network forward passes written as plain PyTorch loops, without Lightning or the
  module.

Nothing in the package's own code paths imports this one; it sits on top of the core modules.
"""
