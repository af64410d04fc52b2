"""Atomic file writes, the one way this package writes a file: readers see the old file or the new one, never half.

Each write goes to a hidden temporary file in the same folder (``.NAME.TOKEN.HOST-PID.tmp``, host and PID last so
that a run folder can remove the leftovers of this host's killed writers), which is flushed and fsynced, renamed
over the target with
``os.replace``, and then the folder is fsynced so the rename itself survives a power cut. The temporary file is
removed on any failure (a full disk, an exception of the serializer, KeyboardInterrupt). Files get the permissions
of an ordinary ``open``: 0o666 less the process umask (not the owner-only 0o600 of ``tempfile.mkstemp``).
A full disk, a read-only folder or a path below a file raises ``StorageError`` naming the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import storage_errors


def temp_path(path: str | Path) -> Path:
    """A hidden name beside ``path`` that no other writer (thread, process or host) uses at the same time:
    .NAME.TOKEN.HOST-PID.tmp, so that a run folder's clean-up can tell whose it is
    (``ncsn.runfolder.remove_orphan_temp_files``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{socket.gethostname()}-{os.getpid()}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where the system cannot open or sync a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_temp(path: str | Path) -> tuple[IO[bytes], Path]:
    """Create the temporary file for ``path`` (its folder made first): (binary handle, temporary path).

    Finish with ``commit`` or ``discard``; ``atomic_write`` does both for a block of code.
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        return os.fdopen(fd, "wb"), tmp


def commit(fh: IO[bytes], tmp: Path, path: str | Path) -> Path:
    """Flush and fsync ``fh``, close it, rename ``tmp`` over ``path`` and fsync the folder; ``tmp`` is removed if
    any of it fails."""
    path = Path(path)
    try:
        with storage_errors(path):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(tmp, path)
    except BaseException:
        discard(fh, tmp)
        raise
    fsync_dir(path.parent)
    return path


def discard(fh: IO[bytes], tmp: Path) -> None:
    """Close ``fh`` and remove its temporary file (after a failure; never raises for a file already gone)."""
    with contextlib.suppress(OSError):
        fh.close()
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents replace ``path`` when the block ends without an exception."""
    fh, tmp = open_temp(path)
    try:
        with storage_errors(path):
            yield fh
    except BaseException:
        discard(fh, tmp)
        raise
    commit(fh, tmp, path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any, indent: int | None = 2, **dumps) -> Path:
    """``payload`` as JSON (with a final newline)."""
    return write_text(path, json.dumps(payload, indent=indent, **dumps) + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path``."""
    import torch

    with atomic_write(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def save_npz(path: str | Path, compressed: bool = False, **arrays) -> Path:
    """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``path``, which keeps its name (no .npz appended)."""
    import numpy as np

    with atomic_write(path) as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return Path(path)


def save_image(path: str | Path, image, format: str | None = None, **params) -> Path:
    """A PIL image to ``path``; the format comes from the suffix unless given (``save_all=True`` etc. for a GIF)."""
    from PIL import Image

    path = Path(path)
    fmt = format or Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: no image format for the suffix {path.suffix!r}; pass format=")
    with atomic_write(path) as fh:
        image.save(fh, format=fmt, **params)
    return path


def save_figure(path: str | Path, fig, **params) -> Path:
    """A matplotlib figure to ``path`` (format from the suffix)."""
    path = Path(path)
    with atomic_write(path) as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".").lower() or None, **params)
    return path


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file of ``tensors`` (contiguous CPU tensors) with string ``metadata``."""
    from safetensors.torch import save

    return write_bytes(path, save(tensors, metadata=metadata))
