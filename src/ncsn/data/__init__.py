"""Datasets as uint8 arrays (N, C, H, W) read from their real formats, prepared caches, and the training batch path.

Files by concern:

- ``catalog``: the data config section, the dataset table, where files are looked for, the error types.
- ``mnist``, ``cifar10``, ``celeba``, ``folder``, ``digits``: one reader per source of images.
- ``download``: official URLs and MD5 sums, atomic extraction of archives.
- ``prepare`` and ``cache``: image files to a cached uint8 .npy (streamed, keyed, written atomically, one process
  per machine under a file lock).
- ``batches``: device tensor or memory-mapped source, and the uint8 -> [0, 1] transforms of a training batch.
- ``load``: ``load_split`` and ``training_images``, which tie the above together.
"""

from .batches import MappedImages, prepare_batch, resize_uint8, to_device, to_uint8_hwc
from .catalog import (
    CELEBA_CROP,
    DATASETS,
    FOLDER_CHANNELS,
    IMAGE_SUFFIXES,
    DataConfig,
    DatasetInfo,
    DatasetNotFoundError,
    Split,
    cache_dir,
    candidate_roots,
    check_channels,
)
from .load import load_split, read_array, training_images
from .mnist import read_idx
from .prepare import ImageTooSmallError, UnreadableImagesWarning

__all__ = [
    "CELEBA_CROP", "DATASETS", "FOLDER_CHANNELS", "IMAGE_SUFFIXES", "DataConfig", "DatasetInfo", "DatasetNotFoundError",
    "ImageTooSmallError", "MappedImages", "Split", "UnreadableImagesWarning", "cache_dir", "candidate_roots",
    "check_channels", "load_split", "prepare_batch", "read_array", "read_idx", "resize_uint8", "to_device",
    "to_uint8_hwc", "training_images",
]
