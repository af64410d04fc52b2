"""Prepared arrays on disk: their keys and names, the node lock, and the atomic front-to-back .npy writer.

A cache file is a plain uint8 .npy (N, C, H, W) that ``np.load(mmap_mode="r")`` maps without reading it. It is
written to a temporary name and renamed into place only when complete, so an interrupted or disk-full preparation
leaves nothing a later run would take for finished. Its name carries a hash of everything that decides its bytes
(format version, settings, the file list with sizes and modification times), so other settings or other files
never reuse it: they get a cache of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..io import commit, discard, open_temp
from .catalog import cache_dir

FORMAT_VERSION = 2  # 2: 16-bit grey, CMYK and transparency converted with their range (ncsn.data.prepare)
HEADER_BYTES = 128  # a fixed .npy header, rewritten with the final row count (keeps the data 64-byte aligned)

try:
    import fcntl
except ImportError:  # not POSIX: the filelock package (a torch dependency) does the same
    fcntl = None


@contextlib.contextmanager
def node_lock(dataset: str) -> Iterator[None]:
    """Hold ``<cache>/<dataset>/.lock`` (flock): one process per machine downloads, extracts or prepares at a time.

    Under torchrun every rank calls this; the first prepares, the others wait here and then find the files ready.
    """
    folder = cache_dir() / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    if fcntl is None:
        from filelock import FileLock

        with FileLock(str(path)):
            yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{dataset}: waiting for another process that is preparing it ({path})", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def temporary_name(path: Path, suffix: str = "tmp") -> Path:
    """A hidden name next to ``path`` that no other process, on this machine or another, writes at the same time."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.{suffix}")


def remove_stale(path: Path, suffix: str = "tmp") -> None:
    """Delete what killed writers left behind: temporary files of ``path`` from any host, and every temporary file
    this host made in its folder (a cache of other settings or files, e.g. one whose preparation was killed). Only
    called while holding the node lock, so no writer of this machine is running there."""
    host = socket.gethostname()
    for stale in {*path.parent.glob(f".{path.name}.*.{suffix}"), *path.parent.glob(f".*.{host}-*.{suffix}")}:
        if stale.is_file():
            stale.unlink(missing_ok=True)


def file_entries(base: Path, files: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(path relative to base, bytes, modification time in ns) of each file: what a cache key is built from.

    A file that cannot be stat'ed (a broken symlink, a symlink loop) counts as size -1: preparation skips it, and
    the key changes when it becomes readable."""
    out = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            out.append((path.relative_to(base).as_posix(), -1, 0))
            continue
        out.append((path.relative_to(base).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def cache_key(settings: dict, entries: Sequence[tuple[str, int, int]]) -> str:
    """16 hex digits of the SHA-1 of the format version, the settings and the file entries."""
    digest = hashlib.sha1(json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True).encode(),
                          usedforsecurity=False)
    for rel, size, mtime in entries:
        digest.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def open_cached(path: Path, row_shape: tuple[int, ...]) -> np.memmap | None:
    """The cache at ``path`` memory-mapped, or None when it is absent or not the uint8 array it should be."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or tuple(array.shape[1:]) != tuple(row_shape) or len(array) == 0:
        return None
    return array


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header for a C-ordered uint8 array, padded to exactly HEADER_BYTES."""
    text = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    text = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


class NpyWriter:
    """Appends uint8 rows of one shape to a temporary .npy; ``commit`` fixes the row count and renames it into place.

    Used as a context manager: leaving the block uncommitted (disk full, a bad image) removes the temporary file.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.rows, self.committed = Path(path), tuple(row_shape), 0, False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.path)
        self._fh, self.tmp = open_temp(self.path)  # closed by commit or abort
        try:
            self._fh.write(_npy_header((0, *self.row_shape)))
        except OSError:
            self.abort()
            raise

    def append(self, rows: np.ndarray) -> None:
        if rows.dtype != np.uint8 or tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(f"expected uint8 rows of shape {self.row_shape}, got {rows.dtype} {tuple(rows.shape[1:])}")
        self._fh.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)

    def commit(self) -> Path:
        self._fh.seek(0)
        self._fh.write(_npy_header((self.rows, *self.row_shape)))
        commit(self._fh, self.tmp, self.path)
        self.committed = True
        return self.path

    def abort(self) -> None:
        discard(self._fh, self.tmp)

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
