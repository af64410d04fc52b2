"""Reference data for the metrics: a dataset's split, its fingerprint, and arrays cached next to the data.

Caches are plain .npz files read with ``allow_pickle=False`` (loading runs no code), keyed by a hash of the images
themselves, so a different copy or size of a dataset never reuses another's statistics.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data import DataConfig, cache_dir, load_split
from ..errors import InputError
from ..io import save_npz


def fingerprint(images: torch.Tensor) -> str:
    """First 12 hex digits of the SHA-1 of the uint8 images and their shape."""
    digest = hashlib.sha1(str(tuple(images.shape)).encode(), usedforsecurity=False)
    digest.update(np.ascontiguousarray(images.cpu().numpy()).tobytes())
    return digest.hexdigest()[:12]


def file_fingerprint(path: str | Path) -> str:
    """First 12 hex digits of the SHA-1 of a file (weights that feature caches depend on)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def eval_cache(data: DataConfig) -> Path:
    """Where the metrics' classifier and reference statistics for a dataset live: <cache_dir>/<dataset>/eval."""
    return cache_dir() / data.dataset / "eval"


def cached_arrays(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Read ``path`` (.npz) if present, else compute the arrays and write them atomically."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = compute()
    save_npz(path, **arrays)
    return arrays


def reference_split(data: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(uint8 images at the configured size, labels, fingerprint) of one split."""
    loaded = load_split(data, split)
    return loaded.images, loaded.labels, fingerprint(loaded.images)


def hwc_to_nchw(samples: np.ndarray) -> torch.Tensor:
    """samples.npz's uint8 (N, H, W, C) as the library's uint8 (N, C, H, W)."""
    samples = np.asarray(samples)
    if samples.dtype != np.uint8 or samples.ndim != 4:
        raise InputError(f"samples must be uint8 (N, H, W, C), got {samples.dtype} {samples.shape}")
    return torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).contiguous()


def read_samples(path: str | Path):
    """uint8 (N, C, H, W) samples from a samples.npz (uint8 N x H x W x C under 'samples'), read without pickle; a file
    that is not one is an InputError naming it."""
    problem = (ValueError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)
    try:
        loaded = np.load(path, allow_pickle=False)
    except problem:
        raise InputError(f"{path}: not a samples.npz file (uint8 N x H x W x C under 'samples')") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile) or "samples" not in loaded.files:
        raise InputError(f"{path}: not a samples.npz file (it has no 'samples' array)")
    with loaded:
        try:
            return hwc_to_nchw(loaded["samples"])
        except problem as err:
            raise InputError(f"{path}: {(str(err).splitlines() or [''])[0]}") from None
