"""Side by side on this CPU, in rounds that alternate which variant goes first (so drift hits both
alike): a network's training step and its inference throughput, contiguous vs channels_last
memory (or, with --bf16, fp32 vs bf16 autocast), inference at several batch sizes. It chose the
quickstart's eval.batch_size and its precision (docs/TUNING.md). Prints the median images per
second over the rounds and the ratio of each variant to the first.

    python scripts/bench_cpu_layout.py                         # unet_tiny on 28x28, 2 threads
    python scripts/bench_cpu_layout.py --bf16                  # fp32 vs bf16 autocast
    python scripts/bench_cpu_layout.py --widths 32 64 --patch 2 --attn 1 --threads 1
"""

import argparse
import time

import torch
import torch.nn.functional as F

from diffexp.benchmarking.timing import interleave, median
from diffexp.models.unet import UNet
from diffexp.precision import autocast, cpu_has_native_bf16


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--attn", type=int, nargs="*", default=None,
                   help="attention levels (default: the lowest level)")
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--side", type=int, default=28)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--infer-batches", type=int, nargs="+", default=[64, 512])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="timed rounds (one warm-up round more)")
    p.add_argument("--bf16", action="store_true",
                   help="compare fp32 with bf16 autocast (contiguous) instead of the layouts")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    attn = tuple(a.attn) if a.attn is not None else (len(a.widths) - 1,)

    def build(channels_last: bool):
        torch.manual_seed(0)
        net = UNet(1, 1, tuple(a.widths), 1, attn, 16, patch=a.patch)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, torch.optim.Adam(net.parameters(), 1e-3)

    def fmt(t, channels_last):
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    # variant -> (channels_last, bf16 autocast)
    if a.bf16:
        layouts = {"fp32": (False, False), "bf16 autocast": (False, True)}
        print(f"bf16 in hardware (AVX512-BF16 or AMX): {cpu_has_native_bf16()}")
    else:
        layouts = {"contiguous": (False, False), "channels_last": (True, False)}
    nets = {k: build(v[0]) for k, v in layouts.items()}
    x = torch.randn(a.train_batch, 1, a.side, a.side)
    c = torch.randn(a.train_batch)
    steps, infer_images = 8, max(1024, max(a.infer_batches))

    def measure(name: str) -> dict:
        """One round of one layout: images/s of its training step and of each inference batch."""
        net, opt = nets[name]
        cl, bf16 = layouts[name]
        amp = autocast("cpu", "bf16-mixed" if bf16 else "32-true")
        xx = fmt(x, cl)
        t0 = time.perf_counter()
        for _ in range(steps):
            with amp:
                out = net(xx, c)
            loss = F.mse_loss(out.float(), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates = {"train": steps * a.train_batch / (time.perf_counter() - t0)}
        with torch.no_grad(), amp:
            for b in a.infer_batches:
                xe, ce = fmt(torch.randn(b, 1, a.side, a.side), cl), torch.randn(b)
                t0 = time.perf_counter()
                for _ in range(infer_images // b):
                    net(xe, ce)
                rates[b] = (infer_images // b) * b / (time.perf_counter() - t0)
        return rates

    reps = {k: [] for k in layouts}
    names = list(layouts)
    for r in range(a.rounds + 1):  # round 0 warms up; the order of the two variants alternates
        first, second = interleave(lambda: measure(names[0]), lambda: measure(names[1]),
                                   flip=bool(r % 2))
        if r:
            reps[names[0]].append(first)
            reps[names[1]].append(second)

    def rate(name, part):  # median images/s over the timed rounds
        return median([rep[part] for rep in reps[name]])

    print(f"widths {a.widths}, patch {a.patch}, {a.side}x{a.side}, {a.threads} thread(s), "
          f"{a.rounds} rounds, medians")
    rows = [(f"train step, batch {a.train_batch}, {n}", rate(n, "train")) for n in layouts]
    rows += [(f"inference, batch {b}, {n}", rate(n, b)) for b in a.infer_batches for n in layouts]
    train_ref, infer_ref = rows[0][1], rows[len(layouts)][1]
    for i, (label, ips) in enumerate(rows):
        ref = train_ref if i < len(layouts) else infer_ref
        print(f"  {label:42s} {ips:8.0f} images/s  x{ips / ref:.2f}")

if __name__ == "__main__":
    main()
