"""Datasets as uint8 tensors (N, C, H, W), read from their real formats, plus the training-time transforms.

Every dataset is small enough to live in memory (CelebA at 32x32 is 0.5 GB), so a batch is an index into one
tensor on the training device: no loader workers, no per-image Python. Pixels become [0, 1] floats only in
``prepare_batch``, which applies the reference dequantisation and random flips.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how training batches are made from it."""

    dataset: str = "digits"
    root: str | None = None
    image_size: int = 8
    random_flip: bool = False
    dequantize: bool = True
    download: bool = True


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    native_size: int
    files: str


@dataclass
class Split:
    """One split: images as uint8 (N, C, H, W) and class labels when the dataset has them."""

    images: torch.Tensor
    labels: torch.Tensor | None


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing or unreadable; the message says where they are expected."""


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
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
DATASETS = {
    "digits": DatasetInfo(1, 8, "scikit-learn's embedded load_digits (no files needed)"),
    "mnist": DatasetInfo(1, 28, "the four IDX files train-/t10k-images-idx3-ubyte, train-/t10k-labels-idx1-ubyte"),
    "fashion_mnist": DatasetInfo(1, 28, "the four Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)"),
    "cifar10": DatasetInfo(3, 32, "cifar-10-batches-py/ with data_batch_1..5 and test_batch (the python version)"),
    "celeba": DatasetInfo(3, 32, "img_align_celeba/ with the aligned JPEGs, optionally list_eval_partition.txt"),
}
CELEBA_CROP = 140
SYSTEM_ROOTS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}


def cache_dir() -> Path:
    """Where downloads and preprocessed arrays go unless a root is given: $NCSN_DATA or ~/.cache/ncsn."""
    return Path(os.environ.get("NCSN_DATA", Path.home() / ".cache" / "ncsn"))


def candidate_roots(config: DataConfig) -> list[Path]:
    if config.root:
        return [Path(config.root).expanduser()]
    return [Path(p) for p in SYSTEM_ROOTS.get(config.dataset, [])] + [cache_dir() / config.dataset]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or .gz): the big-endian format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetNotFoundError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DatasetNotFoundError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetNotFoundError(f"{path}: truncated IDX file ({data.size} values for shape {shape})")
    return data.reshape(shape).astype(dtypes[raw[2]].lstrip(">"))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(name: str, root: Path) -> None:
    """Fetch a dataset's files into root and verify each MD5 (torchvision's downloader)."""
    from torchvision.datasets.utils import download_file_from_google_drive, download_url

    root.mkdir(parents=True, exist_ok=True)
    if name == "celeba":
        for filename, (file_id, md5) in CELEBA_DRIVE.items():
            download_file_from_google_drive(file_id, str(root), filename, md5)
        return
    base, files = DOWNLOADS[name]
    for filename, md5 in files.items():
        download_url(base + filename, str(root), filename, md5)
        if _md5(root / filename) != md5:
            raise DatasetNotFoundError(f"{root / filename}: checksum mismatch after download")


def _missing(config: DataConfig, detail: str) -> DatasetNotFoundError:
    where = " or ".join(str(p) for p in candidate_roots(config))
    hint = "set data.root=DIR to point at them" + ("" if config.download else ", or data.download=true when online")
    return DatasetNotFoundError(
        f"{config.dataset}: {detail}; expected {DATASETS[config.dataset].files} in {where} ({hint})"
    )


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx_split(config: DataConfig, root: Path, split: str) -> Split:
    image_file, label_file = (_find_file(root, stem) for stem in IDX_FILES[split])
    if image_file is None:
        raise _missing(config, f"no {IDX_FILES[split][0]} in {root}")
    images = torch.from_numpy(read_idx(image_file).copy()).unsqueeze(1)
    labels = torch.from_numpy(read_idx(label_file).astype(np.int64)) if label_file else None
    return Split(images, labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR batches that refuses anything but numpy arrays (no code runs on load)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_cifar_split(config: DataConfig, root: Path, split: str) -> Split:
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if not all((folder / n).is_file() for n in names):
        archive = root / "cifar-10-python.tar.gz"
        if not archive.is_file():
            raise _missing(config, f"no {names[0]} in {folder}")
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        folder = root / "cifar-10-batches-py"
    images, labels = [], []
    for name in names:
        with (folder / name).open("rb") as fh:
            try:
                batch = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as err:
                raise DatasetNotFoundError(f"{folder / name}: not a CIFAR-10 python batch ({err})") from None
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _celeba_files(config: DataConfig, root: Path, split: str) -> list[Path]:
    folder = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
    if not folder.is_dir() and (root / "img_align_celeba.zip").is_file():
        import zipfile

        with zipfile.ZipFile(root / "img_align_celeba.zip") as archive:
            archive.extractall(root)
        folder = root / "img_align_celeba"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise _missing(config, f"no images in {folder}")
    partition = root / "list_eval_partition.txt"
    if partition.is_file():
        wanted = {"train": "0", "test": "2"}[split]
        keep = {line.split()[0] for line in partition.read_text().splitlines() if line.split()[1:] == [wanted]}
        return [p for p in files if p.name in keep]
    cut = int(len(files) * 0.9)  # no partition file: a fixed 90/10 split by file name
    return files[:cut] if split == "train" else files[cut:]


def _read_celeba_split(config: DataConfig, root: Path, split: str) -> Split:
    """Center crop 140 and resize to image_size (as the reference), cached as .npy after the first read."""
    from PIL import Image

    cache = cache_dir() / "celeba" / f"{split}_{config.image_size}_{_md5_of_root(root)}.npy"
    if cache.is_file():
        return Split(torch.from_numpy(np.load(cache)), None)
    out = []
    for path in _celeba_files(config, root, split):
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            left, top = (w - CELEBA_CROP) // 2, (h - CELEBA_CROP) // 2
            img = img.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
            img = img.resize((config.image_size, config.image_size), Image.BILINEAR)
            out.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    array = np.stack(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, cache)
    return Split(torch.from_numpy(array), None)


def _md5_of_root(root: Path) -> str:
    return hashlib.md5(str(root.resolve()).encode(), usedforsecurity=False).hexdigest()[:8]


def _digits(split: str) -> Split:
    """scikit-learn's 1,797 8x8 digits (values 0..16) as uint8 in [0, 255]; a fixed 1,500 / 297 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    keep = order[:1500] if split == "train" else order[1500:]
    return Split(images[keep], labels[keep])


READERS = {"mnist": _read_idx_split, "fashion_mnist": _read_idx_split, "cifar10": _read_cifar_split,
           "celeba": _read_celeba_split}


def _read(config: DataConfig, split: str) -> Split:
    if config.dataset == "digits":
        return _digits(split)
    reader = READERS[config.dataset]
    roots = candidate_roots(config)
    errors = []
    for root in roots:
        if root.is_dir():
            try:
                return reader(config, root, split)
            except DatasetNotFoundError as err:
                errors.append(err)
    if config.download:
        target = roots[-1]
        try:
            _download(config.dataset, target)
        except Exception as err:  # noqa: BLE001 - offline, HTTP error, bad checksum: say where the files belong instead
            first_line = (str(err).splitlines() or [""])[0][:120]
            raise _missing(config, f"download failed ({type(err).__name__}: {first_line})") from None
        return reader(config, target, split)
    raise errors[-1] if errors else _missing(config, "files not found")


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 images, back to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def load_split(config: DataConfig, split: str = "train") -> Split:
    """Images of one split ("train" or "test") as uint8 (N, C, image_size, image_size), with labels if any."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose from {sorted(DATASETS)}")
    data = _read(config, split)
    return Split(resize_uint8(data.images, config.image_size), data.labels)


def prepare_batch(
    images: torch.Tensor, generator: torch.Generator | None, random_flip: bool, dequantize: bool
) -> torch.Tensor:
    """uint8 images to [0, 1] floats, with the reference dequantisation x*255/256 + U/256 and random h-flips."""
    x = images.float() / 255.0
    if dequantize:
        x = x * (255.0 / 256.0) + torch.rand(x.shape, generator=generator, device=x.device) / 256.0
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """[0, 1] float images (N, C, H, W) to uint8 (N, H, W, C), clamped: the format of samples.npz."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
