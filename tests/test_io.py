"""ncsn.io: the one atomic writer. Old or new file, never half of one; no temp file left; the usual permissions."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn import io
from ncsn.errors import StorageError
from ncsn.runfolder import HOST_TEMP_RE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_every_writer_round_trips_with_the_usual_permissions_and_no_leftovers(tmp_path):
    old = os.umask(0o027)  # a umask unlike the usual 022, so the mode bits must come from it
    try:
        io.write_bytes(tmp_path / "a.bin", b"\x00\x01")
        io.write_text(tmp_path / "b.txt", "héllo")
        io.write_json(tmp_path / "c.json", {"x": [1, 2]})
        io.save_torch({"w": torch.arange(3)}, tmp_path / "d.pt")
        io.save_npz(tmp_path / "e.npz", compressed=True, a=np.arange(4))
        io.save_image(tmp_path / "f.png", Image.new("L", (3, 2), 7))
        frames = [Image.new("L", (4, 4), v) for v in (0, 128, 255)]
        io.save_image(tmp_path / "g.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
        io.save_safetensors(tmp_path / "h.safetensors", {"t": torch.ones(2)}, {"format": "x"})
        made = sorted(p.name for p in tmp_path.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert made == ["a.bin", "b.txt", "c.json", "d.pt", "e.npz", "f.png", "g.gif", "h.safetensors"]
    assert set(modes.values()) == {0o666 & ~0o027}
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert torch.equal(torch.load(tmp_path / "d.pt", weights_only=True)["w"], torch.arange(3))
    assert np.array_equal(np.load(tmp_path / "e.npz")["a"], np.arange(4))
    assert np.asarray(Image.open(tmp_path / "f.png")).tolist() == [[7, 7, 7], [7, 7, 7]]
    with Image.open(tmp_path / "g.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "h.safetensors"))["t"], torch.ones(2))


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "samples.npz"
    io.write_bytes(target, b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), io.atomic_write(target) as fh:
        fh.write(b"half of the new")
        raise Boom
    with pytest.raises(KeyboardInterrupt), io.atomic_write(target) as fh:
        fh.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_a_full_disk_is_a_storage_error_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    io.write_bytes(target, b"old")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="grid.png"):
        io.write_text(target, "new")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_file_and_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.write_json(tmp_path / "x.json", {})
    assert events == ["file", "rename", "dir"]


def test_temp_names_are_unique_hidden_and_cleaned_by_the_run_folder(tmp_path):
    names = {io.temp_path(tmp_path / "checkpoint_00000001.pt").name for _ in range(50)}
    assert len(names) == 50
    for name in names:
        match = HOST_TEMP_RE.match(name)
        assert name.startswith(".checkpoint_00000001.pt.") and match and int(match.group(1)) == os.getpid()
        assert name.endswith(f".{socket.gethostname()}-{os.getpid()}.tmp")


def test_no_module_writes_files_around_ncsn_io():
    """The one writer: no other module of the package renames temp files or calls mkstemp itself."""
    from pathlib import Path

    import ncsn

    root = Path(ncsn.__file__).parent
    offenders = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
                 if p.name != "io.py" and any(s in p.read_text() for s in ("os.replace(", "mkstemp", "os.fsync("))]
    assert offenders == ["data/download.py"]  # renames an extracted folder into place, not a file
