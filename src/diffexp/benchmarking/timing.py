"""Measuring helpers for benchmarks: clocks, peak memory, medians and ratios, the machine.

Everything here is independent of what is measured: a benchmark hands it callables and lists of
rates. The rule the benchmark is judged by lives here too (:data:`THRESHOLD`), so that every
ratio carries the same verdict.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

#: the goal: the diffexp path within 5% of bare PyTorch (ratio diffexp / bare at least this)
THRESHOLD = 0.95


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def ratio_entry(diffexp: list[float], bare: list[float], unit: str,
                cpu_diffexp: list[float] | None = None, cpu_bare: list[float] | None = None) -> dict:
    """Medians of both paths, their ratio (diffexp / bare) and the verdict. The ``cpu_*`` rates
    (work per second of this process's CPU time) are information beside the wall-clock verdict:
    on a shared machine they are much less disturbed by other processes."""
    a, b = median(diffexp), median(bare)
    r = a / b
    e = {"unit": unit, "diffexp": a, "bare": b, "ratio": r, "threshold": THRESHOLD,
         "pass": bool(r >= THRESHOLD), "diffexp_reps": list(diffexp), "bare_reps": list(bare)}
    if cpu_diffexp and cpu_bare:
        ca, cb = median(cpu_diffexp), median(cpu_bare)
        e.update({"cpu_diffexp": ca, "cpu_bare": cb, "cpu_ratio": ca / cb,
                  "cpu_diffexp_reps": list(cpu_diffexp), "cpu_bare_reps": list(cpu_bare)})
    return e


def interleave(path_a, path_b, flip: bool):
    """Run both paths back to back (B first when ``flip``); return their results as (A, B).
    Alternating ``flip`` between repetitions keeps either path from always going first."""
    if flip:
        b = path_b()
        return path_a(), b
    a = path_a()
    return a, path_b()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall-clock and process CPU time since construction (after a CUDA sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        sync(device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak memory of a block: CUDA max_memory_allocated, or the process maxrss on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = ("cuda_max_memory_allocated" if device.type == "cuda"
                     else "cpu_process_maxrss (high-water mark of the whole process so far)")
        self.peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def track(self, name: str):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.device.type == "cuda":
            sync(self.device)
            mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            mb = maxrss_mb()
        self.peaks[name] = max(self.peaks.get(name, 0.0), mb)

    def run(self, name: str, fn, *args):
        with self.track(name):
            return fn(*args)


def apply_mallopt(threshold: int = 1 << 30) -> str:
    """Raise glibc's mmap and trim thresholds for this process (scripts/bench.py ``--mallopt``),
    so that large CPU tensors reuse heap memory instead of being mmap'ed and page-faulted afresh
    on every allocation. Returns a description of the allocator for the record."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    if not (libc.mallopt(m_mmap_threshold, threshold) and libc.mallopt(m_trim_threshold, threshold)):
        raise SystemExit("error: --mallopt: mallopt() refused the setting (not glibc?)")
    return f"glibc mallopt(M_MMAP_THRESHOLD={threshold}, M_TRIM_THRESHOLD={threshold})"


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` as a device; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    return torch.device(name)


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict:
    """What a timing depends on: processor or GPU, versions, threads, and the load at the start."""
    import pytorch_lightning as pl

    from diffexp.runs.record import cpu_model

    info = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def json_default(o):
    """``json.dumps(default=...)`` for a benchmark record: non-finite floats, devices, dtypes and
    paths as strings, anything else as its repr (a record is never lost to one odd value)."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, (torch.device, torch.dtype, Path)):
        return str(o)
    return repr(o)
