"""FID/KID in the feature space of diffexp's own Fashion-MNIST classifier (or, where its weights
can be loaded, torchmetrics' Inception). Free of Lightning and Hydra."""

from .features import (
    FashionClassifier,
    FashionFeatureNet,
    FeatureNetError,
    feature_net_info,
    load_feature_net,
    load_inception_net,
)
from .fid import Evaluator, default_cache_dir, extract_features, frechet_distance

__all__ = [
    "Evaluator",
    "FashionClassifier",
    "FashionFeatureNet",
    "FeatureNetError",
    "default_cache_dir",
    "extract_features",
    "feature_net_info",
    "frechet_distance",
    "load_feature_net",
    "load_inception_net",
]
