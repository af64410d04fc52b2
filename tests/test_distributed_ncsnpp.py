"""torchrun on NCSN++: two gloo ranks (spawned, as torchrun would) train a tiny NCSN++ on Score-SDE's continuous loss
with activation checkpointing, and end on the weights one process reaches with the same config."""

import multiprocessing
import os
import queue
import socket

import pytest
import torch

from ncsn.model_loading import load_score_model
from ncsn.config import load_config

TINY = ["model.arch=ncsnpp", "model.scale_by_sigma=true", "model.ngf=8", "model.ncsnpp.ch_mult=[1,2]",
        "model.ncsnpp.num_res_blocks=1", "model.ncsnpp.attn_resolutions=[4]", "model.ncsnpp.dropout=0.0",
        "model.num_scales=5", "training.objective=ve", "training.grad_clip=1.0", "training.ema_warmup=true",
        "training.activation_checkpointing=true", "training.n_iters=3", "training.batch_size=8",
        "training.checkpoint_every=3", "training.snapshot_every=1000", "training.sample_every=1000",
        "training.log_every=1", "training.eval_every=1000", "data.memory_budget_gb=0"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, port: int, root: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), NCSN_DATA=os.path.join(root, "cache"), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from ncsn import distributed, training

    try:
        step = training.train(load_config("digits", TINY), os.path.join(root, "ranks"), device="cpu",
                              progress=False).step
        results.put((rank, "ok", step))
    except Exception as err:
        results.put((rank, "error", f"{type(err).__name__}: {err}"))
    finally:
        distributed.cleanup()


def test_two_ranks_train_ncsnpp_to_the_weights_of_one_process(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("NCSN_DATA", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(rank, port, str(tmp_path), results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    try:
        outcomes = dict((rank, rest) for rank, *rest in (results.get(timeout=180) for _ in procs))
    except queue.Empty:
        pytest.fail("a rank hung or died")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert outcomes == {0: ["ok", 3], 1: ["ok", 3]}

    from ncsn import training

    training.train(load_config("digits", TINY), tmp_path / "one", device="cpu", progress=False)
    for ema in (False, True):
        two = load_score_model(tmp_path / "ranks", ema=ema)[0].state_dict()
        one = load_score_model(tmp_path / "one", ema=ema)[0].state_dict()
        assert two.keys() == one.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
