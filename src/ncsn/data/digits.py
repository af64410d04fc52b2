"""scikit-learn's embedded 8x8 digits: no files, no download, a fixed split."""

from __future__ import annotations

import numpy as np
import torch


def read(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits (values 0..16) as uint8 in [0, 255] (N, 1, 8, 8) with labels; a fixed 1,500 / 297 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).numpy()
    keep = order[:1500] if split == "train" else order[1500:]
    return images[keep], digits.target.astype(np.int64)[keep]
