"""Nothing lost on the data side: the fault battery of issue 23 on folders, CelebA roots and zips.

Pixel modes converted with their full range, odd directory entries skipped and named (never followed for ever,
never waited on), one line for a damaged file, and zips that may not unpack beyond their limits.
"""

from __future__ import annotations

import os
import signal
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from ncsn.data import DataConfig, DatasetNotFoundError, UnreadableImagesWarning, load_split
from ncsn.data.download import extract
from ncsn.data.folder import list_images
from ncsn.data.prepare import ImageSettings, decode


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))


@pytest.fixture
def deadline():
    """Fail instead of hanging (a named pipe used to block preparation for ever)."""
    def expired(signum, frame):
        raise TimeoutError("still running after 60 s: something blocks")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _decoded(tmp_path, image, channels, name="x.png", **save):
    path = tmp_path / name
    image.save(path, **save)
    return decode(path, ImageSettings(size=image.width, channels=channels, crop=None))


def _over_white(value, alpha):
    return value * alpha / 255 + 255 * (1 - alpha / 255)


# --- pixel modes ----------------------------------------------------------------------------------------------------

def test_16_bit_grey_keeps_its_range(tmp_path):
    wide = np.array([[0, 65535], [32768, 4000]], dtype=np.uint16)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    grey = _decoded(tmp_path, image, channels=1)
    assert grey[0].tolist() == [[0, 255], [128, 16]]  # round(v * 255 / 65535); Pillow's own convert gave 255s
    rgb = _decoded(tmp_path, image, channels=3)
    assert all(rgb[c].tolist() == [[0, 255], [128, 16]] for c in range(3))
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1)))
    assert abs(float(_decoded(tmp_path, ramp, channels=1).mean()) - 127.5) < 0.6  # was 252.9 for such a file


def test_32_bit_grey_is_read_as_16_bit_values(tmp_path):
    from ncsn.data.prepare import to_8bit

    image = Image.fromarray(np.array([[0, 65535], [257, 70000]], dtype=np.int32), "I")
    assert np.asarray(to_8bit(image)).tolist() == [[0, 255], [1, 255]]


def test_palette_images_with_and_without_a_transparent_colour(tmp_path):
    image = Image.new("P", (2, 2))
    image.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 0] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2, 1])
    rgb = _decoded(tmp_path, image, channels=3)
    assert rgb[:, 0, 0].tolist() == [10, 20, 30] and rgb[:, 0, 1].tolist() == [200, 100, 0]
    rgb = _decoded(tmp_path, image, channels=3, name="t.png", transparency=2)  # colour 2 (black) is transparent
    assert rgb[:, 1, 0].tolist() == [255, 255, 255]  # shown on white, not as the black it hides
    assert rgb[:, 0, 0].tolist() == [10, 20, 30] and rgb[:, 1, 1].tolist() == [200, 100, 0]


def test_cmyk_by_the_multiplicative_formula(tmp_path):
    pixels = [(0, 0, 0, 0), (255, 0, 0, 0), (128, 64, 0, 128), (0, 0, 0, 255)]
    image = Image.new("CMYK", (2, 2))
    image.putdata(pixels)
    rgb = _decoded(tmp_path, image, channels=3, name="x.tiff")  # lossless CMYK; decode reads any Pillow format
    got = rgb.transpose(1, 2, 0).reshape(4, 3).tolist()
    want = [[round((255 - c) * (255 - k) / 255) for c in px[:3]] for px in pixels for k in [px[3]]]
    assert got == want == [[255, 255, 255], [0, 255, 255], [63, 95, 127], [0, 0, 0]]


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 2))
    rgba.putdata([(200, 100, 0, 128), (0, 0, 0, 0), (10, 20, 30, 255), (255, 0, 0, 64)])
    got = _decoded(tmp_path, rgba, channels=3).transpose(1, 2, 0).reshape(4, 3).astype(float)
    px = np.asarray(rgba).reshape(4, 4).astype(float)
    want = _over_white(px[:, :3], px[:, 3:])
    assert np.abs(got - want).max() <= 1  # Pillow's integer compositing rounds
    assert got[1].tolist() == [255, 255, 255] and got[2].tolist() == [10, 20, 30]

    la = Image.new("LA", (2, 2))
    la.putdata([(50, 0), (50, 255), (0, 128), (200, 64)])
    got = _decoded(tmp_path, la, channels=1, name="la.png")[0].reshape(4).astype(float)
    px = np.asarray(la).reshape(4, 2).astype(float)
    want = _over_white(px[:, 0], px[:, 1])
    assert np.abs(got - want).max() <= 1 and got[:2].tolist() == [255, 50]


# --- odd directory entries ------------------------------------------------------------------------------------------

def _folder_with_traps(root):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(12):
        folder = root if i < 8 else root / "sub"
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    os.symlink("/nonexistent/x.png", root / "d.png")  # dangling
    os.symlink("b.png", root / "a.png")  # two links to each other: ELOOP
    os.symlink("a.png", root / "b.png")
    os.mkfifo(root / "pipe.png")  # a named pipe: opening it blocks until a writer comes
    os.symlink("..", root / "sub" / "up")  # a folder loop


def test_links_loops_and_pipes_are_skipped_and_named_in_one_warning(tmp_path, deadline):
    root = tmp_path / "imgs"
    _folder_with_traps(root)
    listed = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert listed == ["a.png", "b.png", "d.png", *[f"img_{i:02d}.png" for i in range(8)], "pipe.png",
                      *[f"sub/img_{i:02d}.png" for i in range(8, 12)]]  # each real folder once, nothing via sub/up
    config = DataConfig(dataset="folder", root=str(root), image_size=8, test_fraction=0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test = load_split(config, "train"), load_split(config, "test")
    assert len(train.images) + len(test.images) == 12
    messages = [str(w.message) for w in caught if issubclass(w.category, UnreadableImagesWarning)]
    named = " ".join(messages)
    assert all("\n" not in m for m in messages) and len(messages) <= 2  # one line per split prepared
    assert all(name in named for name in ("a.png", "b.png", "d.png", "pipe.png")), messages
    cache = tmp_path / "cache" / "folder"
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")]


# --- CelebA and zips ------------------------------------------------------------------------------------------------

def _celeba_root(root, partition: bytes):
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg")
    (root / "list_eval_partition.txt").write_bytes(partition)


def test_a_binary_partition_file_is_one_line_naming_it(tmp_path):
    _celeba_root(tmp_path / "celeba", b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    config = DataConfig(dataset="celeba", root=str(tmp_path / "celeba"), image_size=8, center_crop=16)
    with pytest.raises(DatasetNotFoundError, match="list_eval_partition.txt is not the text partition list") as err:
        load_split(config, "train")
    assert "\n" not in str(err.value)


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_truncated_zip_is_one_line_naming_it(tmp_path):
    whole = _zip(tmp_path / "whole.zip", {"img_align_celeba/000001.jpg": os.urandom(4000)}).read_bytes()
    (tmp_path / "img_align_celeba.zip").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetNotFoundError) as err:
        extract(tmp_path / "img_align_celeba.zip", "img_align_celeba")
    message = str(err.value)
    assert "\n" not in message and "img_align_celeba.zip" in message and "zip" in message.split(":", 1)[1]
    assert "gz" not in message and "bz2" not in message and "xz" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_align_celeba.zip", "whole.zip"]
    (tmp_path / "whole.zip").unlink()
    config = DataConfig(dataset="celeba", root=str(tmp_path), image_size=8, center_crop=16)  # download=true
    with pytest.raises(DatasetNotFoundError, match="img_align_celeba.zip: a damaged or truncated zip") as err:
        load_split(config, "train")  # said at once, not hidden behind an attempt to download
    assert "\n" not in str(err.value)


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = _zip(tmp_path / "img_align_celeba.zip", {"img_align_celeba/big.jpg": bytes(20_000_000)})
    assert bomb.stat().st_size < 100_000  # 20 MB of zeros in a few kB: a ratio in the thousands
    written = []
    real_open = open

    def spy(path, *args, **kwargs):
        written.append(str(path))
        return real_open(path, *args, **kwargs)

    import builtins

    builtins_open, builtins.open = builtins.open, spy
    try:
        with pytest.raises(DatasetNotFoundError, match=r"would unpack to 0.02 GB, \d+ times its size.*"
                                                       r"data.max_unpack_ratio"):
            extract(bomb, "img_align_celeba")  # the default limits: 64 GB, 100 times
        with pytest.raises(DatasetNotFoundError, match=r"limits are 0.01 GB \(data.max_unpacked_gb\)"):
            extract(bomb, "img_align_celeba", max_unpacked_gb=0.01, max_unpack_ratio=1e9)
    finally:
        builtins.open = builtins_open
    assert not [w for w in written if "big.jpg" in w]  # refused from the headers: nothing was unpacked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_align_celeba.zip"]
    folder = extract(bomb, "img_align_celeba", max_unpacked_gb=1, max_unpack_ratio=1e6)  # limits raised: it unpacks
    assert (folder / "big.jpg").stat().st_size == 20_000_000


def test_zip_members_stay_inside_the_target(tmp_path):
    zip_path = _zip(tmp_path / "img_align_celeba.zip", {
        "img_align_celeba/ok.jpg": b"ok", "../escape.jpg": b"up", "/abs/escape.jpg": b"abs",
        "img_align_celeba/../../escape2.jpg": b"up2",
    })
    folder = extract(zip_path, "img_align_celeba")
    outside = {p.name for p in tmp_path.rglob("*")} - {"img_align_celeba.zip", "img_align_celeba"}
    assert (folder / "ok.jpg").read_bytes() == b"ok" and "escape.jpg" not in {p.name for p in tmp_path.iterdir()}
    assert outside <= {"ok.jpg", "escape2.jpg"} and not (tmp_path.parent / "escape.jpg").exists()
    assert all(tmp_path in p.resolve().parents for p in tmp_path.rglob("*"))
