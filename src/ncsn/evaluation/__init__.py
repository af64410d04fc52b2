"""Sample-quality and model-comparison metrics: Inception IS/FID/KID (torch-fidelity), a small classifier's FID and
score for grey-scale data, the held-out DSM loss per level, nearest training images, and checkpoint sweeps."""

from .classifier import SmallClassifier, classifier_outputs, get_classifier
from .digits import digits_quality
from .fidelity import InceptionWeightsError, inception_features, resolve_inception_weights
from .heldout import heldout_dsm_loss
from .metrics import classifier_score, feature_statistics, fid_of_features, frechet_distance, kernel_distance
from .neighbours import closeness_test, nearest_neighbours, neighbour_report
from .report import METRICS, default_metrics, evaluate_samples, parse_metrics, sweep_metric
from .sweep import pick_best, write_sweep

__all__ = [
    "METRICS",
    "InceptionWeightsError",
    "SmallClassifier",
    "classifier_outputs",
    "classifier_score",
    "closeness_test",
    "default_metrics",
    "digits_quality",
    "evaluate_samples",
    "feature_statistics",
    "fid_of_features",
    "frechet_distance",
    "get_classifier",
    "heldout_dsm_loss",
    "inception_features",
    "kernel_distance",
    "nearest_neighbours",
    "neighbour_report",
    "parse_metrics",
    "pick_best",
    "resolve_inception_weights",
    "sweep_metric",
    "write_sweep",
]
