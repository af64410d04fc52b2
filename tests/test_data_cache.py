"""Prepared caches: the .npy writer, keys that rebuild on any change, atomic writes, and one preparer per machine."""

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn.data import DataConfig, load_split
from ncsn.data import cache as cache_module
from ncsn.data import prepare as prepare_module
from ncsn.data.cache import NpyWriter

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))


def write_images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def cache_files(tmp_path):
    folder = tmp_path / "cache" / "folder"
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock") if folder.is_dir() else []


def count_preparations(monkeypatch):
    calls = []
    real = prepare_module.prepare_files

    def counted(*args, **kwargs):
        calls.append(args[1].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare_files", counted)
    return calls


def test_writer_round_trips_and_shrinks_to_the_rows_written(tmp_path):
    rows = np.random.default_rng(0).integers(0, 256, (7, 3, 5, 5), dtype=np.uint8)
    (tmp_path / ".a.npy.otherhost-123.tmp").write_bytes(b"left by a killed writer")
    here = socket.gethostname()
    (tmp_path / f".b.npy.{here}-0a1b2c3d.99999.tmp").write_bytes(b"a killed preparation of other files, here")
    (tmp_path / ".b.npy.otherhost-0a1b2c3d.99999.tmp").write_bytes(b"another machine may be writing it")
    with NpyWriter(tmp_path / "a.npy", (3, 5, 5)) as writer:
        writer.append(rows[:4])
        writer.append(rows[4:])
        writer.commit()
    assert np.array_equal(np.load(tmp_path / "a.npy"), rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.npy.otherhost-0a1b2c3d.99999.tmp", "a.npy"]
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped.offset == 128 and np.array_equal(mapped[2:5], rows[2:5])
    with NpyWriter(tmp_path / "b.npy", (3, 5, 5)) as writer:
        writer.append(rows[:2])  # left without commit: nothing stays behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    with pytest.raises(ValueError, match="expected uint8 rows of shape"), NpyWriter(tmp_path / "c.npy", (3, 5, 5)) as w:
        w.append(rows[:, :2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_disk_full_while_preparing_leaves_no_cache_and_the_next_run_rebuilds(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", 600)  # three chunks: the disk fills up in the second
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "imgs"), image_size=8)
    real_open_temp = cache_module.open_temp

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            if self.written + len(data) > 60_000:  # 256 images of 192 bytes fit, 512 do not
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def full_disk_open_temp(path):
        fh, tmp = real_open_temp(path)
        return FullDisk(fh), tmp

    monkeypatch.setattr(cache_module, "open_temp", full_disk_open_temp)
    with pytest.raises(OSError, match="No space left"):
        load_split(cfg)
    assert cache_files(tmp_path) == []  # no half cache, no temporary file
    monkeypatch.undo()
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    train = load_split(cfg)
    assert len(train.images) == 570 and len(cache_files(tmp_path)) == 2  # the .npy and its .json


def test_other_settings_files_or_format_get_a_new_cache_and_a_broken_one_is_rebuilt(tmp_path, monkeypatch):
    write_images(tmp_path / "imgs", 20)
    calls = count_preparations(monkeypatch)
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "imgs"), image_size=8)
    first = load_split(cfg).images
    load_split(cfg)
    assert len(calls) == 1  # the second read used the cache
    for changed in (DataConfig(**{**cfg.__dict__, "image_size": 6}), DataConfig(**{**cfg.__dict__, "center_crop": 9}),
                    DataConfig(**{**cfg.__dict__, "channels": 1})):
        load_split(changed)
    assert len(calls) == 4 and len(set(calls)) == 4
    load_split(DataConfig(**{**cfg.__dict__, "memory_budget_gb": 0.0, "random_flip": True}))
    assert len(calls) == 4  # settings that do not change the pixels share the cache
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION + 1)
    assert torch.equal(load_split(cfg).images, first) and len(calls) == 5
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION - 1)
    img = tmp_path / "imgs" / "005.png"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # a file touched: rebuilt
    load_split(cfg)
    assert len(calls) == 6
    newest = max((tmp_path / "cache" / "folder").glob("imgs-train-8px-3c-*.npy"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:500])  # truncated by hand: not taken for complete
    assert torch.equal(load_split(cfg).images, first) and len(calls) == 7
    assert json.loads(newest.with_suffix(".json").read_text())["images"] == len(first)


RACER = textwrap.dedent("""
    import hashlib, json, os, shutil, sys, time
    from pathlib import Path
    import torchvision.datasets.utils as tv_utils
    from ncsn.data import DataConfig, load_split, download, prepare, cache

    served, log, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def note(event):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {event}\\n")

    def slow_download(file_id, root, filename=None, md5=None):
        note("download " + filename)
        time.sleep(0.3)
        shutil.copy(served / filename, Path(root) / filename)

    tv_utils.download_file_from_google_drive = slow_download
    files = ("img_align_celeba.zip", "list_eval_partition.txt")
    download.CELEBA_DRIVE = {n: (n, download.md5(served / n)) for n in files}
    real_extract, real_prepare, real_decode = download.extract, prepare.prepare_files, prepare.decode
    import ncsn.data.celeba as celeba
    celeba.extract = lambda *a: (note("extract"), real_extract(*a))[1]
    prepare.prepare_files = lambda files, path, *a: (note("prepare " + path.name.split("-")[1]),
                                                     real_prepare(files, path, *a))[1]
    prepare.decode = lambda *a: (time.sleep(0.02), real_decode(*a))[1]
    (ready / str(os.getpid())).touch()
    while len(list(ready.iterdir())) < 2:  # both have imported everything: start reading together
        time.sleep(0.005)
    cfg = DataConfig(dataset="celeba", image_size=16)
    out = {s: hashlib.sha1(load_split(cfg, s).images.numpy().tobytes()).hexdigest() for s in ("train", "test")}
    print(json.dumps(out))
""")


def test_two_processes_on_an_empty_data_folder_download_extract_and_prepare_once(tmp_path):
    """Like two torchrun ranks on a fresh machine: one downloads, extracts and prepares; the other waits, then reads."""
    import zipfile

    served = tmp_path / "served"
    (served / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, 25)]
    with zipfile.ZipFile(served / "img_align_celeba.zip", "w") as zf:
        for name in names:
            pixels = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(served / "img_align_celeba" / name)
            zf.write(served / "img_align_celeba" / name, f"img_align_celeba/{name}")
    (served / "list_eval_partition.txt").write_text("".join(f"{n} {0 if i < 18 else 2}\n" for i, n in enumerate(names)))
    log = tmp_path / "events.log"
    env = {**os.environ, "NCSN_DATA": str(tmp_path / "cache"), "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    (tmp_path / "ready").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(served), str(log), str(tmp_path / "ready")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]
    events = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert sorted(events) == ["download img_align_celeba.zip", "download list_eval_partition.txt", "extract",
                              "prepare test", "prepare train"]
    assert sum("waiting for another process" in err for _, err in outputs) >= 1  # the other one did wait
    cache = tmp_path / "cache" / "celeba"
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith("img_align_celeba-")) == [
        ".lock", "img_align_celeba", "img_align_celeba.zip", "list_eval_partition.txt"]
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".*.tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NCSN_DATA", str(tmp_path / "cache"))
        train = load_split(DataConfig(dataset="celeba", image_size=16, download=False))
    import hashlib

    assert hashlib.sha1(train.images.numpy().tobytes()).hexdigest() == results[0]["train"] and len(train.images) == 18
