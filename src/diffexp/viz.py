"""Grids and plots: pure functions returning tensors or matplotlib figures, plus PNG writers."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .files import atomic_save

__all__ = ["make_grid", "save_grid", "save_png", "save_figure", "image_table", "training_sigma_figure"]


def make_grid(u8: Tensor, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> Tensor:
    """uint8 [N, 1, H, W] -> uint8 [H', W'] tiled grid (``ncol`` defaults to ceil(sqrt(N)))."""
    n, _, h, w = u8.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), pad_value,
                      dtype=torch.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = u8[k, 0].cpu()
    return grid


def save_png(img: Tensor, path: str | Path, upscale: int = 1) -> Path:
    """Write a uint8 [H, W] image as PNG (atomically, with the umask's permissions: files.py)."""
    from PIL import Image

    path = Path(path)
    im = Image.fromarray(img.cpu().numpy(), mode="L") if img.dim() == 2 else Image.fromarray(
        img.cpu().numpy())
    if upscale > 1:
        im = im.resize((im.width * upscale, im.height * upscale), Image.NEAREST)
    atomic_save(path, lambda f: im.save(f, format="PNG"))
    return path


def save_grid(u8: Tensor, path: str | Path, ncol: int | None = None, upscale: int = 2) -> Path:
    return save_png(make_grid(u8, ncol), path, upscale=upscale)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        atomic_save(path, lambda f: fig.savefig(f, dpi=dpi, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_table(rows: list[Tensor], row_names: list[str], col_titles: list[str],
                suptitle: str | None = None):
    """A figure of uint8 images: ``rows[r]`` is [K, 1, H, W], one panel per column."""
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(1.3 * nc, 1.35 * nr + (0.4 if suptitle else 0)),
                             squeeze=False)
    for r, imgs in enumerate(rows):
        for c in range(nc):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=255)
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=7)
            if c == 0 and r < len(row_names):
                ax.set_ylabel(row_names[r], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def training_sigma_figure(sigma: Tensor, t: Tensor, schedule_name: str):
    """Histograms of the training noise levels: log10 sigma and the schedule's t."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].hist(sigma.double().log10().numpy(), bins=100, density=True)
    ax[0].set_xlabel("log10 sigma")
    ax[0].set_ylabel("density")
    ax[1].hist(t.double().numpy(), bins=100, density=True)
    ax[1].set_xlabel("t")
    fig.suptitle(f"training noise levels ({schedule_name})", fontsize=9)
    fig.tight_layout()
    return fig


def alpha_bar_scatter(abar: Tensor, abar_hat: Tensor, target: str):
    """Predicted vs true alpha_bar on held-out images, with the identity line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(abar.numpy(), abar_hat.numpy(), s=4, alpha=0.5)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("true alpha_bar")
    ax.set_ylabel("predicted alpha_bar")
    ax.set_title(f"noise-level predictor (target={target})", fontsize=9)
    return fig
