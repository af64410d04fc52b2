"""Which datasets exist, the data section of a config, and where each dataset's files are looked for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class DataConfig:
    """Which dataset, where its files are, how images are prepared and how training batches are made from them.

    ``channels`` is what folder images are converted to (null: ``model.in_channels`` when a run config loads, 3 in
    plain Python); ``center_crop`` is the square cut before resizing (null: CelebA's 140, a folder's largest
    centred square). ``memory_budget_gb`` only decides where batches are read from, never what they are.
    ``max_unpacked_gb`` and ``max_unpack_ratio`` (unpacked size over the archive's) bound what a zip may unpack to.
    """

    dataset: str = "digits"
    root: str | None = None
    image_size: int = 8
    random_flip: bool = False
    dequantize: bool = True
    download: bool = True
    channels: int | None = None
    center_crop: int | None = None
    test_fraction: float = 0.05
    split_seed: int = 0
    memory_budget_gb: float = 4.0
    max_unpacked_gb: float = 64.0
    max_unpack_ratio: float = 100.0


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    native_size: int
    files: str


@dataclass
class Split:
    """One split: images as uint8 (N, C, H, W) and class labels when the dataset has them."""

    images: torch.Tensor
    labels: torch.Tensor | None


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing or unreadable; the message says where they are expected."""


class DamagedDataError(DatasetNotFoundError):
    """The files are there but cannot be used (a binary partition list, a truncated or oversized zip): reported at
    once, naming the file, instead of looking in other roots or downloading, which would hide it."""


class NeedsWrite(Exception):  # noqa: N818 - a signal, not an error: retry holding the node's lock
    """Reading this split would download, extract or prepare files: the caller retries under the node lock."""


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATASETS = {
    "digits": DatasetInfo(1, 8, "scikit-learn's embedded load_digits (no files needed)"),
    "mnist": DatasetInfo(1, 28, "the four IDX files train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte"),
    "fashion_mnist": DatasetInfo(1, 28, "the four Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)"),
    "cifar10": DatasetInfo(3, 32, "cifar-10-batches-py/ with data_batch_1..5 and test_batch (the python version)"),
    "celeba": DatasetInfo(3, 178, "img_align_celeba/ (or img_align_celeba.zip) with the aligned JPEGs, "
                                  "optionally list_eval_partition.txt"),
    "folder": DatasetInfo(3, 0, "PNG, JPEG, WebP or BMP files anywhere under data.root (a test/ subfolder is the "
                                "held-out split)"),
}
FOLDER_CHANNELS = (1, 3)
CELEBA_CROP = 140
SYSTEM_ROOTS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}


def cache_dir() -> Path:
    """Where downloads and prepared arrays go unless a root is given: $NCSN_DATA or ~/.cache/ncsn."""
    return Path(os.environ.get("NCSN_DATA", Path.home() / ".cache" / "ncsn"))


def candidate_roots(config: DataConfig) -> list[Path]:
    """Folders searched for a dataset's files, in order; downloads go to the last one."""
    if config.root:
        return [Path(config.root).expanduser()]
    return [Path(p) for p in SYSTEM_ROOTS.get(config.dataset, [])] + [cache_dir() / config.dataset]


def missing(config: DataConfig, detail: str) -> DatasetNotFoundError:
    """The one-line error for absent files: what was wrong, what is expected where, and how to fix it."""
    where = " or ".join(str(p) for p in candidate_roots(config))
    hint = "set data.root=DIR to point at them" + ("" if config.download else ", or data.download=true when online")
    return DatasetNotFoundError(
        f"{config.dataset}: {detail}; expected {DATASETS[config.dataset].files} in {where} ({hint})"
    )


def check_channels(config: DataConfig) -> int:
    """The channel count asked for, refused when the dataset's images cannot give it."""
    wanted = config.channels
    if config.dataset == "folder":
        wanted = 3 if wanted is None else wanted
        if wanted not in FOLDER_CHANNELS:
            raise ValueError(f"data.channels: folder images convert to 1 (grey) or 3 (RGB) channels, not {wanted}")
        return wanted
    native = DATASETS[config.dataset].channels
    if wanted is not None and wanted != native:
        raise ValueError(f"data.channels: {config.dataset} has {native} channel(s), not {wanted}")
    return native

