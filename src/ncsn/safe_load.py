"""Loading a pickle without running code: ``torch.load(weights_only=True)`` with numpy scalars admitted by name, and
one clear CheckpointError for every way a file can fail (corrupt, truncated, not a pickle, holding code, weights
holding NaN or infinity: ``check_finite``)."""

from __future__ import annotations

import contextlib
import io
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError

# Score-SDE's optimizer state holds numpy.float64 learning rates: numpy's scalar under its numpy 1 and numpy 2 pickle
# names, numpy.dtype and the basic dtype classes are admitted, and nothing else.
_SCALAR = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
_DTYPES = [type(np.dtype(code)) for code in "?bhilqBHILQefd"]
NUMPY_GLOBALS = [_SCALAR, np.dtype, (_SCALAR, "numpy.core.multiarray.scalar"),
                 (_SCALAR, "numpy._core.multiarray.scalar"), *_DTYPES]
NUMPY_NAMES = {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype",
               *(f"{t.__module__}.{t.__qualname__}" for t in _DTYPES)}


def numpy_scalars():
    """Context in which ``torch.load(weights_only=True)`` also admits numpy scalars and dtypes (no callables)."""
    try:
        return torch.serialization.safe_globals(NUMPY_GLOBALS)
    except AttributeError:  # a torch without the allowlist API: numpy scalars stay refused
        return contextlib.nullcontext()


def _pickle_imports(data: bytes) -> list[str] | None:
    """Every global a pickle stream imports ('module.name'); None when the bytes hold no complete pickle."""
    stream, names, complete = io.BytesIO(data), [], 0
    while stream.tell() < len(data):  # the legacy torch format is several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - pickletools raises several types on bytes that are not a pickle
            break
        complete += 1
    return list(dict.fromkeys(names)) if complete else None


def _code_in_file(path: Path) -> list[str]:
    """What the file's (complete) pickle imports beyond the tensors and containers weights_only admits; [] if none
    or if the pickle is incomplete (a truncated file is corrupt, not code)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # private: without it, name every import

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = set()
    allowed |= NUMPY_NAMES  # the numpy scalars safe_load admits (Score-SDE's optimizer state)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError):
        return []
    imports = _pickle_imports(data) if data else None
    return [n for n in imports or [] if n not in allowed]


# What the unpickler raises on bytes that are no pickle at all (a text file: 'h' reads as a memo lookup -> KeyError)
NOT_A_PICKLE = (KeyError, IndexError, TypeError, AttributeError, struct.error, OverflowError, MemoryError)


def safe_load(path: str | Path, map_location="cpu"):
    """torch.load with weights_only=True, turning every failure into one clear CheckpointError.

    A refusal is recognised from the pickle's own imports, not from torch's wording (which changes between
    releases): a complete pickle importing anything beyond tensors and plain containers holds code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. torch's note on pickle protocols it did not write
            with numpy_scalars():  # numpy scalars and dtypes only: still no callables
                return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            *NOT_A_PICKLE) as err:
        code = _code_in_file(path) if isinstance(err, pickle.UnpicklingError | RuntimeError) else []
        if code:
            shown = ", ".join(code[:3]) + (", ..." if len(code) > 3 else "")
            raise CheckpointError(
                f"{path}: refused: it holds code, not just tensors (loading it would import {shown})"
            ) from None
        if isinstance(err, (pickle.UnpicklingError, *NOT_A_PICKLE)):
            raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a PyTorch file)") from None
        first = (str(err).splitlines() or [type(err).__name__])[0][:100]
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first})") from None


def check_finite(state_dict: dict, source, which: str = "weights") -> None:
    """Refuse weights holding NaN or infinity (they would sample black or white images without an error), naming the
    first such tensor."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: its {which} hold NaN or infinity ({bad} of {value.numel()} values of "
                                  f"{name!r}); the run diverged or the file is damaged")
