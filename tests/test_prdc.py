"""Precision / recall / density / coverage and class balance: closed forms on hand-made points,
and constructed Fashion-MNIST sets whose answer is known (identical, half the classes, blurred,
collapsed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffexp.data import load_fashion_mnist
from diffexp.metrics import (
    Evaluator,
    class_balance,
    class_histogram,
    knn_radii_squared,
    manifold_scores,
    mean_confidence,
    total_variation,
)
from diffexp.metrics import prdc as prdc_mod

torch.set_num_threads(min(2, torch.get_num_threads()))


def _line(*xs) -> torch.Tensor:
    return torch.tensor([[float(x)] for x in xs])


# --- closed forms on points of a line --------------------------------------------------------------

def test_knn_radii_on_a_line_by_hand():
    x = _line(0, 1, 2, 3, 4)
    # k=1: every point's nearest other point is 1 away
    assert knn_radii_squared(x, 1).tolist() == [1, 1, 1, 1, 1]
    # k=2: the ends reach 2 (0 -> {1, 2}), the inner points 1 (1 -> {0, 2})
    assert knn_radii_squared(x, 2).tolist() == [4, 1, 1, 1, 4]
    # k=4: the farthest point of the set
    assert knn_radii_squared(x, 4).tolist() == [16, 9, 4, 9, 16]
    # a duplicate is a neighbour at distance 0, the point itself is not
    assert knn_radii_squared(_line(0, 0, 5), 1).tolist() == [0, 0, 25]


def test_manifold_scores_on_a_line_by_hand():
    real = _line(0, 1, 2, 3, 4)          # k=2 radii 2, 1, 1, 1, 2
    gen = _line(0.5, 10, 10.5, 11)       # k=2 radii 10 (0.5 -> {10, 10.5}), 1, 0.5, 1
    s = manifold_scores(real, gen, 2)
    # precision: only 0.5 lies in a real ball (|0.5 - 0| <= 2); 10, 10.5, 11 are >= 6 from 4
    assert s.precision == pytest.approx(1 / 4)
    # recall: the ball of radius 10 around 0.5 holds every real point -- the outlier weakness of
    # k-NN recall that Naeem et al. point out
    assert s.recall == pytest.approx(1.0)
    # density: 0.5 lies in the balls of 0 (0.5 <= 2) and 1 (0.5 <= 1), not of 2 (1.5 > 1):
    # 2 containments / (k M) = 2 / 8
    assert s.density == pytest.approx(0.25)
    # coverage: the nearest sample (0.5) is inside the real balls of 0 and 1 only: 2 / 5
    assert s.coverage == pytest.approx(0.4)
    assert s.k == 2


def test_ball_boundary_counts_as_inside():
    real = _line(0, 1, 2, 3, 4)          # k=1 radii all 1
    on_edge = manifold_scores(real, _line(5, 6), 1)
    assert on_edge.precision == 0.5      # 5 is exactly 1 from 4: inside; 6 is not
    assert on_edge.coverage == 0.2       # only 4's ball holds a sample
    assert on_edge.density == pytest.approx(1 / 2)


def test_identical_sets_and_chunking():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    s = manifold_scores(x, x.clone(), 3)
    assert s.precision == 1.0 and s.recall == 1.0 and s.coverage == 1.0
    # the chunk size changes only the memory, never the numbers
    y = torch.randn(257, 8, generator=g, dtype=torch.float64) * 1.3 + 0.2
    whole = manifold_scores(x, y, 3, chunk=10_000)
    for chunk in (1, 7, 64):
        assert manifold_scores(x, y, 3, chunk=chunk) == whole
    # against a brute-force version of the definitions
    d = torch.cdist(y, x)                               # [M, N]
    rx = torch.cdist(x, x).sort(1).values[:, 3]
    ry = torch.cdist(y, y).sort(1).values[:, 3]
    inside = d <= rx[None, :] + 1e-12
    assert whole.precision == pytest.approx(float(inside.any(1).double().mean()))
    assert whole.recall == pytest.approx(float((d <= ry[:, None] + 1e-12).any(0).double().mean()))
    assert whole.density == pytest.approx(float(inside.sum()) / (3 * len(y)))
    assert whole.coverage == pytest.approx(float((d.min(0).values <= rx).double().mean()))


def test_reference_radii_can_be_passed_in():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.randn(40, 4, generator=g)
    assert manifold_scores(x, y, 2, real_radii2=knn_radii_squared(x, 2)) == manifold_scores(x, y, 2)
    with pytest.raises(ValueError, match="real_radii2"):
        manifold_scores(x, y, 2, real_radii2=torch.ones(3))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k_is_a_clear_error(k):
    with pytest.raises(ValueError, match=r"eval.prdc_k must be an int >= 1"):
        manifold_scores(_line(0, 1, 2), _line(0, 1), k)


def test_k_must_be_below_the_set_sizes():
    with pytest.raises(ValueError, match=r"eval.prdc_k=3 needs more than 3 generated images"):
        manifold_scores(_line(0, 1, 2, 3, 4), _line(0, 1, 2), 3)
    with pytest.raises(ValueError, match=r"features must be \[n, d\]"):
        manifold_scores(torch.zeros(5), _line(0, 1), 1)


def test_ten_thousand_points_fit_in_chunks(monkeypatch):
    # n = 10,000 in 128-d: the full float64 matrix would be 800 MB; in chunks of 1024 rows the
    # largest block is 1024 x 10,000. Record the largest block actually built.
    seen = []
    real_sq = prdc_mod.squared_distances

    def spy(a, b):
        seen.append(a.shape[0] * b.shape[0])
        return real_sq(a, b)

    monkeypatch.setattr(prdc_mod, "squared_distances", spy)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10_000, 128, generator=g)
    y = torch.randn(2_048, 128, generator=g)
    s = manifold_scores(x, y, 3)
    assert max(seen) <= prdc_mod.DEFAULT_CHUNK * 10_000
    # same distribution: both near their real-vs-real value, far from 0
    assert 0.3 < s.precision <= 1 and 0.3 < s.recall <= 1


# --- class balance -------------------------------------------------------------------------------

def test_class_balance_closed_form():
    assert class_histogram(torch.tensor([0, 2, 2, 3]), 4).tolist() == [1, 0, 2, 1]
    assert total_variation([1, 1, 1, 1], [5, 5, 5, 5]) == 0.0
    assert total_variation([1, 0], [0, 1]) == 1.0
    # (1/2, 1/2, 0) vs uniform thirds: 1/2 (1/6 + 1/6 + 1/3) = 1/3
    assert total_variation([1, 1, 0], [1, 1, 1]) == pytest.approx(1 / 3)
    # logits (0, 0): confidence 1/2; (log 3, 0): 3/4
    logits = torch.tensor([[0.0, 0.0], [float(torch.log(torch.tensor(3.0))), 0.0]])
    assert mean_confidence(logits) == pytest.approx((0.5 + 0.75) / 2)
    cb = class_balance(logits, [1, 1])
    assert cb["class_hist"] == [2, 0] and cb["class_tv"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="labels must lie"):
        class_histogram(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="positive total"):
        total_variation([0, 0], [1, 1])


# --- constructed Fashion-MNIST sets --------------------------------------------------------------

N = 2000


@pytest.fixture(scope="module")
def fmnist(data_root):
    xt, yt = load_fashion_mnist(data_root, train=False, download=False)
    xr, yr = load_fashion_mnist(data_root, train=True, download=False)
    return xt.unsqueeze(1), yt, xr.unsqueeze(1), yr


@pytest.fixture(scope="module")
def evaluator(fmnist, tmp_path_factory):
    xt, yt, _, _ = fmnist
    return Evaluator(xt[:N], cache_dir=tmp_path_factory.mktemp("cache"), kid_subset_size=500,
                     kid_subsets=10, reference_labels=yt[:N])


@pytest.fixture(scope="module")
def real_scores(fmnist, evaluator):
    return evaluator.score(fmnist[2][:N])


def _blur(u8: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (radius 3, replicate padding), back to uint8."""
    t = torch.arange(-3, 4, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.conv2d(F.pad(u8.double(), (3, 3, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.view(1, 1, -1, 1))
    return x.round().clamp(0, 255).to(torch.uint8)


def test_the_reference_against_itself(fmnist, evaluator):
    s = evaluator.score(fmnist[0][:N])
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and s["coverage"] == 1.0
    assert s["k"] == 3 and s["n"] == N
    # the reference histogram is the measured test labels: near-uniform over 10 classes
    ref = evaluator.reference_class_hist
    assert ref.sum() == N and ref.min() >= 0.08 * N and ref.max() <= 0.12 * N
    # the classifier's own errors keep its histogram of the test images off the labels' a little
    assert s["class_tv"] < 0.05 and sum(s["class_hist"]) == N


def test_independent_real_images_score_high(real_scores):
    s = real_scores
    assert s["precision"] > 0.75 and s["recall"] > 0.75 and s["coverage"] > 0.75
    assert 0.85 < s["density"] < 1.2       # ≈ 1 for matching distributions (Naeem et al.)
    assert s["class_tv"] < 0.05 and s["class_confidence"] > 0.9


def test_half_the_classes_drops_recall_not_precision(fmnist, evaluator, real_scores):
    _, _, xr, yr = fmnist
    half = xr[yr < 5][:N]                  # T-shirt, trouser, pullover, dress, coat only
    s = evaluator.score(half)
    assert s["recall"] < real_scores["recall"] - 0.25
    assert s["coverage"] < real_scores["coverage"] - 0.25
    assert s["precision"] > real_scores["precision"] - 0.05   # every image is still realistic
    # the predicted histogram sits on the first five classes: TV ≈ 1/2 from uniform
    assert 0.4 < s["class_tv"] < 0.6
    assert sum(s["class_hist"][5:]) < 0.05 * N


def test_blur_drops_precision(fmnist, evaluator, real_scores):
    s = evaluator.score(_blur(fmnist[2][:N], 1.0))
    assert s["precision"] < real_scores["precision"] - 0.2
    assert s["density"] < real_scores["density"] - 0.3
    assert s["class_confidence"] < real_scores["class_confidence"]


def test_collapse_onto_few_images_drops_coverage_not_precision(fmnist, evaluator, real_scores):
    few = fmnist[2][:200].repeat(N // 200, 1, 1, 1)   # 200 distinct images, each 10 times
    s = evaluator.score(few)
    assert s["coverage"] < real_scores["coverage"] - 0.4
    assert s["precision"] > real_scores["precision"] - 0.05


def test_classifier_head_on_features_equals_the_classifier(fmnist, evaluator):
    x = fmnist[0][:64]
    feats = evaluator._extract(x)
    assert torch.allclose(evaluator.logits(x, feats), evaluator.logits(x), atol=1e-5)
    labels, conf = evaluator.predict(x)
    assert labels.shape == (64,) and bool(((conf > 0.1) & (conf <= 1)).all())


def test_too_few_images_for_k_leave_the_manifold_metrics_null(fmnist, evaluator, capsys):
    # a valid training config may score 2 or 3 images (eval.n_samples >= 2): the k-NN numbers are
    # undefined there, so they are null and a notice says so; FID/KID are still reported
    s = evaluator.score(fmnist[2][:3])
    assert all(s[k] is None for k in ("precision", "recall", "density", "coverage"))
    assert s["k"] == 3 and s["n"] == 3 and s["fid"] > 0 and sum(s["class_hist"]) == 3
    assert "need more than k=3 images (got 3); left out (null)" in capsys.readouterr().err
    assert evaluator.score(fmnist[2][:4])["precision"] is not None
    # one image above k: defined, and exact for images of the reference itself (each lies at
    # distance 0 from its own reference point, inside that point's k-NN ball)
    own = evaluator.score(fmnist[0][:4])
    assert own["n"] == 4 and own["precision"] == 1.0 and own["coverage"] >= 4 / N


def test_evaluator_refuses_a_bad_k(fmnist, tmp_path):
    with pytest.raises(ValueError, match=r"eval.prdc_k must be an int >= 1 \(got 0\)"):
        Evaluator(fmnist[0][:20], cache_dir=tmp_path, prdc_k=0)
    with pytest.raises(ValueError, match=r"eval.prdc_k=20 needs more than 20 reference images"):
        Evaluator(fmnist[0][:20], cache_dir=tmp_path, prdc_k=20)
