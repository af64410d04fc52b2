"""Guards of a run folder: one training process at a time (an OS lock), clean-up of the temp files that killed
writers leave behind, the run's config.yaml, and the history of what each resume changed (resumes.jsonl).

What is supported: a run folder is trained in from one host at a time. The lock is ``flock`` on POSIX and filelock's
OS lock elsewhere (Windows); across hosts it holds only where the filesystem makes flock coherent (local disks,
NFSv4; not NFSv3 or some parallel filesystems), so never start two trainers on one folder from two hosts. Temp files
are cleaned only when they are provably orphaned: named for this host and a dead PID, or (older names without a host)
untouched for an hour, so a writer on another host that shares the folder keeps its file.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: filelock's msvcrt lock, which the OS also drops when the process dies
    fcntl = None

from .config import RunConfig, to_yaml
from .errors import NcsnError, storage_errors
from .io import write_text

LOCK_FILE = ".lock"
RESUMES_FILE = "resumes.jsonl"
TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")  # older atomic writes: .NAME.PID.tmp (the host is unknown)
HOST_TEMP_RE = re.compile(r"^\..+-(\d+)\.tmp$")  # atomic writes (ncsn.io.temp_path): .NAME.TOKEN.HOST-PID.tmp
UNKNOWN_HOST_STALE_S = 3600.0  # a host-less temp file untouched this long is no write in progress on any host


class RunFolderError(NcsnError, RuntimeError):
    """The run folder does not fit the request: in use, checkpoints present without --resume, none with it."""


class RunFolderLock:
    """An exclusive ``flock`` on WORKDIR/.lock for the process that trains there.

    The kernel drops the lock when the process ends in any way (SIGKILL included), so a dead run never leaves a
    stale lock. The file holds the holder's PID and host, which a refused second process names. Release with
    ``discard=True`` removes a folder this lock created while nothing but the lock file is in it, so a run that
    fails while setting up leaves no folder behind.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.created = False
        self._fd: int | None = None
        self._filelock = None

    def _in_use(self, holder: str) -> RunFolderError:
        return RunFolderError(f"{self.workdir} is in use: another ncsn process ({holder}) is training there; wait for "
                              "it to end or choose another --workdir")

    def acquire(self) -> RunFolderLock:
        with storage_errors(self.workdir):
            self.created = not self.workdir.exists()
            self.workdir.mkdir(parents=True, exist_ok=True)
            if fcntl is None:
                return self._acquire_filelock()
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise self._in_use(f"PID {holder}") from None
                try:  # the file may have been removed by a releasing holder between our open and our lock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _acquire_filelock(self) -> RunFolderLock:
        """Without fcntl: filelock's lock on the same file (the holder is not recorded, its lock owns the file)."""
        from filelock import FileLock, Timeout

        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use("its PID is not recorded on this platform") from None
        self._filelock = lock
        return self

    def release(self, discard: bool = False) -> None:
        if self._fd is None and self._filelock is None:
            return
        empty = discard and self.created and {p.name for p in self.workdir.iterdir()} <= {LOCK_FILE}
        if self._filelock is not None:
            self._filelock.release()
            self._filelock = None
        if empty:
            self.path.unlink(missing_ok=True)
            self.workdir.rmdir()
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _orphaned(path: Path, now: float) -> bool:
    """Whether ``path`` is a temp file whose writer is surely gone: one of this host's dead PIDs, or a host-less
    name untouched for UNKNOWN_HOST_STALE_S (its PID may be alive on another host sharing the folder)."""
    match = HOST_TEMP_RE.match(path.name)
    if match:
        pid = int(match.group(1))
        return path.name.endswith(f".{socket.gethostname()}-{pid}.tmp") and not _alive(pid)
    match = TEMP_RE.match(path.name)
    if not match:
        return False
    try:
        untouched = now - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return untouched > UNKNOWN_HOST_STALE_S and not _alive(int(match.group(1)))


def remove_orphan_temp_files(workdir: str | Path) -> list[Path]:
    """Delete the temp files of writers that no longer run (a kill during a checkpoint write leaves one the size of
    a checkpoint); returns what was removed. Call it holding the folder's lock. Another host's files are kept."""
    removed, now = [], time.time()
    for folder in (Path(workdir), Path(workdir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and _orphaned(path, now):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_config(workdir: str | Path, config: RunConfig) -> Path:
    """config.yaml of the run, written atomically (temp file and rename)."""
    return write_text(Path(workdir) / "config.yaml", to_yaml(config))


def record(workdir: str | Path, event: str, step: int, **fields) -> None:
    """Append one row to resumes.jsonl: the event, the step, the time, this process and the given fields."""
    row = {"event": event, "step": step, "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "pid": os.getpid(), **fields}
    path = Path(workdir) / RESUMES_FILE
    with storage_errors(path), path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_history(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / RESUMES_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
