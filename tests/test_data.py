import gzip
import pickle
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn.data import DataConfig, DatasetNotFoundError, load_split, prepare_batch, read_idx


def write_idx(path, array: np.ndarray, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def make_idx_dataset(folder, n_train=12, n_test=5, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


def test_read_idx_plain_gzip_and_broken(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    write_idx(tmp_path / "a.gz", a, compress=True)
    assert np.array_equal(read_idx(tmp_path / "a"), a) and np.array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-5])
    with pytest.raises(DatasetNotFoundError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"\x13\x37junkjunk")
    with pytest.raises(DatasetNotFoundError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


@pytest.mark.parametrize("name,compress", [("mnist", True), ("fashion_mnist", False)])
def test_idx_datasets_from_a_local_folder(tmp_path, name, compress):
    arrays = make_idx_dataset(tmp_path / name, compress=compress)
    cfg = DataConfig(dataset=name, root=str(tmp_path / name), image_size=28, download=False)
    for split in ("train", "test"):
        data = load_split(cfg, split)
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(arrays[split][0]), 1, 28, 28)
        assert np.array_equal(data.images[:, 0].numpy(), arrays[split][0])
        assert np.array_equal(data.labels.numpy(), arrays[split][1])
    small = load_split(DataConfig(dataset=name, root=str(tmp_path / name), image_size=14, download=False))
    assert small.images.shape[-2:] == (14, 14)


def make_cifar(folder, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels, b"filenames": []}, fh)
    return batches


def test_cifar10_python_batches_and_archive(tmp_path):
    folder = tmp_path / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = make_cifar(folder)
    root = tmp_path / "cifar"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    cfg = DataConfig(dataset="cifar10", root=str(root), image_size=32, download=False)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32)
    assert np.array_equal(train.images[0].numpy(), first)
    assert test.labels.tolist() == batches["test_batch"][1]


def test_cifar_loader_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    make_cifar(folder)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(DatasetNotFoundError, match="not a CIFAR-10 python batch"):
        load_split(DataConfig(dataset="cifar10", root=str(tmp_path), image_size=32, download=False), "test")


def make_celeba_images(folder, n=5, seed=0, suffix=".jpg"):
    """n aligned-CelebA-shaped (218 x 178) RGB files named 000001.jpg ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}{suffix}" for i in range(1, n + 1)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / name, quality=95)
    return names


def celeba_pixels(path, size, crop=140):
    """The reference preprocessing written out: centre crop 140 of the 178 x 218 image, bilinear resize."""
    left, top = (178 - crop) // 2, (218 - crop) // 2
    img = Image.open(path).convert("RGB").crop((left, top, left + crop, top + crop))
    img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [32, 64])
def test_celeba_folder_center_crop_and_partition(tmp_path, monkeypatch, size):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    folder = tmp_path / "celeba" / "img_align_celeba"
    names = make_celeba_images(folder, suffix=".png")
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(
        "\n".join(f"{n} {p}" for n, p in zip(names, [0, 0, 0, 1, 2])) + "\n"
    )
    cfg = DataConfig(dataset="celeba", root=str(tmp_path / "celeba"), image_size=size, download=False)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert train.images.shape == (3, 3, size, size) and test.images.shape == (1, 3, size, size)
    assert np.array_equal(train.images[2].numpy(), celeba_pixels(folder / names[2], size))
    assert np.array_equal(test.images[0].numpy(), celeba_pixels(folder / names[4], size))
    assert len(list((tmp_path / "cache" / "celeba").glob(f"img_align_celeba-train-{size}px-3c-*.npy"))) == 1
    assert torch.equal(load_split(cfg, "train").images, train.images)
    cropped = load_split(DataConfig(dataset="celeba", root=str(tmp_path / "celeba"), image_size=size, center_crop=108,
                                    download=False))
    assert np.array_equal(cropped.images[0].numpy(), celeba_pixels(folder / names[0], size, crop=108))


@pytest.mark.parametrize("layout", ["torchvision", "drive", "images_only"])
def test_celeba_layouts_people_have(tmp_path, monkeypatch, layout):
    """torchvision's celeba/ subfolder, Google Drive's Img/ + Eval/, and data.root at the image folder itself."""
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    image_dir = {"torchvision": "celeba/img_align_celeba", "drive": "Img/img_align_celeba",
                 "images_only": "img_align_celeba"}[layout]
    names = make_celeba_images(tmp_path / "data" / image_dir, n=10)
    partition = {"torchvision": "celeba", "drive": "Eval"}.get(layout)
    if partition:
        (tmp_path / "data" / partition).mkdir(exist_ok=True)
        (tmp_path / "data" / partition / "list_eval_partition.txt").write_text(
            "".join(f"{n} {0 if i < 6 else 2 if i >= 8 else 1}\n" for i, n in enumerate(names)))
    root = tmp_path / "data" / ("img_align_celeba" if layout == "images_only" else "")
    cfg = DataConfig(dataset="celeba", root=str(root), image_size=16, download=False)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    # with the partition: 6 train / 2 test; without it: the first 90% of the names / the rest
    assert (len(train.images), len(test.images)) == ((6, 2) if partition else (9, 1))


def test_celeba_download_extract_and_prepare_from_an_empty_folder(tmp_path, monkeypatch):
    """The whole path on a fresh machine: download the zip and partition file, extract the zip, prepare, cache."""
    import torchvision.datasets.utils as tv_utils

    from ncsn.data import download

    source = tmp_path / "served"
    names = make_celeba_images(source / "img_align_celeba", n=8)
    with zipfile.ZipFile(source / "img_align_celeba.zip", "w") as zf:
        for name in names:
            zf.write(source / "img_align_celeba" / name, f"img_align_celeba/{name}")
    (source / "list_eval_partition.txt").write_text("".join(f"{n} {[0, 0, 0, 0, 0, 1, 2, 2][i]}\n"
                                                            for i, n in enumerate(names)))
    fetched = []

    def from_local_file(file_id, root, filename=None, md5=None):
        fetched.append(filename)
        shutil.copy(source / filename, Path(root) / filename)

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", from_local_file)
    monkeypatch.setattr(download, "CELEBA_DRIVE", {name: (name, download.md5(source / name))
                                                   for name in ("img_align_celeba.zip", "list_eval_partition.txt")})
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    cfg = DataConfig(dataset="celeba", image_size=64)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert sorted(fetched) == ["img_align_celeba.zip", "list_eval_partition.txt"]
    assert (len(train.images), len(test.images)) == (5, 2)
    extracted = tmp_path / "cache" / "celeba" / "img_align_celeba"
    assert sorted(p.name for p in extracted.iterdir()) == names
    assert np.array_equal(train.images[4].numpy(), celeba_pixels(source / "img_align_celeba" / names[4], 64))
    assert np.array_equal(test.images[1].numpy(), celeba_pixels(source / "img_align_celeba" / names[7], 64))
    assert not [p for p in (tmp_path / "cache" / "celeba").iterdir() if ".extracting" in p.name or p.suffix == ".tmp"]
    fetched.clear()
    assert torch.equal(load_split(cfg, "train").images, train.images) and fetched == []  # nothing fetched again


def test_celeba_download_with_a_bad_checksum_is_removed_and_reported(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def corrupt(file_id, root, filename=None, md5=None):
        (Path(root) / filename).write_bytes(b"not the file")

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", corrupt)
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="download failed.*checksum mismatch") as err:
        load_split(DataConfig(dataset="celeba", image_size=32))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache" / "celeba" / "img_align_celeba.zip").exists()


def test_missing_dataset_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(DataConfig(dataset="mnist", image_size=28, download=False))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "nothing" / "mnist") in message and "data.root" in message

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed.*network is unreachable"):
        load_split(DataConfig(dataset="cifar10", image_size=32, download=True))


def test_digits_split_and_levels():
    train, test = load_split(DataConfig()), load_split(DataConfig(), "test")
    assert train.images.shape == (1500, 1, 8, 8) and test.images.shape == (297, 1, 8, 8)
    assert len(torch.unique(torch.cat([train.images, test.images]))) == 17
    assert sorted(torch.unique(train.labels).tolist()) == list(range(10))


def test_prepare_batch_dequantisation_and_flips():
    images = torch.randint(0, 256, (400, 1, 4, 4), dtype=torch.uint8)
    base = images.float() / 255 * (255 / 256)
    x = prepare_batch(images, torch.Generator().manual_seed(0), random_flip=False, dequantize=True)
    assert torch.all(x >= base) and torch.all(x <= base + 1 / 256)
    plain = prepare_batch(images, None, random_flip=False, dequantize=False)
    assert torch.equal(plain, images.float() / 255)
    flipped = prepare_batch(images, torch.Generator().manual_seed(0), random_flip=True, dequantize=False)
    is_flip = (flipped == plain.flip(-1)).flatten(1).all(1)
    is_same = (flipped == plain).flatten(1).all(1)
    assert torch.all(is_flip | is_same) and 0.4 < is_flip.float().mean() < 0.6
