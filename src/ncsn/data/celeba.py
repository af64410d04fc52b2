"""CelebA from the official files: img_align_celeba/ (or its zip, extracted once) and list_eval_partition.txt.

Found in the layouts people have: the two files side by side, torchvision's ``celeba/`` subfolder, the Google
Drive folders ``Img/`` and ``Eval/``, or data.root pointing at the image folder itself. Images are centre-cropped
to 140 (data.center_crop) and resized to data.image_size: 32 px is NCSN's setting, 64 px NCSNv2's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .catalog import CELEBA_CROP, DamagedDataError, DataConfig, NeedsWrite, missing
from .download import extract
from .prepare import cached_images

FOLDER = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
SPLIT_CODES = {"train": "0", "test": "2"}  # 1 is the validation split, unused


def _jpegs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())


def image_folder(config: DataConfig, root: Path, write: bool) -> Path:
    """The folder of aligned images under root, extracting img_align_celeba.zip first when only the zip is there."""
    bases = [root, root / "celeba", root / "Img"]
    for base in bases:
        if (base / FOLDER).is_dir():
            return base / FOLDER
    for base in bases:
        if (base / f"{FOLDER}.zip").is_file():
            if not write:
                raise NeedsWrite
            return extract(base / f"{FOLDER}.zip", FOLDER, config.max_unpacked_gb, config.max_unpack_ratio)
    if root.is_dir() and _jpegs(root):
        return root
    raise missing(config, f"no {FOLDER}/ or {FOLDER}.zip in {root}")


def _partition_text(config: DataConfig, path: Path) -> str:
    """list_eval_partition.txt as text (ASCII file names and split codes); anything else is an error naming it."""
    try:
        return path.read_bytes().decode("ascii")
    except UnicodeDecodeError as err:
        raise DamagedDataError(f"celeba: {path} is not the text partition list (a binary byte at offset "
                                   f"{err.start}); delete it to split 90/10 by name, or download it again") from None


def split_files(config: DataConfig, root: Path, folder: Path, split: str) -> list[Path]:
    """Files of one split: the official partition when list_eval_partition.txt is found, else 90/10 by name."""
    files = _jpegs(folder)
    if not files:
        raise missing(config, f"no images in {folder}")
    for place in (root, root / "Eval", root / "celeba", folder.parent):
        if (place / PARTITION).is_file():
            rows = (line.split() for line in _partition_text(config, place / PARTITION).splitlines())
            keep = {row[0] for row in rows if row[1:] == [SPLIT_CODES[split]]}
            chosen = [p for p in files if p.name in keep]
            if not chosen:
                raise missing(config, f"none of the {split} images listed in {place / PARTITION} are in {folder}")
            return chosen
    cut = int(len(files) * 0.9)
    return files[:cut] if split == "train" else files[cut:]


def read(config: DataConfig, root: Path, split: str, write: bool) -> tuple[np.ndarray, None]:
    """Prepared uint8 (N, 3, size, size) images of one split (no labels)."""
    folder = image_folder(config, root, write)
    files = split_files(config, root, folder, split)
    return cached_images(config, split, folder, files, config.center_crop or CELEBA_CROP, write), None
