"""Metric formulas on features and predictions: Frechet distance and KID (torch-fidelity's), classifier score."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def feature_statistics(features) -> dict[str, np.ndarray]:
    """Mean and covariance of (N, D) features, in float64 (torch-fidelity's FID statistics)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    features = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if features.dim() != 2 or len(features) < 2:
        raise InputError(f"FID needs at least 2 feature vectors of shape (N, D), got {tuple(features.shape)}")
    return fid_features_to_statistics(features)


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) by torch-fidelity's implementation (the TTUR formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    as64 = [{k: np.asarray(s[k], dtype=np.float64) for k in ("mu", "sigma")} for s in (stats_1, stats_2)]
    return fid_statistics_to_metric(as64[0], as64[1], verbose=False)[KEY_METRIC_FID]


def fid_of_features(features_1, features_2) -> float:
    """Frechet distance between two feature sets."""
    return frechet_distance(feature_statistics(features_1), feature_statistics(features_2))


def kernel_distance(features_1, features_2, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """KID (polynomial-kernel MMD^2 over random subsets) by torch-fidelity; the subset shrinks to the smaller set."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    f1, f2 = (torch.as_tensor(np.asarray(f, dtype=np.float64)) for f in (features_1, features_2))
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise InputError(f"KID needs at least 2 images in each set, got {len(f1)} and {len(f2)}")
    out = kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"mean": out[KEY_METRIC_KID_MEAN], "std": out[KEY_METRIC_KID_STD], "subset_size": size, "subsets": subsets}


def classifier_score(probs) -> float:
    """The Inception Score formula with any classifier: exp(E_x KL(p(y|x) || p(y))), over all rows at once.

    1 when every prediction is the same; K when predictions are confident and spread evenly over K classes.
    """
    p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
    if p.dim() != 2 or len(p) == 0:
        raise InputError(f"classifier score needs (N, K) class probabilities, got shape {tuple(p.shape)}")
    marginal = p.mean(dim=0, keepdim=True)
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)).sum(dim=1)
    return float(kl.mean().exp())


def inception_score(logits, splits: int = 10, seed: int = 0) -> dict:
    """The Inception Score (mean and std over ``splits`` shuffled chunks) by torch-fidelity from Inception logits."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    splits = max(1, min(splits, len(logits)))
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return {"mean": out[KEY_METRIC_ISC_MEAN], "std": out[KEY_METRIC_ISC_STD], "splits": splits}
