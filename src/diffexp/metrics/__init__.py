"""FID/KID, precision/recall, density/coverage and class balance in the feature space of
diffexp's own Fashion-MNIST classifier (or, where its weights can be loaded, torchmetrics'
Inception). Free of Lightning and Hydra."""

from .classes import class_balance, class_histogram, mean_confidence, total_variation
from .features import (
    FashionClassifier,
    FashionFeatureNet,
    FeatureNetError,
    feature_net_info,
    load_feature_net,
    load_inception_net,
)
from .fid import Evaluator, default_cache_dir, extract_features, frechet_distance
from .prdc import DEFAULT_K, ManifoldScores, knn_radii_squared, manifold_scores, validate_k

__all__ = [
    "DEFAULT_K",
    "Evaluator",
    "ManifoldScores",
    "class_balance",
    "class_histogram",
    "knn_radii_squared",
    "manifold_scores",
    "mean_confidence",
    "total_variation",
    "validate_k",
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
