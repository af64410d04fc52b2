"""Fetching the official files (checked against their published MD5 sums) and unpacking archives atomically.

Both only ever run while the caller holds the node's lock (``cache.node_lock``), so N processes of one machine
never download or extract the same file at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

from .cache import temporary_name
from .catalog import DamagedDataError, DatasetNotFoundError

DOWNLOADS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}
CELEBA_DRIVE = {
    "img_align_celeba.zip": ("0B7EVK8r0v71pZjFTYXZWM3FlRnM", "00d2c5bc6d35e252742224ab0c1e8fcb"),
    "list_eval_partition.txt": ("0B7EVK8r0v71pY0NSMzRuSXJEVkk", "d32c9cbf5e040fd4025c592c306e6668"),
}
DOWNLOADABLE = frozenset({*DOWNLOADS, "celeba"})


def md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, root: Path) -> None:
    """Fetch a dataset's files into root (torchvision's downloaders) and verify each MD5; a bad file is removed."""
    from torchvision.datasets import utils

    root.mkdir(parents=True, exist_ok=True)
    if name == "celeba":
        files = {filename: md5sum for filename, (_, md5sum) in CELEBA_DRIVE.items()}
        for filename, (file_id, md5sum) in CELEBA_DRIVE.items():
            utils.download_file_from_google_drive(file_id, str(root), filename, md5sum)
    else:
        base, files = DOWNLOADS[name]
        for filename, md5sum in files.items():
            utils.download_url(base + filename, str(root), filename, md5sum)
    for filename, md5sum in files.items():
        if md5(root / filename) != md5sum:
            (root / filename).unlink()
            raise DatasetNotFoundError(f"{root / filename}: checksum mismatch after download (file removed)")


def checked_member(member: tarfile.TarInfo, dest: Path) -> tarfile.TarInfo:
    """``member`` if it is a regular file or folder whose path stays inside ``dest``, with its setuid/setgid/sticky and
    group/other write bits cleared and no owner to restore; else a TarError naming it (links, devices, absolute
    paths and ``..`` are refused)."""
    if not (member.isreg() or member.isdir()):
        raise tarfile.TarError(f"member {member.name!r} is a link or special file; only files and folders are unpacked")
    path = Path(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
        raise tarfile.TarError(f"member {member.name!r} would be written outside the target folder")
    root = dest.resolve()
    if not (root / path).resolve().is_relative_to(root):
        raise tarfile.TarError(f"member {member.name!r} would be written outside the target folder")
    member.mode &= 0o755
    member.uname = member.gname = ""  # as root, tarfile would otherwise chown to the archive's owner
    if hasattr(os, "getuid"):
        member.uid, member.gid = os.getuid(), os.getgid()
    return member


def extract_tar(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack a tar into ``dest`` safely: the "data" filter where Python has it (3.10.12+), else every member is
    checked by ``checked_member`` before anything is written (no filter= argument on older 3.10 releases)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    members = [checked_member(member, Path(dest)) for member in tar.getmembers()]
    tar.extractall(dest, members=members)


MAX_UNPACKED_GB = 64.0  # data.max_unpacked_gb: CelebA's zip unpacks to 1.4 GB
MAX_UNPACK_RATIO = 100.0  # data.max_unpack_ratio: images barely compress; a zip bomb's ratio is in the thousands
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class ArchiveTooLargeError(DamagedDataError):
    """A zip that would unpack to more than the limits allow (data.max_unpacked_gb, data.max_unpack_ratio)."""


def _is_zip(archive: Path) -> bool:
    """A zip by its name or its first bytes, even when truncated (``zipfile.is_zipfile`` needs the end record)."""
    if archive.suffix.lower() == ".zip" or zipfile.is_zipfile(archive):
        return True
    with archive.open("rb") as fh:
        return fh.read(4) in ZIP_MAGIC


def _member_path(tmp: Path, name: str) -> Path | None:
    """Where a zip member goes inside ``tmp``, as ``ZipFile.extract`` places it: no drive, no leading slash, no
    ``.`` or ``..`` parts. None for a name that leaves nothing (``../``)."""
    parts = [p for p in os.path.splitdrive(name)[1].split("/") if p not in ("", ".", "..")]
    return tmp.joinpath(*parts) if parts else None


def _unzip(archive: Path, tmp: Path, max_bytes: float, max_ratio: float) -> None:
    """Extract every member of ``archive`` into ``tmp``, refusing before anything is written when the sizes the
    zip declares exceed the limits, and while writing if the members hold more than they declare."""
    packed = max(archive.stat().st_size, 1)
    limit = min(max_bytes, max_ratio * packed)
    gb = f"{max_bytes / 1e9:g} GB (data.max_unpacked_gb)"
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        declared = sum(m.file_size for m in members)
        if declared > limit:
            raise ArchiveTooLargeError(
                f"{archive}: would unpack to {declared / 1e9:.3g} GB, {declared / packed:.0f} times its size; the "
                f"limits are {gb} and {max_ratio:g} times (data.max_unpack_ratio): raise them if you trust the file")
        written = 0
        for member in members:
            dest = _member_path(tmp, member.filename)
            if dest is None:
                continue
            if member.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    written += len(block)
                    if written > limit:
                        raise ArchiveTooLargeError(f"{archive}: holds more than its headers declare and more than "
                                                   f"the limits ({gb}, {max_ratio:g} times its size); not unpacked")
                    out.write(block)


def extract(archive: Path, folder: str, max_unpacked_gb: float = MAX_UNPACKED_GB,
            max_unpack_ratio: float = MAX_UNPACK_RATIO) -> Path:
    """Unpack ``archive`` (zip or tar) next to itself and return ``<its folder>/<folder>``, the top folder inside.

    Members go to a temporary folder that is renamed into place once complete, so an interrupted extraction
    never looks finished; zip and tar member paths are kept inside the target (no absolute paths, no ``..``). A zip
    may unpack to at most ``max_unpacked_gb`` and ``max_unpack_ratio`` times its own size (checked from its
    headers before writing, and while writing); a refused or damaged one leaves nothing behind.
    """
    target = archive.parent / folder
    if target.is_dir():
        return target
    tmp = temporary_name(target, "extracting")
    for stale in archive.parent.glob(f".{folder}.*.extracting"):  # left by a killed extraction (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        if _is_zip(archive):
            try:
                _unzip(archive, tmp, max_unpacked_gb * 1e9, max_unpack_ratio)
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as err:
                first = (str(err).splitlines() or [type(err).__name__])[0][:120]
                raise DamagedDataError(f"{archive}: a damaged or truncated zip ({first}); delete it and "
                                           "download it again") from None
        else:
            with tarfile.open(archive) as tar:
                extract_tar(tar, tmp)
        if not (tmp / folder).is_dir():
            raise DatasetNotFoundError(f"{archive}: no {folder}/ inside the archive")
        try:
            os.replace(tmp / folder, target)
        except OSError:
            if not target.is_dir():  # else another machine sharing this folder finished first
                raise
    except DatasetNotFoundError:
        raise
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        first = (str(err).splitlines() or [""])[0]  # tarfile lists every compression it tried, one per line
        raise DamagedDataError(f"{archive}: cannot extract ({type(err).__name__}: {first})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
