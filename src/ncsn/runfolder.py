"""Guards of a run folder: one training process at a time (an OS lock), clean-up of the temp files that killed
writers leave behind, the run's config.yaml, and the history of what each resume changed (resumes.jsonl)."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import re
import socket
from pathlib import Path

from .config import RunConfig, to_yaml
from .errors import NcsnError, storage_errors
from .io import write_text

LOCK_FILE = ".lock"
RESUMES_FILE = "resumes.jsonl"
TEMP_RE = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic writes (ncsn.io): .NAME.HOST-TOKEN.PID.tmp


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

    def acquire(self) -> RunFolderLock:
        with storage_errors(self.workdir):
            self.created = not self.workdir.exists()
            self.workdir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise RunFolderError(
                        f"{self.workdir} is in use: another ncsn process (PID {holder}) is training there; wait for "
                        "it to end or choose another --workdir"
                    ) from None
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

    def release(self, discard: bool = False) -> None:
        if self._fd is None:
            return
        if discard and self.created and {p.name for p in self.workdir.iterdir()} <= {LOCK_FILE}:
            self.path.unlink(missing_ok=True)
            self.workdir.rmdir()
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


def remove_orphan_temp_files(workdir: str | Path) -> list[Path]:
    """Delete the ``.NAME.PID.tmp`` files of writers that no longer run (a kill during a checkpoint write leaves
    one the size of a checkpoint); returns what was removed. Call it holding the folder's lock."""
    removed = []
    for folder in (Path(workdir), Path(workdir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = TEMP_RE.match(path.name)
            if match and path.is_file() and not _alive(int(match.group(1))):
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
