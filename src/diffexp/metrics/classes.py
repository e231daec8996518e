"""Class balance of an image set as the shipped classifier sees it: the predicted-class histogram,
its total-variation distance from a reference histogram, and the mean classifier confidence.

A generator can score a fair FID while over-producing easy classes (trousers) and dropping hard
ones (shirts); the histogram shows that directly. Free of Lightning and Hydra.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_histogram", "total_variation", "mean_confidence", "class_balance"]


def class_histogram(labels: Tensor, num_classes: int) -> Tensor:
    """Counts of each class 0 .. num_classes-1 among integer ``labels`` (int64 [num_classes])."""
    labels = torch.as_tensor(labels).long().flatten()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) "
                         f"(got {int(labels.min())} .. {int(labels.max())})")
    return torch.bincount(labels, minlength=num_classes)


def total_variation(p, q) -> float:
    """TV(p, q) = 1/2 · Σ_c |p_c - q_c| of two histograms, each normalised to sum 1 first:
    0 for equal proportions, 1 for disjoint supports."""
    p = torch.as_tensor(p, dtype=torch.float64)
    q = torch.as_tensor(q, dtype=torch.float64)
    if p.shape != q.shape or p.dim() != 1:
        raise ValueError(f"histograms must be 1-d of one length (got {tuple(p.shape)}, "
                         f"{tuple(q.shape)})")
    if float(p.sum()) <= 0 or float(q.sum()) <= 0 or bool((p < 0).any() | (q < 0).any()):
        raise ValueError("histograms must be non-negative with a positive total")
    return 0.5 * float((p / p.sum() - q / q.sum()).abs().sum())


def mean_confidence(logits: Tensor) -> float:
    """Mean over images of the largest softmax probability (the classifier's confidence)."""
    return float(torch.softmax(torch.as_tensor(logits).double(), dim=1).max(1).values.mean())


def class_balance(logits: Tensor, reference_hist) -> dict:
    """``{class_hist: counts, class_tv: TV to reference_hist, class_confidence}`` of [n, C] logits."""
    logits = torch.as_tensor(logits)
    hist = class_histogram(logits.argmax(1), logits.shape[1])
    return {"class_hist": [int(c) for c in hist],
            "class_tv": total_variation(hist, reference_hist),
            "class_confidence": mean_confidence(logits)}
