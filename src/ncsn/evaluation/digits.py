"""The digits demo's quick check: a logistic regression on real digits scores the samples."""

from __future__ import annotations

import numpy as np
import torch


def digits_quality(samples: np.ndarray, seed: int = 0) -> dict:
    """Does a classifier of real digits find the samples as convincing as real held-out digits?

    A logistic regression on the 64 pixels is fitted on the digits training split. Reported: mean top-class
    probability of the samples and of the real test split, the samples' class shares, and the largest share's
    deviation from 1/10. ``samples`` is uint8 (N, H, W, 1); other sizes are resized to 8x8 first.
    """
    from sklearn.linear_model import LogisticRegression

    from ..data import DataConfig, load_split, resize_uint8

    cfg = DataConfig(dataset="digits", image_size=8)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")

    def features(images_nchw: torch.Tensor) -> np.ndarray:
        return (resize_uint8(images_nchw, 8).float() / 255.0).flatten(1).numpy()

    clf = LogisticRegression(max_iter=5000, random_state=seed).fit(features(train.images), train.labels.numpy())
    sample_images = torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2)
    p_samples = clf.predict_proba(features(sample_images))
    p_real = clf.predict_proba(features(test.images))
    shares = np.bincount(p_samples.argmax(1), minlength=10) / len(p_samples)
    return {
        "sample_confidence": float(p_samples.max(1).mean()),
        "real_confidence": float(p_real.max(1).mean()),
        "real_accuracy": float((p_real.argmax(1) == test.labels.numpy()).mean()),
        "class_shares": [round(float(s), 4) for s in shares],
        "max_share_deviation": float(np.abs(shares - 0.1).max()),
        "n_samples": len(samples),
    }
