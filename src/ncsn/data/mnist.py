"""MNIST and Fashion-MNIST: the four IDX files (plain or gzipped), read straight into uint8 arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .catalog import DataConfig, DatasetNotFoundError, missing

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or .gz): the big-endian format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetNotFoundError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DatasetNotFoundError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetNotFoundError(f"{path}: truncated IDX file ({data.size} values for shape {shape})")
    return data.reshape(shape).astype(dtypes[raw[2]].lstrip(">"))


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read(config: DataConfig, root: Path, split: str, write: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, 1, 28, 28) images and int64 labels of one split from the IDX files in ``root``."""
    image_file, label_file = (_find_file(root, stem) for stem in IDX_FILES[split])
    if image_file is None:
        raise missing(config, f"no {IDX_FILES[split][0]} in {root}")
    labels = read_idx(label_file).astype(np.int64) if label_file else None
    return read_idx(image_file)[:, None], labels
