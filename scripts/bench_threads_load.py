"""One torch thread against all cores' threads, on an idle machine and with other work on the
cores, side by side in one run: the quickstart's training step (unet_tiny, batch 16, 28x28, the
run's precision) timed as medians, in a fresh process per cell so each gets its thread pool anew.

    python scripts/bench_threads_load.py                  # 1 and 2 threads; 0, 1 and 2 burners
    python scripts/bench_threads_load.py --threads 1 2 --burners 0 1 --steps 40

A burner is a process spinning one core. On a 2-core machine a run with two threads waits at every
parallel region for a thread the scheduler has taken away for the burner's time slice, so one
burner can slow it far more than it slows a one-thread run. Prints each cell's median and maximum
seconds per step and its ratio to the idle one-thread cell.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CELL = r"""
import json, sys, time, torch
from diffexp.models.unet import UNet
from diffexp.precision import autocast, cpu_has_native_bf16
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = UNet(1, 1, (16, 32, 64), 1, (2,), 16)   # unet_tiny as the quickstart builds it
opt = torch.optim.Adam(net.parameters(), 3e-3)
x = torch.randn(16, 1, 28, 28)
t = torch.rand(16)
bf16 = cpu_has_native_bf16()
def step():
    with autocast(torch.device("cpu"), "bf16-mixed" if bf16 else "32-true"):
        loss = (net(x, t).float() - x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(5):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"median": times[len(times) // 2], "max": times[-1], "bf16": bf16}))
"""


def cell(threads: int, burners: int, steps: int) -> dict:
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, "-c", CELL, str(threads), str(steps)], env=env,
                             capture_output=True, text=True, check=True, timeout=1800)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--burners", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    rows = []
    for b in a.burners:
        for t in a.threads:
            r = cell(t, b, a.steps)
            rows.append({"threads": t, "burners": b, **r})
            print(f"[bench] threads {t}, burners {b}: median {r['median']:.4f} s/step, "
                  f"max {r['max']:.4f}", flush=True)
    base = next(r["median"] for r in rows if r["threads"] == min(a.threads) and r["burners"] == 0)
    print(f"\n{os.cpu_count()} cores, bf16 {rows[0]['bf16']}, {a.steps} timed steps per cell\n")
    print("| threads | burners | median s/step | max s/step | vs idle, fewest threads |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['burners']} | {r['median']:.4f} | {r['max']:.4f} | "
              f"{r['median'] / base:.2f}x |")


if __name__ == "__main__":
    main()
