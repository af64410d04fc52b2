"""Entry points: a split as tensors (``load_split``), the training set where training indexes it (``training_images``).

A split is read without any lock when its files and cache are ready. When something must be written first
(download, extraction, preparation), the read is retried holding the node lock, so of N processes on a machine one
does the work and the others wait and then read what it wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import celeba, cifar10, digits, folder, mnist
from .batches import MappedImages, resize_uint8, to_device
from .cache import node_lock
from .catalog import (DATASETS, DamagedDataError, DataConfig, DatasetNotFoundError, NeedsWrite, Split,
                      candidate_roots, check_channels, missing)
from .download import DOWNLOADABLE, download

READERS = {"mnist": mnist.read, "fashion_mnist": mnist.read, "cifar10": cifar10.read, "celeba": celeba.read}
PREPARED = frozenset({"celeba", "folder"})  # cached at the configured size by ``prepare``; the rest are resized here


def _attempt(config: DataConfig, split: str, write: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a split from the first root that has it, downloading into the last one; writes only when ``write``."""
    if config.dataset == "folder":
        if not config.root:
            raise DatasetNotFoundError("config key 'data.root': the folder dataset needs data.root=DIR (a folder of images)")
        return folder.read(config, Path(config.root).expanduser(), split, write)
    reader, roots, errors = READERS[config.dataset], candidate_roots(config), []
    for root in roots:
        if root.is_dir():
            try:
                return reader(config, root, split, write)
            except DamagedDataError:
                raise
            except DatasetNotFoundError as err:
                errors.append(err)
    if config.download and config.dataset in DOWNLOADABLE:
        if not write:
            raise NeedsWrite
        try:
            download(config.dataset, roots[-1])
        except Exception as err:  # noqa: BLE001 - offline, HTTP error, bad checksum: say where the files belong instead
            first_line = (str(err).splitlines() or [""])[0]
            if not isinstance(err, DatasetNotFoundError):  # our own lines are kept whole: they name the file
                first_line = first_line[:120]
            raise missing(config, f"download failed ({type(err).__name__}: {first_line})") from None
        return reader(config, roots[-1], split, write)
    raise errors[-1] if errors else missing(config, "files not found")


def read_array(config: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, C, size, size) images of a split and their labels (or None); memory-mapped for cached datasets."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose from {sorted(DATASETS)}")
    check_channels(config)
    if config.dataset == "digits":
        images, labels = digits.read(split)
    else:
        try:
            images, labels = _attempt(config, split, write=False)
        except NeedsWrite:
            with node_lock(config.dataset):
                images, labels = _attempt(config, split, write=True)
    if config.dataset not in PREPARED:
        images = resize_uint8(torch.from_numpy(np.ascontiguousarray(images)), config.image_size).numpy()
    return images, labels


def load_split(config: DataConfig, split: str = "train", limit: int | None = None) -> Split:
    """Images of one split ("train" or "test") as uint8 (N, C, image_size, image_size) in memory, with labels if any;
    ``limit`` keeps the first images only (read no further from a memory-mapped cache)."""
    images, labels = read_array(config, split)
    if limit is not None:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    images = np.array(images, dtype=np.uint8) if isinstance(images, np.memmap) else np.ascontiguousarray(images)
    return Split(torch.from_numpy(images), None if labels is None else torch.from_numpy(np.asarray(labels)))


def training_images(config: DataConfig, device="cpu") -> torch.Tensor | MappedImages:
    """The train split as training indexes it: one uint8 tensor on ``device`` when it fits data.memory_budget_gb,
    else ``MappedImages`` over the memory-mapped cache (the same batches for the same indices)."""
    images, _ = read_array(config, "train")
    if images.nbytes <= config.memory_budget_gb * 1e9:
        return to_device(images, device)
    return MappedImages(images, device)
