"""Unpacking tar archives safely with and without Python's tar "data" filter (absent before 3.10.12)."""

import io
import tarfile
from pathlib import Path

import pytest

from ncsn.data import DatasetNotFoundError
from ncsn.data.download import extract


@pytest.fixture(params=["data_filter", "fallback"])
def tar_path(request, monkeypatch):
    """Both ways of unpacking: Python's "data" filter, and a Python whose tarfile has none (extractall then refuses
    a filter= argument, as 3.10.0-3.10.11 do)."""
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        original = tarfile.TarFile.extractall

        def old_extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
            if kwargs:
                raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    return request.param


def write_tar(path, members):
    """A .tar.gz of (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def entry(name, kind=tarfile.REGTYPE, data=b"", link="", mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, (data if kind == tarfile.REGTYPE else None)


def test_a_plain_archive_unpacks_the_same_either_way(tmp_path, tar_path):
    archive = write_tar(tmp_path / "a.tar.gz", [entry("top", tarfile.DIRTYPE, mode=0o755),
                                                entry("top/x.bin", data=b"abc", mode=0o6777),
                                                entry("top/sub", tarfile.DIRTYPE, mode=0o755),
                                                entry("top/sub/y.bin", data=b"de")])
    target = extract(archive, "top")
    assert target == tmp_path / "top" and (target / "x.bin").read_bytes() == b"abc"
    assert (target / "sub" / "y.bin").read_bytes() == b"de"
    assert (target / "x.bin").stat().st_mode & 0o7022 == 0  # no setuid/setgid/sticky, no group/other write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "top"]


@pytest.mark.parametrize("bad", [
    entry("../escape.bin", data=b"x"),
    entry("top/../../escape.bin", data=b"x"),
    entry("/tmp/ncsn-absolute-escape.bin", data=b"x"),
    entry("top/link", tarfile.SYMTYPE, link="../../escape.bin"),
    entry("top/abs", tarfile.SYMTYPE, link="/etc/passwd"),
    entry("top/hard", tarfile.LNKTYPE, link="/etc/passwd"),
    entry("top/fifo", tarfile.FIFOTYPE),
    entry("top/dev", tarfile.CHRTYPE),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out", "fifo", "device"])
def test_members_that_would_escape_or_are_special_are_refused_in_one_line(tmp_path, tar_path, bad):
    folder = tmp_path / "data"
    folder.mkdir()
    archive = write_tar(folder / "a.tar.gz", [entry("top", tarfile.DIRTYPE, mode=0o755),
                                              entry("top/ok.bin", data=b"ok"), bad])
    try:
        target = extract(archive, "top")
    except DatasetNotFoundError as err:
        assert str(err).startswith(f"{archive}: cannot extract") and "\n" not in str(err)
        assert sorted(p.name for p in folder.iterdir()) == ["a.tar.gz"]  # nothing left behind
    else:  # the data filter strips a leading "/" and unpacks that member inside the temporary folder, then drops it
        assert tar_path == "data_filter" and bad[0].name.startswith("/")
        assert sorted(p.name for p in folder.iterdir()) == ["a.tar.gz", "top"] and (target / "ok.bin").is_file()
    assert not list(tmp_path.rglob("*escape*")) and not Path("/tmp/ncsn-absolute-escape.bin").exists()
