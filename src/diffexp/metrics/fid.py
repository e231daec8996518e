"""FID and KID against a fixed reference set, with the reference features cached on disk.

The values are computed by torchmetrics' :class:`FrechetInceptionDistance` and
:class:`KernelInceptionDistance`. Features are extracted once per image set by our own loop (in
batches, to bound memory; the same uint8 path for reference and generated images) and handed to both
metrics through a pass-through "feature extractor", so the network runs once for FID and KID
together and the reference features can come from the cache instead of the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy import linalg
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..errors import first_line
from ..files import atomic_save
from ..say import say
from .classes import class_balance, class_histogram
from .features import (
    as_uint8_images,
    load_feature_net,
    load_inception_net,
)
from .prdc import DEFAULT_K, knn_radii_squared, manifold_scores, validate_k

__all__ = ["Evaluator", "frechet_distance", "default_cache_dir", "extract_features"]

CACHE_VERSION = 1
MANIFOLD_KEYS = ("precision", "recall", "density", "coverage")


def default_cache_dir() -> Path:
    """``$DIFFEXP_CACHE_DIR`` or ``~/.cache/diffexp``."""
    d = os.environ.get("DIFFEXP_CACHE_DIR") or Path.home() / ".cache" / "diffexp"
    return Path(os.path.expanduser(str(d)))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)`` of two Gaussians.

    Pure float64 numpy; accepts tensors or arrays. ``tr (C1 C2)^1/2`` is computed as the trace of
    the square root of the symmetric PSD ``C1^1/2 C2 C1^1/2`` (same eigenvalues), by ``eigh``, which
    is stable for the rank-deficient covariances that a few samples give."""
    def f64(a):
        return np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)

    mu1, mu2, cov1, cov2 = f64(mu1), f64(mu2), f64(cov1), f64(cov2)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, "
                         f"cov {cov1.shape} / {cov2.shape}")
    cov1 = (cov1 + cov1.T) / 2
    cov2 = (cov2 + cov2.T) / 2
    w, v = linalg.eigh(cov1)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


class _PassThrough(nn.Module):
    """torchmetrics "feature extractor" for features that are already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: Tensor) -> Tensor:
        return feats


@torch.no_grad()
def extract_features(net: nn.Module, images_u8, batch_size: int = 500) -> Tensor:
    """float64 CPU features ``[N, d]`` of uint8 images ``[N, 1, H, W]``, in batches."""
    x = as_uint8_images(images_u8)
    out = [net(x[i:i + batch_size]).double().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, int(net.num_features), dtype=torch.float64)


def _hash_images(x: Tensor) -> str:
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_atomically(path: Path, dump, what: str) -> None:
    """``dump(binary file)`` into a temporary file beside ``path``, renamed into place, so a
    reader never sees half a file. A cache directory that cannot be written is a warning: the
    value is still used, only recomputed next time."""
    try:
        atomic_save(path, dump)  # files.py: the one writer, with the umask's permissions
    except OSError as e:
        warnings.warn(f"could not write {what} {path}: {e}", stacklevel=4)


class Evaluator:
    """FID / KID of uint8 image sets against a fixed reference set (e.g. the 10,000 test images).

    The reference features are computed once and cached in ``cache_dir`` (default
    ``$DIFFEXP_CACHE_DIR`` or ``~/.cache/diffexp``) under a key made of a hash of the reference
    bytes, ``cache_key_extra`` (the caller's preprocessing description, e.g. ``"pad=2,scale=1.0"``)
    and the feature network's hash; written atomically (temp file, then rename).

    ``features="fashion"`` (default) uses the shipped classifier; ``"inception"`` torchmetrics'
    FID Inception (needs torch-fidelity and a weights download).

    Beside FID/KID every score carries precision, recall, density and coverage (k-NN manifolds
    with ``k = prdc_k``, in the same feature space, against the whole reference) and the class
    balance by the shipped classifier: its predicted-class histogram, the total-variation distance
    to the reference histogram (``reference_labels``' counts; without them, the classifier's
    predictions on the reference) and its mean confidence."""

    def __init__(self, reference_u8, *, device="cpu", cache_dir=None, cache_key_extra: str = "",
                 kid_subset_size: int = 1000, kid_subsets: int = 100, features: str = "fashion",
                 batch_size: int = 500, kid_seed: int = 0, prdc_k: int = DEFAULT_K,
                 reference_labels=None):
        self.prdc_k = validate_k(prdc_k)
        if features == "fashion":
            self.net = load_feature_net(device)
            self.classifier = self.net
        elif features == "inception":
            self.net = load_inception_net(device)
            self.classifier = load_feature_net(device)  # class balance is always by our classifier
        else:
            raise ValueError(f"eval.features must be 'fashion' or 'inception' (got {features!r})")
        self.features = features
        self.device = device
        self.batch_size = int(batch_size)
        self.kid_subset_size = int(kid_subset_size)
        self.kid_subsets = int(kid_subsets)
        self.kid_seed = int(kid_seed)
        self.num_features = int(self.net.num_features)

        ref = as_uint8_images(reference_u8)
        if len(ref) < 2:
            raise ValueError("the FID reference set needs at least 2 images")
        validate_k(self.prdc_k, len(ref))
        self.cache_key = {
            "version": CACHE_VERSION,
            "features": features,
            "feature_net": self.net.sha256,
            "reference": _hash_images(ref),
            "n": len(ref),
            "extra": str(cache_key_extra),
        }
        digest = hashlib.sha256(json.dumps(self.cache_key, sort_keys=True).encode()).hexdigest()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = self.cache_dir / f"fidref-{features}-{digest[:24]}.pt"
        self.loaded_from_cache = False
        self.ref_features = self._load_cache()
        if self.ref_features is None:
            self.ref_features = self._extract(ref)
            self._save_cache(self.ref_features)

        pt = _PassThrough(self.num_features)
        self._fid = FrechetInceptionDistance(feature=pt, reset_real_features=False)
        self._fid.update(self.ref_features, real=True)

        self.num_classes = int(self.classifier.net.head.out_features)
        if reference_labels is not None:
            self.reference_class_hist = class_histogram(reference_labels, self.num_classes)
        else:
            predicted = self.logits(ref, self.ref_features).argmax(1)
            self.reference_class_hist = class_histogram(predicted, self.num_classes)
        self._ref_radii2: Tensor | None = None  # k-NN radii of the reference, on first use

    # -- cache -----------------------------------------------------------------------------------
    def _load_cache(self) -> Tensor | None:
        if not self.cache_path.exists():
            return None
        try:
            blob = torch.load(self.cache_path, map_location="cpu", weights_only=True)
            feats = blob["features"]
            if (json.loads(blob["key"]) != self.cache_key
                    or tuple(feats.shape) != (self.cache_key["n"], self.num_features)):
                return None
        except Exception as e:  # noqa: BLE001 - truncated / foreign file: say so, recompute
            # a cache is derived data: rebuilding it is the remedy, so this is a notice, not an
            # error (a checkpoint or config file, which cannot be rebuilt, is an error instead)
            first = first_line(e, 120)
            say(f"[diffexp] FID reference cache {self.cache_path} is unreadable ({first}); "
                f"recomputing it", stderr=True)
            return None
        self.loaded_from_cache = True
        return feats.double()

    def _save_cache(self, feats: Tensor) -> None:
        # network outputs are float32, so storing float32 loses nothing
        blob = {"key": json.dumps(self.cache_key, sort_keys=True), "features": feats.float()}
        _write_atomically(self.cache_path, lambda f: torch.save(blob, f),
                          "FID reference cache")

    # -- scoring ---------------------------------------------------------------------------------
    def _extract(self, images_u8) -> Tensor:
        return extract_features(self.net, images_u8, self.batch_size)

    @torch.no_grad()
    def logits(self, images_u8, feats: Tensor | None = None) -> Tensor:
        """The shipped classifier's logits ``[N, classes]`` (float64, CPU). With the fashion
        features, ``feats`` (already extracted) go straight into the classifier's head."""
        if feats is not None and self.classifier is self.net:
            head = self.net.net.head
            dev = head.weight.device
            return head(feats.to(dev, head.weight.dtype)).double().cpu()
        x = as_uint8_images(images_u8)
        out = [self.classifier.classify(x[i:i + self.batch_size]).double().cpu()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_classes, dtype=torch.float64)

    def predict(self, images_u8) -> tuple[Tensor, Tensor]:
        """Predicted class and its softmax probability of every image."""
        probs = torch.softmax(self.logits(images_u8), dim=1)
        conf, labels = probs.max(1)
        return labels, conf

    def reference_radii2(self) -> Tensor:
        """The reference's squared k-NN radii (for precision/recall/density/coverage), computed
        once per reference, feature net and k and cached beside the reference features."""
        if self._ref_radii2 is None:
            key = {**self.cache_key, "radii_k": self.prdc_k}
            path = self._derived_path("radii", key, "pt")
            cached = self._read_derived(path, key)
            if isinstance(cached, Tensor) and tuple(cached.shape) == (len(self.ref_features),):
                self._ref_radii2 = cached.double()
            else:
                self._ref_radii2 = knn_radii_squared(self.ref_features, self.prdc_k)
                self._write_derived(path, key, self._ref_radii2)
        return self._ref_radii2

    def score_features(self, feats: Tensor, logits: Tensor | None = None) -> dict:
        """FID / KID, precision / recall / density / coverage of already-extracted features
        ``[n, d]`` against the reference, and, given the classifier's ``logits``, the class
        balance."""
        feats = feats.double().cpu()
        n = len(feats)
        if n < 2:
            raise ValueError(f"FID/KID need at least 2 images (got {n})")
        self._fid.reset()  # keeps the reference statistics (reset_real_features=False)
        self._fid.update(feats, real=False)
        fid = float(self._fid.compute())

        m = min(self.kid_subset_size, n, len(self.ref_features))
        with warnings.catch_warnings():  # "will save all extracted features": that is the point
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(feature=_PassThrough(self.num_features),
                                          subsets=self.kid_subsets, subset_size=m)
        kid.update(self.ref_features, real=True)
        kid.update(feats, real=False)
        with torch.random.fork_rng(devices=[]):  # KID draws subsets from the global RNG
            torch.manual_seed(self.kid_seed)
            kid_mean, kid_std = kid.compute()
        out = {"fid": fid, "kid_mean": float(kid_mean), "kid_std": float(kid_std), "n": n}
        if n > self.prdc_k:
            out.update(manifold_scores(self.ref_features, feats, self.prdc_k,
                                       real_radii2=self.reference_radii2()).as_dict())
        else:
            # a k-th neighbour within the set does not exist: the numbers are undefined, so they
            # are null (and said so), while FID/KID of such a tiny set still are reported
            say(f"[diffexp] precision/recall/density/coverage need more than k={self.prdc_k} "
                f"images (got {n}); left out (null)", stderr=True)
            out.update({k: None for k in MANIFOLD_KEYS}, k=self.prdc_k)
        if logits is not None:
            out.update(class_balance(logits, self.reference_class_hist))
        return out

    def score(self, gen_u8) -> dict:
        """``dict(fid, kid_mean, kid_std, n, precision, recall, density, coverage, k, class_hist,
        class_tv, class_confidence)`` of generated uint8 images ``[n, 1, 28, 28]``."""
        feats = self._extract(gen_u8)
        return self.score_features(feats, self.logits(gen_u8, feats))

    def floor(self, real_u8) -> dict:
        """The same numbers for real images (e.g. ``n`` training images): the value a perfect
        generator would get at this ``n`` (real-vs-real floor). A function of the images, the
        reference, the feature net and the KID/k-NN settings only, so it is cached under a key
        made of all of them: every evaluation at the same ``n`` and seed reuses it."""
        real = as_uint8_images(real_u8)
        key = {**self.cache_key, "floor_images": _hash_images(real),
               "kid": [self.kid_subset_size, self.kid_subsets, self.kid_seed], "k": self.prdc_k}
        path = self._derived_path("floor", key, "json")
        cached = self._read_derived(path, key)
        if isinstance(cached, dict):
            return cached
        out = self.score(real)
        self._write_derived(path, key, out)
        return out

    # -- derived caches (floor scores, reference radii) -------------------------------------------
    def _derived_path(self, kind: str, key: dict, ext: str) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"{kind}-{self.features}-{digest[:24]}.{ext}"

    def _read_derived(self, path: Path, key: dict):
        """The value cached at ``path`` under exactly ``key``; None when absent, foreign or
        unreadable (then it is recomputed, as with the reference features)."""
        if not path.exists():
            return None
        try:
            if path.suffix == ".json":
                blob = json.loads(path.read_text())
            else:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            if json.loads(blob["key"]) != json.loads(json.dumps(key, sort_keys=True)):
                return None
            return blob["value"]
        except Exception as e:  # noqa: BLE001 - a cache is derived data: recompute it
            say(f"[diffexp] cache {path} is unreadable ({first_line(e, 120)}); recomputing it",
                stderr=True)
            return None

    def _write_derived(self, path: Path, key: dict, value) -> None:
        blob = {"key": json.dumps(key, sort_keys=True), "value": value}
        if path.suffix == ".json":
            _write_atomically(path, lambda f: f.write(json.dumps(blob).encode()), "cache")
        else:
            _write_atomically(path, lambda f: torch.save(blob, f), "cache")

