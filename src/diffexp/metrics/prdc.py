"""Precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020) in a
feature space, with the pairwise distances computed in row chunks so n = 10,000 fits in memory.

Both papers describe a set's support by a union of balls: around every point of the set, a ball
whose radius is the distance to its k-th nearest neighbour *within the same set* (the point
itself not counted). With real features X (N points) and generated features Y (M points), radii
r_k(x_i) and r_k(y_j), and d the Euclidean distance:

* precision = 1/M · #{j : ∃ i, d(y_j, x_i) <= r_k(x_i)}   (generated points on the real manifold)
* recall    = 1/N · #{i : ∃ j, d(x_i, y_j) <= r_k(y_j)}   (real points on the generated manifold)
* density   = 1/(k M) · Σ_j #{i : d(y_j, x_i) <= r_k(x_i)} (how many real balls hold each sample;
  ≈ 1 for matching distributions, not bounded by 1, and less sensitive to real outliers)
* coverage  = 1/N · #{i : min_j d(x_i, y_j) <= r_k(x_i)}   (real balls holding at least one
  sample; uses only the real set's radii, so generated outliers cannot inflate it)

Everything is compared as *squared* distances (no square roots, so exact ties on hand-made points
stay exact), in float64. Free of Lightning and Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DEFAULT_K", "DEFAULT_CHUNK", "squared_distances", "knn_radii_squared",
           "ManifoldScores", "manifold_scores", "validate_k"]

DEFAULT_K = 3          # Kynkäänniemi et al. 2019 use k = 3; Naeem et al. 2020 k = 5 (both work)
DEFAULT_CHUNK = 1024   # rows per block: 1024 x 10,000 float64 distances = 80 MB


def validate_k(k, n_real: int | None = None, n_gen: int | None = None) -> int:
    """``k`` as an int >= 1 that is smaller than both set sizes (a k-th neighbour other than the
    point itself must exist); ValueError naming ``eval.prdc_k`` otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"eval.prdc_k must be an int >= 1 (got {k!r})")
    for what, n in (("reference", n_real), ("generated", n_gen)):
        if n is not None and k >= n:
            raise ValueError(f"eval.prdc_k={k} needs more than {k} {what} images (got {n})")
    return k


def _as_f64(a) -> Tensor:
    t = torch.as_tensor(a).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"features must be [n, d] (got shape {tuple(t.shape)})")
    return t


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``|a_i - b_j|^2`` as ``|a_i|^2 + |b_j|^2 - 2 a_i·b_j`` (one matmul), clamped at 0 against
    round-off. Callers pass row chunks of ``a``."""
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_(min=0.0)


def knn_radii_squared(x, k: int = DEFAULT_K, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """Squared distance from every point of ``x`` [n, d] to its k-th nearest neighbour in ``x``,
    the point itself excluded: the (k+1)-th smallest entry of its row, the smallest being its own
    zero distance (a duplicate point counts as a neighbour at distance 0)."""
    x = _as_f64(x)
    validate_k(k, len(x))
    out = []
    for start in range(0, len(x), chunk):
        d2 = squared_distances(x[start:start + chunk], x)
        rows = torch.arange(d2.shape[0])
        d2[rows, rows + start] = 0.0  # the self-distance is 0 exactly, whatever the round-off
        out.append(d2.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


@dataclass(frozen=True)
class ManifoldScores:
    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "density": self.density,
                "coverage": self.coverage, "k": self.k}


def manifold_scores(real, gen, k: int = DEFAULT_K, *, real_radii2: Tensor | None = None,
                    chunk: int = DEFAULT_CHUNK) -> ManifoldScores:
    """Precision, recall, density and coverage of generated features ``gen`` [M, d] against real
    features ``real`` [N, d] (formulas in the module docstring).

    ``real_radii2`` (from :func:`knn_radii_squared` with the same ``k``) lets a caller that scores
    many sets against one reference compute the reference radii once. One pass over the M x N
    distances, in chunks of ``chunk`` generated rows, gives all four numbers."""
    real, gen = _as_f64(real), _as_f64(gen)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, generated {gen.shape[1]}")
    validate_k(k, len(real), len(gen))
    if real_radii2 is None:
        real_radii2 = knn_radii_squared(real, k, chunk)
    elif real_radii2.shape != (len(real),):
        raise ValueError(f"real_radii2 must have shape ({len(real)},) "
                         f"(got {tuple(real_radii2.shape)})")
    real_radii2 = real_radii2.to(torch.float64)
    gen_radii2 = knn_radii_squared(gen, k, chunk)

    precise = 0                                           # samples inside some real ball
    ball_hits = 0                                         # (sample, real ball) containments
    recalled = torch.zeros(len(real), dtype=torch.bool)   # real points inside some generated ball
    nearest_gen2 = torch.full((len(real),), float("inf"), dtype=torch.float64)
    for start in range(0, len(gen), chunk):
        d2 = squared_distances(gen[start:start + chunk], real)       # [m, N]
        in_real_ball = d2 <= real_radii2[None, :]
        precise += int(in_real_ball.any(1).sum())
        ball_hits += int(in_real_ball.sum())
        recalled |= (d2 <= gen_radii2[start:start + chunk, None]).any(0)
        nearest_gen2 = torch.minimum(nearest_gen2, d2.min(0).values)
    m = len(gen)
    return ManifoldScores(precision=precise / m, recall=float(recalled.double().mean()),
                          density=ball_hits / (k * m),
                          coverage=float((nearest_gen2 <= real_radii2).double().mean()), k=k)
