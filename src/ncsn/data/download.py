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
from pathlib import Path

from .cache import temporary_name
from .catalog import DatasetNotFoundError

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


def extract(archive: Path, folder: str) -> Path:
    """Unpack ``archive`` (zip or tar) next to itself and return ``<its folder>/<folder>``, the top folder inside.

    Members go to a temporary folder that is renamed into place once complete, so an interrupted extraction
    never looks finished; zip and tar member paths are kept inside the target (no absolute paths, no ``..``).
    """
    target = archive.parent / folder
    if target.is_dir():
        return target
    tmp = temporary_name(target, "extracting")
    for stale in archive.parent.glob(f".{folder}.*.extracting"):  # left by a killed extraction (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
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
        raise DatasetNotFoundError(f"{archive}: cannot extract ({type(err).__name__}: {err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
