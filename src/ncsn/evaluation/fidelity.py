"""Inception Score, FID and KID through torch-fidelity's TensorFlow-compatible InceptionV3 (the literature's numbers).

The weights file is torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``: taken from ``--inception-weights``,
from torch hub's checkpoint cache, or downloaded there. It is checked to hold tensors only before torch-fidelity
reads it. Reference features of a split are cached as .npz beside the data, keyed by the weights and the images.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data import DataConfig
from ..errors import CheckpointError, NcsnError
from ..safe_load import safe_load
from .metrics import fid_of_features, inception_score, kernel_distance
from .reference import cached_arrays, eval_cache, file_fingerprint, reference_split

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
EXTRACTOR = "inception-v3-compat"
POOL, LOGITS = "2048", "logits_unbiased"


class InceptionWeightsError(NcsnError, ValueError):
    """The Inception weights are missing or not a weights file; the message names the file and where it goes."""


def default_weights_path() -> Path:
    """Where torch-fidelity's own download puts the weights: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def _download(target: Path, timeout: float = 30.0) -> str:
    """Fetch torch-fidelity's weights into ``target``; '' on success, else why not (offline, HTTP error)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
        return ""
    except Exception as err:  # noqa: BLE001 - any failure becomes part of the caller's one-line message
        return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:80]}"
    finally:
        socket.setdefaulttimeout(previous)


def resolve_inception_weights(path: str | Path | None = None, download: bool = True) -> Path:
    """The weights file to use, downloaded into torch hub's cache when absent; one clear line when it cannot be had."""
    if path is not None:
        weights = Path(path)
        if not weights.is_file():
            raise InceptionWeightsError(f"--inception-weights {weights}: no such file (torch-fidelity's {WEIGHTS_FILE})")
    else:
        weights = default_weights_path()
        why = _download(weights) if not weights.is_file() and download else "download disabled"
        if not weights.is_file():
            raise InceptionWeightsError(
                f"Inception weights not found ({why}): put torch-fidelity's {WEIGHTS_FILE} in "
                f"{weights.parent}/ or pass --inception-weights PATH"
            )
    try:
        state = safe_load(weights)
    except CheckpointError as err:
        raise InceptionWeightsError(f"Inception weights {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{weights}: not an InceptionV3 state dict (expected {WEIGHTS_FILE})")
    return weights


class _Uint8Images(Dataset):
    """uint8 (N, C, H, W) images as the 3-channel uint8 tensors torch-fidelity's extractors take."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def inception_features(images: torch.Tensor, weights: Path, device="cpu", batch_size: int = 100,
                       layers: tuple[str, ...] = (POOL, LOGITS)) -> dict[str, np.ndarray]:
    """torch-fidelity's InceptionV3 features (pool '2048', 'logits_unbiased') of uint8 images; grey is repeated to RGB."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cuda = torch.device(device).type == "cuda"
    extractor = create_feature_extractor(EXTRACTOR, list(layers), cuda=cuda,
                                         feature_extractor_weights_path=str(weights), verbose=False)
    feats = get_featuresdict_from_dataset(_Uint8Images(images), extractor, batch_size, cuda, save_cpu_ram=True,
                                          verbose=False)
    return {k: v.double().numpy() for k, v in feats.items()}


def inception_reference(data: DataConfig, split: str, weights: Path, device="cpu") -> np.ndarray:
    """Pool features of a real split, computed once per (weights, images) and cached beside the data."""
    images, _, split_fp = reference_split(data, split)
    path = eval_cache(data) / f"inception_{file_fingerprint(weights)}_{data.image_size}px_{split}_{split_fp}.npz"
    return cached_arrays(path, lambda: {POOL: inception_features(images, weights, device, layers=(POOL,))[POOL]})[POOL]


def inception_metrics(features: dict[str, np.ndarray], wanted: set[str], reference: np.ndarray | None,
                      isc_splits: int = 10, kid_subset_size: int = 1000, seed: int = 0) -> dict:
    """IS from the samples' logits; FID and KID of their pool features against the reference features."""
    out = {}
    if "is" in wanted:
        out["is"] = inception_score(features[LOGITS], splits=isc_splits, seed=seed)
    if "fid" in wanted:
        out["fid"] = {"samples": fid_of_features(features[POOL], reference), "n_samples": len(features[POOL]),
                      "n_reference": len(reference)}
    if "kid" in wanted:
        out["kid"] = kernel_distance(features[POOL], reference, subset_size=kid_subset_size, seed=seed)
    return out
