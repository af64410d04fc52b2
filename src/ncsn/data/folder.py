"""Your own images: every PNG, JPEG, WebP or BMP file under data.root (recursive), prepared once into a cache.

LSUN (exported from its LMDB to image files) and FFHQ are read this way too. The held-out split is the ``test/``
subfolder when there is one, else a seeded choice of ``data.test_fraction`` of the files (data.split_seed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .catalog import IMAGE_SUFFIXES, DataConfig, DatasetNotFoundError
from .prepare import cached_images

TEST_FOLDER = "test"


def list_images(root: Path) -> list[Path]:
    """Image files under root by suffix (any case), sorted by relative path; hidden files and folders skipped.

    Symlinked folders are followed, but each real folder is read once (a link back up, ``sub/up -> ..``, would
    otherwise repeat the tree until the path grows too long). Names are listed whatever they point to; preparation
    skips broken links and anything that is not a regular file, naming them."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # the first name of a folder linked twice wins
        found += [Path(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def split_files(config: DataConfig, root: Path, split: str) -> list[Path]:
    """The files of one split: test/ against the rest, or a seeded held-out share of all of them."""
    files = list_images(root)
    if not files:
        raise DatasetNotFoundError(f"folder: no PNG, JPEG, WebP or BMP images under {root} (data.root)")
    if (root / TEST_FOLDER).is_dir():
        test_root = root / TEST_FOLDER
        chosen = [p for p in files if (p.parent == test_root or test_root in p.parents) == (split == "test")]
        if not chosen:
            where = f"in {test_root}" if split == "test" else f"under {root} outside {TEST_FOLDER}/"
            raise DatasetNotFoundError(f"folder: no {split} images {where}")
        return chosen
    if len(files) < 2:
        raise DatasetNotFoundError(f"folder: {root} has {len(files)} image; a train and a test split need at least 2")
    n_test = min(len(files) - 1, max(1, round(len(files) * config.test_fraction)))
    order = np.random.default_rng(config.split_seed).permutation(len(files))
    held_out = np.zeros(len(files), dtype=bool)
    held_out[order[:n_test]] = True
    return [p for p, h in zip(files, held_out) if h == (split == "test")]


def read(config: DataConfig, root: Path, split: str, write: bool) -> tuple[np.ndarray, None]:
    """Prepared uint8 (N, C, size, size) images of one split (no labels)."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"folder: data.root {root} is not a folder")
    return cached_images(config, split, root, split_files(config, root, split), config.center_crop, write), None
