"""The batch path: a device tensor and the memory-mapped cache give the same batches and training; torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn.checkpoint import list_checkpoints, load_training_state
from ncsn.config import load_config
from ncsn.data import DataConfig, MappedImages, load_split, prepare_batch, read_array, training_images
from ncsn.training import EpochBatches, _seeded, train

TINY = ["data.image_size=8", "model.in_channels=1", "model.ngf=4", "training.batch_size=8", "training.log_every=2",
        "training.eval_every=2", "training.eval_batch_size=6", "training.checkpoint_every=2",
        "training.snapshot_every=2",
        "training.sample_every=1000", "training.sample_n=2", "sampling.n_steps_each=1", "training.ema=true"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))


@pytest.fixture
def images_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(44):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_mapped_images_index_like_a_tensor(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (30, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    mapped = MappedImages(np.load(tmp_path / "a.npy", mmap_mode="r"))
    tensor = torch.from_numpy(array)
    index = torch.tensor([7, 2, 29, 2, 0])
    assert len(mapped) == 30 and mapped.shape == tensor.shape
    for key in (index, slice(3, 9), 4):
        got = mapped[key]
        assert got.dtype == torch.uint8 and torch.equal(got, tensor[key])
    assert mapped.to("cpu")[index].device.type == "cpu"
    with pytest.raises(ValueError, match="uint8"):
        MappedImages(array.astype(np.float32))


def test_memory_and_memory_mapped_paths_give_identical_batches(images_folder):
    cfg = DataConfig(dataset="folder", root=str(images_folder), image_size=8, random_flip=True, dequantize=True)
    in_memory = training_images(cfg)
    mapped = training_images(DataConfig(**{**cfg.__dict__, "memory_budget_gb": 0.0}))
    assert isinstance(in_memory, torch.Tensor) and isinstance(mapped, MappedImages)
    assert isinstance(read_array(cfg, "train")[0], np.memmap) and len(mapped) == len(in_memory) == 42
    batches = EpochBatches(len(in_memory), 8, seed=3)
    for step in range(12):  # more than two epochs of five batches
        a = prepare_batch(in_memory[batches.indices(step)], _seeded(3, 3, step, "cpu"), True, True)
        b = prepare_batch(mapped[batches.indices(step)], _seeded(3, 3, step, "cpu"), True, True)
        assert torch.equal(a, b), step
    assert torch.equal(load_split(cfg, "test", limit=1).images, load_split(cfg, "test").images[:1])


def test_training_does_not_depend_on_the_path_and_resumes_across_budgets(tmp_path, images_folder):
    base = ["data.dataset=folder", f"data.root={images_folder}", "data.random_flip=true", *TINY]
    in_memory = load_config("digits", [*base, "training.n_iters=4"])
    train(in_memory, tmp_path / "memory", device="cpu", progress=False)
    mapped = load_config("digits", [*base, "training.n_iters=2", "data.memory_budget_gb=0"])
    train(mapped, tmp_path / "mapped", device="cpu", progress=False)
    train(in_memory, tmp_path / "mapped", resume=True, device="cpu", progress=False)  # the budget may change on resume
    a = load_training_state(list_checkpoints(tmp_path / "memory")[-1][1])
    b = load_training_state(list_checkpoints(tmp_path / "mapped")[-1][1])
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


def test_torchrun_on_an_empty_cache_prepares_once_and_trains(tmp_path, images_folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCSN_DATA": str(tmp_path / "cache")}
    sets = [f"--set={s}" for s in [*TINY, f"data.root={images_folder}", "training.n_iters=2", "training.ema=false"]]
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ncsn.cli",
         "train", "--config", "folder", "--device", "cpu", "--no-progress", "--workdir", str(tmp_path / "run"), *sets],
        env=env, capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    cache = tmp_path / "cache" / "folder"
    prepared = sorted(p.name.split("-")[1] for p in cache.glob("*.npy"))
    assert prepared == ["test", "train"] and not list(cache.glob(".*.tmp"))
    assert [json.loads(p.read_text())["images"] for p in sorted(cache.glob("*.json"))] == [2, 42]  # test, train
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["processes"] == 2 and list_checkpoints(tmp_path / "run")[-1][0] == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs these)")
def test_cuda_memory_mapped_batches_equal_the_device_tensors(images_folder):
    cfg = DataConfig(dataset="folder", root=str(images_folder), image_size=8, random_flip=True)
    on_device = training_images(cfg, "cuda")
    mapped = training_images(DataConfig(**{**cfg.__dict__, "memory_budget_gb": 0.0}), "cuda")
    batches = EpochBatches(len(on_device), 8, seed=3, device="cuda")
    for step in range(8):
        a = prepare_batch(on_device[batches.indices(step)], _seeded(3, 3, step, "cuda"), True, True)
        b = prepare_batch(mapped[batches.indices(step)], _seeded(3, 3, step, "cuda"), True, True)
        assert a.device.type == b.device.type == "cuda" and torch.equal(a, b), step
