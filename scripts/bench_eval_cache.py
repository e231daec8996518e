"""What the evaluation's caches save: the floor's scores (n real training images against the
reference) and the reference's k-NN radii, computed afresh (an empty cache directory) and read
back (the same directory again), alternating, in one run on this machine.

    python scripts/bench_eval_cache.py [--n 2048] [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from diffexp.evaluation import floor_images, make_evaluator


def once(cache_dir: Path, n: int) -> float:
    """Seconds for what the end-of-run evaluation pays beside sampling and scoring its own
    images: the reference radii and the floor at n (reference features come from the cache)."""
    ev = make_evaluator(device="cpu")
    ev.cache_dir = cache_dir  # reference features from the usual cache; radii and floor here
    real = floor_images(n, seed=0)
    t = time.perf_counter()
    ev.reference_radii2()
    ev.floor(real)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    fresh, cached = [], []
    for _ in range(a.repeats):
        with tempfile.TemporaryDirectory() as d:
            fresh.append(once(Path(d), a.n))
            cached.append(once(Path(d), a.n))
    f, c = statistics.median(fresh), statistics.median(cached)
    print(f"radii + floor at n={a.n}: computed {f:.2f} s, from the cache {c:.3f} s "
          f"(medians of {a.repeats}; saves {f - c:.2f} s per evaluation, {f / c:.0f}x)")


if __name__ == "__main__":
    main()
