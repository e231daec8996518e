"""The feature network for FID/KID: a small Fashion-MNIST classifier shipped inside the package.

Inception weights cannot be downloaded on our machines and Inception features suit 28x28 grey
clothing poorly, so FID/KID are measured in the penultimate layer of our own classifier
(``scripts/train_fid_classifier.py`` trains it; ``fashion_classifier.pt`` + ``.json`` ship here).

Every caller passes **uint8** images ``[N, 1, 28, 28]`` (or ``[N, 28, 28]``): the module converts to
float itself, so real and generated images go through exactly the same path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "ARCH",
    "FEATURE_DIM",
    "WEIGHTS_PATH",
    "INFO_PATH",
    "FeatureNetError",
    "FashionClassifier",
    "FashionFeatureNet",
    "InceptionFeatureNet",
    "INCEPTION_ERROR",
    "load_feature_net",
    "load_inception_net",
    "feature_net_info",
    "file_sha256",
    "as_uint8_images",
]

ARCH = "fashion-cnn-v1"
FEATURE_DIM = 128
WEIGHTS_PATH = Path(__file__).with_name("fashion_classifier.pt")
INFO_PATH = Path(__file__).with_name("fashion_classifier.json")

# Fashion-MNIST train-split pixel mean / std (of u8 / 255).
_MEAN, _STD = 0.2860, 0.3530

INCEPTION_ERROR = ("eval.features=inception needs torch-fidelity and its FID Inception weights, "
                   "which could not be loaded ({reason}); use eval.features=fashion")


class FeatureNetError(RuntimeError):
    """The feature network could not be loaded (missing/corrupt weights, no Inception)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def as_uint8_images(x) -> Tensor:
    """Check and shape ``x`` as uint8 ``[N, 1, H, W]`` (accepts ``[N, H, W]`` and numpy arrays)."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise TypeError(f"FID/KID images must be uint8 in [0, 255] (got dtype {x.dtype}); "
                        f"convert with diffexp.data.to_uint8 / decode first")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"FID/KID images must be [N, 1, H, W] or [N, H, W] (got {tuple(x.shape)})")
    return x


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class FashionClassifier(nn.Module):
    """``fashion-cnn-v1``: conv32-pool-conv64-conv64-pool-conv128-pool -> fc128 (feature) -> fc10.

    ``forward(u8)`` gives logits, ``features(u8)`` the 128-d post-ReLU penultimate activations."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(
            *_block(1, 32), nn.MaxPool2d(2),                     # 14x14
            *_block(32, 64), *_block(64, 64), nn.MaxPool2d(2),   # 7x7
            *_block(64, 128), nn.MaxPool2d(2),                   # 3x3
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(128 * 3 * 3, feature_dim, bias=False), nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def preprocess(u8: Tensor) -> Tensor:
        u8 = as_uint8_images(u8)
        return u8.float().div_(255.0).sub_(_MEAN).div_(_STD)

    def features_from_float(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x))

    def features(self, u8: Tensor) -> Tensor:
        return self.features_from_float(self.preprocess(u8))

    def forward(self, u8: Tensor) -> Tensor:
        return self.head(self.drop(self.features(u8)))


class FashionFeatureNet(nn.Module):
    """The frozen classifier as a torchmetrics feature extractor: uint8 [N,1,28,28] -> [N,128].

    Has ``num_features`` (so torchmetrics' ``FrechetInceptionDistance(feature=net)`` /
    ``KernelInceptionDistance(feature=net)`` need no probe) and never leaves eval mode."""

    def __init__(self, classifier: FashionClassifier, sha256: str = ""):
        super().__init__()
        self.net = classifier
        self.num_features = int(classifier.head.in_features)
        self.sha256 = sha256
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FashionFeatureNet:  # noqa: ARG002 - always eval
        return super().train(False)

    @torch.no_grad()
    def forward(self, u8: Tensor) -> Tensor:
        dev = next(self.net.parameters()).device
        return self.net.features(as_uint8_images(u8).to(dev))

    @torch.no_grad()
    def classify(self, u8: Tensor) -> Tensor:
        dev = next(self.net.parameters()).device
        return self.net(as_uint8_images(u8).to(dev))


class InceptionFeatureNet(nn.Module):
    """torchmetrics' FID Inception (2048-d pool features) for grey uint8 images: channels repeated
    to 3; torchmetrics resizes to 299 itself."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.net = inception
        self.num_features = 2048
        self.sha256 = "inception-v3-compat-2048"
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> InceptionFeatureNet:  # noqa: ARG002
        return super().train(False)

    @torch.no_grad()
    def forward(self, u8: Tensor) -> Tensor:
        dev = next(self.net.parameters()).device
        x = as_uint8_images(u8).to(dev)
        return self.net(x.expand(-1, 3, -1, -1).contiguous())


def feature_net_info() -> dict:
    """The JSON shipped beside the weights (accuracy, sha256, arch, command, seed, epochs, ...)."""
    if not INFO_PATH.exists():
        raise FeatureNetError(f"feature-net description {INFO_PATH} is missing; "
                              f"run scripts/train_fid_classifier.py to create it")
    return json.loads(INFO_PATH.read_text())


def load_feature_net(device="cpu") -> FashionFeatureNet:
    """The shipped classifier as a frozen, eval-mode feature extractor on ``device``.

    Checks the weights' sha256 against the JSON and raises :class:`FeatureNetError` on mismatch."""
    info = feature_net_info()
    if not WEIGHTS_PATH.exists():
        raise FeatureNetError(f"feature-net weights {WEIGHTS_PATH} are missing; "
                              f"run scripts/train_fid_classifier.py to create them")
    digest = file_sha256(WEIGHTS_PATH)
    if digest != info.get("sha256"):
        raise FeatureNetError(
            f"feature-net weights {WEIGHTS_PATH} have sha256 {digest} but {INFO_PATH.name} records "
            f"{info.get('sha256')}; the file is corrupt or out of date (retrain with "
            f"scripts/train_fid_classifier.py, or restore both files from git)")
    if info.get("arch") != ARCH:
        raise FeatureNetError(f"feature net arch {info.get('arch')!r} is not {ARCH!r} "
                              f"(this diffexp version cannot build it)")
    clf = FashionClassifier(feature_dim=int(info.get("feature_dim", FEATURE_DIM)))
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    clf.load_state_dict(state)
    return FashionFeatureNet(clf, sha256=digest).to(device)


def load_inception_net(device="cpu") -> InceptionFeatureNet:
    """torchmetrics' Inception v3 (FID weights) or one clear :class:`FeatureNetError` line."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        inc = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    except Exception as e:  # no torch-fidelity, no network, corrupt download ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = f"{type(e).__name__}: {reason}"
        raise FeatureNetError(INCEPTION_ERROR.format(reason=reason)) from None
    return InceptionFeatureNet(inc).to(device)
