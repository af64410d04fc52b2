"""The library's own error types. The command line reports these (and only these) as one `Error: ...` line;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


class NcsnError(Exception):
    """Base of every error about the user's input or the state of their files, worded as one line naming the culprit."""


class InputError(NcsnError, ValueError):
    """A value, option or file given by the user that cannot be used (also a ValueError, as it always was)."""


class StorageError(NcsnError, OSError):
    """A file or folder that could not be written: a full disk, a read-only file system, a path below a file."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


# errno values that describe the machine or the user's paths, never a bug of the program
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
    errno.ENAMETOOLONG, errno.EFBIG,
})


def _file_above(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists as something other than a folder."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def storage_message(err: OSError, path: str | Path | None = None) -> str | None:
    """One line for an OSError caused by the machine or the paths given (None for any other OSError)."""
    if err.errno not in ENVIRONMENT_ERRNOS:
        return None
    target = Path(path if path is not None else err.filename) if (path or err.filename) else None
    reason = err.strerror or os.strerror(err.errno)
    if target is None:
        return reason
    if err.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := _file_above(target)) is not None:
        return f"{target}: cannot create it, {blocker} is a file, not a folder"
    return f"{target}: {reason}"


@contextlib.contextmanager
def storage_errors(path: str | Path):
    """Turn a write failure of the environment (disk full, read-only, ...) into a StorageError naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as err:
        message = storage_message(err, err.filename or path)
        if message is None:
            raise
        raise StorageError(err.errno, message) from None


class CheckpointError(NcsnError, ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or foreign. One line, naming the file."""
