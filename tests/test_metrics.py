"""diffexp.metrics: Fréchet distance, FID/KID behaviour, the shipped feature net, the reference
cache, and the Inception error path."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from diffexp.data import RAW_FILES, load_fashion_mnist
from diffexp.metrics import (
    Evaluator,
    FeatureNetError,
    feature_net_info,
    frechet_distance,
    load_feature_net,
)
from diffexp.metrics import features as feat_mod
from diffexp.metrics import fid as fid_mod
from diffexp.metrics.prdc import DEFAULT_K

torch.set_num_threads(min(2, torch.get_num_threads()))

FAST = dict(kid_subset_size=500, kid_subsets=10)


@pytest.fixture(scope="module")
def fmnist_test_split(data_root):  # conftest.py: the real data folder, or a skip
    root = data_root
    raw = root / "FashionMNIST" / "raw"
    if not all((raw / f).exists() or (raw / (f + ".gz")).exists() for f in RAW_FILES):
        pytest.skip(f"Fashion-MNIST not found under {root} (set DIFFEXP_DATA_ROOT)")
    x, y = load_fashion_mnist(root, train=False, download=False)
    return x.unsqueeze(1), y


@pytest.fixture(scope="module")
def train_images(data_root):
    x, _ = load_fashion_mnist(data_root, train=True, download=False)
    return x[:1000].unsqueeze(1)


# --- frechet_distance: independent closed forms --------------------------------------------------

def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 20))
    cov = a.T @ a / 50          # rank 20, full
    mu = rng.normal(size=20)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9
    b = rng.normal(size=(5, 20))  # rank-deficient covariance (5 samples in 20-d): the sqrt of
    cov_low = b.T @ b / 5         # ~1e-16 round-off eigenvalues limits the accuracy to ~1e-8 rel.
    assert abs(frechet_distance(mu, cov_low, mu, cov_low)) < 1e-6 * np.trace(cov_low)


def test_frechet_diagonal_and_rotated_closed_form():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    # N(mu1, diag v1) vs N(mu2, diag v2): |mu1-mu2|^2 + sum (sqrt v1 - sqrt v2)^2
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)
    # the same rotation applied to both Gaussians leaves the distance unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got_rot = frechet_distance(q @ mu1, q @ np.diag(v1) @ q.T, q @ mu2, q @ np.diag(v2) @ q.T)
    assert got_rot == pytest.approx(want, rel=1e-9)
    # 1-d: (m1-m2)^2 + (s1-s2)^2; tensors are accepted too
    got_1d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]),
                              torch.tensor([3.0]), torch.tensor([[9.0]]))
    assert got_1d == pytest.approx(4.0 + 1.0)


def test_frechet_matches_torchmetrics_on_full_covariances():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 12)), rng.normal(size=(200, 12)) * 1.5 + 0.3
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = float(_compute_fid(*(torch.from_numpy(t) for t in (mu1, c1, mu2, c2))))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)


# --- the shipped feature network -----------------------------------------------------------------

def test_shipped_weights_sha_and_size():
    info = feature_net_info()
    assert feat_mod.WEIGHTS_PATH.stat().st_size < 2 * 1024 * 1024
    assert feat_mod.file_sha256(feat_mod.WEIGHTS_PATH) == info["sha256"]
    for k in ("arch", "feature_dim", "test_accuracy", "command", "seed", "epochs"):
        assert k in info, k
    # a plain state_dict, loadable with weights_only=True
    state = torch.load(feat_mod.WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())


def test_shipped_net_accuracy_matches_json(fmnist_test_split):
    x, y = fmnist_test_split
    net = load_feature_net()
    net.train()  # must stay in eval mode (BatchNorm / dropout frozen)
    assert not net.training and not net.net.training
    pred = torch.cat([net.classify(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    acc = float((pred == y).double().mean())
    info = feature_net_info()
    assert acc >= 0.93
    assert abs(acc - info["test_accuracy"]) <= 0.001
    f = net(x[:7])
    assert f.shape == (7, info["feature_dim"]) == (7, net.num_features)
    with pytest.raises(TypeError, match="uint8"):
        net(x[:7].float())


def test_sha_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / "fashion_classifier.pt"
    bad.write_bytes(feat_mod.WEIGHTS_PATH.read_bytes() + b"\0")
    monkeypatch.setattr(feat_mod, "WEIGHTS_PATH", bad)
    with pytest.raises(FeatureNetError, match="sha256"):
        load_feature_net()


# --- FID / KID behaviour -------------------------------------------------------------------------

def test_fid_of_a_set_against_itself_is_zero_and_matches_references(fmnist_test_split, train_images,
                                                                     tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    ref = fmnist_test_split[0][:1000]
    ev = Evaluator(ref, cache_dir=tmp_path, **FAST)
    s = ev.score(ref)
    assert s["n"] == 1000
    assert abs(s["fid"]) < 1e-6
    # KID's subsets of a set against itself share images, so its unbiased estimate is slightly
    # negative; it must not be positive
    assert s["kid_mean"] < 1e-3
    # against other real images: our pure helper and torchmetrics fed with the feature module
    # directly (feature=nn.Module, uint8 in) give the same number as the Evaluator
    gen = train_images
    s2 = ev.score(gen)
    fr = ev._extract(gen).numpy()
    rf = ev.ref_features.numpy()
    helper = frechet_distance(rf.mean(0), np.cov(rf, rowvar=False),
                              fr.mean(0), np.cov(fr, rowvar=False))
    assert s2["fid"] == pytest.approx(helper, rel=1e-5)
    tm = FrechetInceptionDistance(feature=load_feature_net())
    for i in range(0, 1000, 500):
        tm.update(ref[i:i + 500], real=True)
        tm.update(gen[i:i + 500], real=False)
    assert s2["fid"] == pytest.approx(float(tm.compute()), rel=1e-4)
    assert s2["fid"] > 0.01 and s2 == ev.floor(gen)  # deterministic, KID subsets seeded
    # independent real sets: KID is zero within its spread over subsets
    assert abs(s2["kid_mean"]) < 3 * s2["kid_std"] + 1e-3


def test_fid_and_kid_grow_with_noise(fmnist_test_split, train_images, tmp_path):
    x = fmnist_test_split[0]
    ev = Evaluator(x[:1000], cache_dir=tmp_path, **FAST)
    clean = x[1000:2000]
    gen = torch.Generator().manual_seed(0)
    scores = [ev.floor(train_images)]
    for sigma in (0.0, 8.0, 24.0, 64.0):  # std of added noise in uint8 units
        noisy = clean.float() + sigma * torch.randn(clean.shape, generator=gen)
        scores.append(ev.score(noisy.round().clamp(0, 255).to(torch.uint8)))
    fids = [s["fid"] for s in scores[1:]]
    kids = [s["kid_mean"] for s in scores[1:]]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert all(a < b for a, b in zip(kids, kids[1:])), kids
    assert scores[0]["fid"] < fids[1]  # real-vs-real (train) below lightly noised test images
    assert all(s["kid_std"] >= 0 for s in scores)


def test_kid_subset_size_is_capped_by_n(fmnist_test_split, tmp_path):
    x = fmnist_test_split[0]
    ev = Evaluator(x[:600], cache_dir=tmp_path, kid_subset_size=1000, kid_subsets=5)
    s = ev.score(x[600:650])
    assert s["n"] == 50 and np.isfinite([s["fid"], s["kid_mean"], s["kid_std"]]).all()
    # capped: the same subsets (the same kid_seed) as an evaluator asking for 50 to begin with
    capped = Evaluator(x[:600], cache_dir=tmp_path, kid_subset_size=50, kid_subsets=5).score(
        x[600:650])
    assert (s["kid_mean"], s["kid_std"]) == pytest.approx((capped["kid_mean"], capped["kid_std"]))
    assert s["fid"] == pytest.approx(capped["fid"])  # FID does not depend on the KID subsets
    with pytest.raises(TypeError, match="uint8"):
        ev.score(x[600:650].float())


# --- the reference cache -------------------------------------------------------------------------

def test_reference_cache(fmnist_test_split, tmp_path, monkeypatch):
    ref = fmnist_test_split[0][:500]
    ev1 = Evaluator(ref, cache_dir=tmp_path, cache_key_extra="pad=2,scale=1.0", **FAST)
    assert not ev1.loaded_from_cache
    files = sorted(tmp_path.iterdir())
    assert files == [ev1.cache_path], files  # one file, no temp file left behind

    calls = []
    real_extract = Evaluator._extract

    def counting(self, images):
        calls.append(len(images))
        return real_extract(self, images)

    monkeypatch.setattr(Evaluator, "_extract", counting)
    ev2 = Evaluator(ref, cache_dir=tmp_path, cache_key_extra="pad=2,scale=1.0", **FAST)
    assert ev2.loaded_from_cache and calls == []  # no recomputation
    assert torch.equal(ev2.ref_features, ev1.ref_features)
    assert ev2.score(ref[:100]) == ev1.score(ref[:100])

    calls.clear()
    ev3 = Evaluator(ref, cache_dir=tmp_path, cache_key_extra="pad=0,scale=1.0", **FAST)
    assert not ev3.loaded_from_cache and calls == [500]
    assert ev3.cache_path != ev1.cache_path and len(list(tmp_path.glob("fidref-*"))) == 2

    other = ref.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel of the reference differs: another key
    ev4 = Evaluator(other, cache_dir=tmp_path, cache_key_extra="pad=2,scale=1.0", **FAST)
    assert ev4.cache_path not in (ev1.cache_path, ev3.cache_path)

    ev1.cache_path.write_bytes(b"truncated")  # a corrupt cache file is recomputed, not trusted
    calls.clear()
    ev5 = Evaluator(ref, cache_dir=tmp_path, cache_key_extra="pad=2,scale=1.0", **FAST)
    assert not ev5.loaded_from_cache and calls == [500]
    assert torch.equal(ev5.ref_features, ev1.ref_features)

    monkeypatch.setenv("DIFFEXP_CACHE_DIR", str(tmp_path / "env"))
    assert fid_mod.default_cache_dir() == tmp_path / "env"


def test_floor_and_reference_radii_are_cached_under_their_whole_key(fmnist_test_split, tmp_path,
                                                                    monkeypatch):
    """The floor (real-vs-real scores) and the reference's k-NN radii are functions of their
    inputs only: a second evaluator reuses them without extracting or searching again, with the
    same numbers, and any change of images, KID settings or k is a new entry."""
    x = fmnist_test_split[0]
    ref, real = x[:500], x[500:700]
    ev1 = Evaluator(ref, cache_dir=tmp_path, **FAST)
    first = ev1.floor(real)
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["fidref", "floor", "radii"]

    calls = []
    real_extract, real_radii = Evaluator._extract, fid_mod.knn_radii_squared
    monkeypatch.setattr(Evaluator, "_extract",
                        lambda self, im: calls.append(("extract", len(im))) or real_extract(self, im))
    monkeypatch.setattr(fid_mod, "knn_radii_squared",
                        lambda f, k: calls.append(("radii", k)) or real_radii(f, k))
    ev2 = Evaluator(ref, cache_dir=tmp_path, **FAST)
    assert ev2.floor(real) == first and calls == []
    torch.testing.assert_close(ev2.reference_radii2(), real_radii(ev1.ref_features, ev1.prdc_k))
    # a generated set is never taken from the cache; it uses the cached radii
    calls.clear()
    ev2.score(real)
    assert calls == [("extract", 200)]

    other = real.clone()
    other[0, 0, 0, 0] ^= 1  # one pixel differs: recomputed
    calls.clear()
    ev2.floor(other)
    assert calls == [("extract", 200)]
    calls.clear()
    ev3 = Evaluator(ref, cache_dir=tmp_path, **{**FAST, "kid_subsets": FAST["kid_subsets"] + 1})
    ev3.floor(real)
    assert calls == [("extract", 200)]  # other KID settings: another floor entry
    calls.clear()
    ev4 = Evaluator(ref, cache_dir=tmp_path, **FAST, prdc_k=DEFAULT_K + 2)
    ev4.floor(real)
    assert ("radii", DEFAULT_K + 2) in calls  # another k: other radii
    # a corrupt entry is recomputed, not trusted
    for p in tmp_path.glob("floor-*"):
        p.write_text("{truncated")
    calls.clear()
    assert Evaluator(ref, cache_dir=tmp_path, **FAST).floor(real) == first
    assert calls == [("extract", 200)]


# --- Inception -----------------------------------------------------------------------------------

def _inception_weights_present() -> bool:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except Exception:
        return False
    name = URL_INCEPTION_V3.rsplit("/", 1)[-1]
    return (Path(torch.hub.get_dir()) / "checkpoints" / name).exists()


def test_inception_without_weights_is_one_clear_error(fmnist_test_split, tmp_path, monkeypatch):
    if _inception_weights_present():
        pytest.skip("torch-fidelity's Inception weights are present; the error path cannot occur")

    def no_network(*args, **kwargs):  # as on our machines, also where CI could reach the internet
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(FeatureNetError) as err:
        Evaluator(fmnist_test_split[0][:10], cache_dir=tmp_path, features="inception")
    msg = str(err.value)
    assert msg.startswith("eval.features=inception needs torch-fidelity and its FID Inception "
                          "weights, which could not be loaded (")
    assert msg.endswith("; use eval.features=fashion") and "\n" not in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="fashion"):
        Evaluator(fmnist_test_split[0][:10], cache_dir=tmp_path, features="clip")


def test_info_json_is_valid():
    info = json.loads(feat_mod.INFO_PATH.read_text())
    assert info["arch"] == feat_mod.ARCH and info["feature_dim"] == feat_mod.FEATURE_DIM


def test_an_unwritable_cache_warns_and_still_scores(fmnist_test_split, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory would be")
    x = fmnist_test_split[0]
    with pytest.warns(UserWarning, match="could not write FID reference cache"):
        ev = Evaluator(x[:300], cache_dir=blocker / "cache", **FAST)
    with pytest.warns(UserWarning, match="could not write cache"):
        floor = ev.floor(x[300:400])
    assert floor["n"] == 100 and np.isfinite(floor["fid"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]  # nothing half-written
    # and scores as it would with a cache: the same numbers as an evaluator that wrote one
    cached = Evaluator(x[:300], cache_dir=tmp_path / "cache", **FAST)
    assert floor["fid"] == pytest.approx(cached.floor(x[300:400])["fid"])
    assert ev.score(x[400:450])["fid"] == pytest.approx(cached.score(x[400:450])["fid"])
