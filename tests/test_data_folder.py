"""The folder dataset: listing, splits, channel conversion, crops, unreadable files and the errors of bad input."""

import dataclasses
import warnings

import numpy as np
import pytest
from PIL import Image

from ncsn.config import ConfigError, load_config
from ncsn.data import DataConfig, DatasetNotFoundError, ImageTooSmallError, UnreadableImagesWarning, load_split
from ncsn.data.folder import list_images


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))


def write_images(folder, n, shape=(12, 10, 3), seed=0, suffixes=(".png", ".jpg", ".webp", ".bmp")):
    """n random images cycling through the suffixes (lossless PNG/BMP/WebP where pixels are compared)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}{suffixes[i % len(suffixes)]}"
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
        paths.append(path)
    return paths


def pil_pixels(path, size, mode, crop=None):
    """The preprocessing written out with Pillow: transparency on white, convert, centre square (crop or the
    largest), bilinear resize."""
    img = Image.open(path)
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    img = img.convert(mode)
    side = crop or min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    array = np.asarray(img)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def folder_config(root, **kw):
    return DataConfig(dataset="folder", root=str(root), image_size=kw.pop("image_size", 8), **kw)


def test_listing_is_recursive_by_suffix_sorted_and_skips_hidden(tmp_path):
    root = tmp_path / "imgs"
    write_images(root / "b", 2, suffixes=(".PNG", ".jpeg"))
    write_images(root / "a" / "deep", 1, suffixes=(".WebP",))
    write_images(root / ".thumbs", 2)
    (root / "notes.txt").write_text("not an image")
    (root / "._img.jpg").write_bytes(b"macOS metadata")
    assert [p.relative_to(root).as_posix() for p in list_images(root)] == [
        "a/deep/img_000.WebP", "b/img_000.PNG", "b/img_001.jpeg"]


def test_seeded_split_exact_counts_disjoint_and_pixels(tmp_path):
    root = tmp_path / "imgs"
    paths = write_images(root, 40, suffixes=(".png", ".bmp", ".webp"))
    cfg = folder_config(root, test_fraction=0.1)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert (len(train.images), len(test.images)) == (36, 4) and train.labels is None
    everything = {pil_pixels(p, 8, "RGB").tobytes(): p for p in paths}
    seen = [everything[img.numpy().tobytes()] for img in (*train.images, *test.images)]  # each is one file's pixels
    assert sorted(seen) == sorted(paths)
    test_names = [everything[img.numpy().tobytes()].name for img in test.images]
    again = load_split(dataclasses.replace(cfg, split_seed=0), "test")
    other = load_split(dataclasses.replace(cfg, split_seed=1), "test")
    assert [everything[i.numpy().tobytes()].name for i in again.images] == test_names
    assert [everything[i.numpy().tobytes()].name for i in other.images] != test_names


def test_test_subfolder_is_the_held_out_split(tmp_path):
    root = tmp_path / "imgs"
    train_paths = write_images(root / "train", 5, seed=1) + write_images(root, 2, seed=2)
    test_paths = write_images(root / "test" / "x", 3, seed=3)
    cfg = folder_config(root)
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert (len(train.images), len(test.images)) == (7, 3)
    want = sorted(test_paths, key=lambda p: p.relative_to(root).as_posix())
    assert all(np.array_equal(test.images[i].numpy(), pil_pixels(p, 8, "RGB")) for i, p in enumerate(want))
    assert len(train_paths) == 7


@pytest.mark.parametrize("stored,channels,mode", [("L", 3, "RGB"), ("RGB", 1, "L"), ("L", 1, "L"), ("RGBA", 3, "RGB")])
def test_grey_and_colour_convert_to_the_models_channels(tmp_path, stored, channels, mode):
    root = tmp_path / "imgs"
    shape = {"L": (12, 10), "RGB": (12, 10, 3), "RGBA": (12, 10, 4)}[stored]
    paths = write_images(root, 6, shape=shape, suffixes=(".png",))
    config = load_config("folder", [f"data.root={root}", "data.image_size=8", f"model.in_channels={channels}"])
    assert config.data.channels == channels  # resolved from the model
    train = load_split(config.data, "train")
    assert train.images.shape[1:] == (channels, 8, 8)
    expected = {pil_pixels(p, 8, mode).tobytes() for p in paths}
    assert all(img.numpy().tobytes() in expected for img in train.images)
    if stored == "L" and channels == 3:
        assert (train.images[:, 0] == train.images[:, 1]).all() and (train.images[:, 1] == train.images[:, 2]).all()


def test_center_crop_then_antialiased_resize(tmp_path):
    root = tmp_path / "imgs"
    paths = write_images(root, 3, shape=(48, 40, 3), suffixes=(".png",))
    cfg = folder_config(root, image_size=8, center_crop=24, test_fraction=0.3)
    images = np.concatenate([load_split(cfg, s).images.numpy() for s in ("train", "test")])
    expected = {pil_pixels(p, 8, "RGB", crop=24).tobytes() for p in paths}
    assert {img.tobytes() for img in images} == expected
    # anti-aliased: a 1-px checkerboard shrunk 4x averages to flat grey instead of aliasing to black or white
    board = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)
    for i in range(2):
        (tmp_path / "boards").mkdir(exist_ok=True)
        Image.fromarray(board).save(tmp_path / "boards" / f"board{i}.png")
    flat = load_split(folder_config(tmp_path / "boards", image_size=8, channels=1, test_fraction=0.5), "train").images
    assert flat.shape == (1, 1, 8, 8) and abs(flat.float().mean().item() - 127.5) < 2 and flat.float().std() < 2


def test_unreadable_files_are_skipped_with_one_warning_line(tmp_path):
    root = tmp_path / "imgs"
    write_images(root, 10, suffixes=(".png",))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = (root / "img_000.png").read_bytes()
    (root / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    cfg = folder_config(root, test_fraction=0.01)
    with pytest.warns(UnreadableImagesWarning) as caught:
        train = load_split(cfg, "train")
    message = str(caught[0].message)
    assert "\n" not in message and "skipped 2 unreadable" in message
    assert "broken.jpg" in message and "cut.png" in message
    assert len(train.images) + len(load_split(cfg, "test").images) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_split(cfg, "train").images) == len(train.images)  # cached: no second warning


def test_bad_folders_fail_with_one_line_naming_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"no PNG, JPEG, WebP or BMP images under {tmp_path / 'empty'}"):
        load_split(folder_config(tmp_path / "empty"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("hello")
    with pytest.raises(DatasetNotFoundError, match="no PNG"):
        load_split(folder_config(tmp_path / "text"))
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        load_split(folder_config(tmp_path / "nowhere"))
    (tmp_path / "junk").mkdir()
    for i in range(4):
        (tmp_path / "junk" / f"{i}.png").write_bytes(b"garbage")
    with pytest.raises(DatasetNotFoundError, match="none of the 3 image files under .* could be read .*first: "):
        load_split(folder_config(tmp_path / "junk"))
    write_images(tmp_path / "small", 3, shape=(30, 20, 3))
    too_small = r"img_00\d.png: 20x30 px is smaller than the centre crop data.center_crop=25$"
    with pytest.raises(ImageTooSmallError, match=too_small):
        load_split(folder_config(tmp_path / "small", center_crop=25))
    with pytest.raises(ValueError, match="folder images convert to 1 \\(grey\\) or 3 \\(RGB\\) channels, not 4"):
        load_split(folder_config(tmp_path / "small", channels=4))
    assert not list((tmp_path / "cache").rglob("*.npy")) and not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.parametrize("overrides,message", [
    ([], "config key 'data.root': the folder dataset needs data.root=DIR"),
    (["data.root=x", "model.in_channels=2"], "config key 'model.in_channels': folder images convert to 1 (grey) or 3"),
    (["data.root=x", "data.channels=1"], "config key 'data.channels': must equal model.in_channels (3), got 1"),
    (["data.root=x", "data.test_fraction=0"], "config key 'data.test_fraction': must lie in (0, 1)"),
    (["data.root=x", "data.center_crop=0"], "config key 'data.center_crop': must be >= 1"),
    (["data.root=x", "data.memory_budget_gb=-1"], "config key 'data.memory_budget_gb': must be >= 0"),
    (["data.root=x", "data.max_unpacked_gb=0"], "config key 'data.max_unpacked_gb': must be > 0"),
    (["data.root=x", "data.max_unpack_ratio=0.5"], "config key 'data.max_unpack_ratio': must be >= 1"),
])
def test_folder_config_is_validated(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("folder", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_other_datasets_refuse_channels_and_crops_they_cannot_give():
    with pytest.raises(ConfigError, match="config key 'data.channels': mnist has 1 channel"):
        load_config("mnist", ["data.channels=3"])
    with pytest.raises(ConfigError, match="config key 'data.center_crop': applies to image files"):
        load_config("cifar10", ["data.center_crop=20"])
    assert load_config("celeba", ["data.center_crop=108", "data.image_size=64"]).data.center_crop == 108
