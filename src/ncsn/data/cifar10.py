"""CIFAR-10's python batches (or the cifar-10-python.tar.gz they come in), unpickled as numpy arrays only."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .catalog import DataConfig, DatasetNotFoundError, NeedsWrite, missing
from .download import extract

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that refuses anything but numpy arrays (no code runs on load)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def read(config: DataConfig, root: Path, split: str, write: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels of one split; the archive is unpacked once when that is all."""
    folder = root / FOLDER if (root / FOLDER).is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((folder / n).is_file() for n in names):
        if not (root / ARCHIVE).is_file():
            raise missing(config, f"no {names[0]} in {folder}")
        if not write:
            raise NeedsWrite
        folder = extract(root / ARCHIVE, FOLDER)
    images, labels = [], []
    for name in names:
        with (folder / name).open("rb") as fh:
            try:
                batch = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise DatasetNotFoundError(f"{folder / name}: not a CIFAR-10 python batch ({err})") from None
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
