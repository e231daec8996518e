#!/usr/bin/env python
"""Train the Fashion-MNIST classifier whose penultimate layer is diffexp's FID/KID feature space.

Seeded and CPU-feasible (a few minutes on 2 cores). Writes a plain state_dict (``--out``, default
the package's ``src/diffexp/metrics/fashion_classifier.pt``) and a JSON beside it recording the test
accuracy, the file's sha256, the architecture, this command, seed, epochs and feature dim.

    python scripts/train_fid_classifier.py --epochs 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffexp.data import load_fashion_mnist
from diffexp.metrics.features import (
    ARCH,
    FEATURE_DIM,
    WEIGHTS_PATH,
    FashionClassifier,
    file_sha256,
)

REPO = Path(__file__).resolve().parents[1]


def default_data_root() -> str:
    return os.environ.get("DIFFEXP_DATA_ROOT") or str((REPO / ".." / "shared" / "data").resolve())


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """uint8 [B,1,28,28] -> random shift by up to ``shift`` px (zero fill) + horizontal flip."""
    b, _, h, w = x.shape
    xp = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, 1, h, w)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, 1, h, w)
    bi = torch.arange(b).view(b, 1, 1, 1).expand(b, 1, h, w)
    out = xp[bi, torch.zeros_like(rows), rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def accuracy(model: FashionClassifier, x: torch.Tensor, y: torch.Tensor, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum())
    return correct / len(x)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder holding FashionMNIST/raw "
                        "(default: $DIFFEXP_DATA_ROOT or ../shared/data)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="OneCycle peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(WEIGHTS_PATH), help="weights file; the JSON goes beside it")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    xtr, ytr = load_fashion_mnist(args.data_root, train=True, download=False)
    xte, yte = load_fashion_mnist(args.data_root, train=False, download=False)
    xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)

    model = FashionClassifier(feature_dim=FEATURE_DIM)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tot = 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {tot / len(xtr):.4f}  "
              f"test acc {accuracy(model, xte, yte):.4f}  ({time.time() - t0:.0f} s)", flush=True)
    train_seconds = time.time() - t0
    acc = accuracy(model, xte, yte)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    cmd = ["python", "scripts/train_fid_classifier.py"] + (
        list(sys.argv[1:]) if argv is None else list(argv))
    info = {
        "arch": ARCH,
        "feature_dim": FEATURE_DIM,
        "feature_layer": "fc: Linear(1152->128) + BatchNorm1d + ReLU (penultimate, post-ReLU)",
        "input": "uint8 [N,1,28,28]; the module computes (u8/255 - 0.2860)/0.3530 itself",
        "test_accuracy": round(acc, 5),
        "test_split": "Fashion-MNIST t10k (10,000 images)",
        "sha256": file_sha256(out),
        "weights_file": out.name,
        "command": shlex.join(cmd),
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(weight_decay={args.weight_decay}) + OneCycleLR(max_lr={args.lr})",
        "augmentation": "random translation +-2 px (zero fill) + horizontal flip p=0.5",
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "torch_version": torch.__version__,
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
