"""torchrun's ranks on the CPU: two gloo processes (spawned, as torchrun would) run the training setup and loop.

One session of two ranks runs three scenarios in order (a process group outlives a failed setup, so they share it):
a setup error on rank 1 alone, a run whose rank 0 does slow side work under a short collective timeout, and a resume
where rank 1 sees an older copy of the run folder (no shared filesystem).
"""

import datetime
import multiprocessing
import os
import queue
import shutil
import socket
import time

import pytest
import torch

from ncsn import distributed
from ncsn.errors import InputError

TINY = ["model.ngf=4", "training.batch_size=16", "training.log_every=2", "training.eval_every=1000",
        "training.eval_batch_size=8", "training.checkpoint_every=2", "training.snapshot_every=1000",
        "training.keep_last=5", "training.sample_every=1000", "training.sample_n=2", "sampling.n_steps_each=1",
        "training.ema=false", "data.memory_budget_gb=0"]
COLLECTIVE_TIMEOUT_S = 4  # the training collectives' timeout in this test (NCCL's default is 10 minutes)
SIDE_WORK_S = 2.5 * COLLECTIVE_TIMEOUT_S  # rank 0's held-out loss takes longer than that


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _outcome(call):
    try:
        return ("ok", call())
    except Exception as err:  # what the command line would print: the type and the one line
        return ("error", type(err).__name__, str(err))


def _rank(rank: int, world: int, port: int, root: str, results) -> None:
    """One rank: the three scenarios, each outcome sent back as (rank, scenario, outcome)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), NCSN_DATA=os.path.join(root, "cache"), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from ncsn import training
    from ncsn.config import load_config
    from ncsn.data import DatasetNotFoundError, MappedImages

    init = dist.init_process_group

    def short_timeout(*args, **kwargs):  # the training collectives give up after a few seconds here
        kwargs.setdefault("timeout", datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        return init(*args, **kwargs)

    dist.init_process_group = short_timeout
    config = load_config("digits", [*TINY, "training.n_iters=4"])

    # 1. rank 1 alone cannot read its data
    real_images = training.training_images

    def broken(*args, **kwargs):
        raise DatasetNotFoundError("data/train.npy: cannot read it (simulated on rank 1)")

    training.training_images = broken if rank == 1 else real_images
    results.put((rank, "setup", _outcome(lambda: training.train(config, os.path.join(root, "bad"), device="cpu",
                                                                  progress=False))))
    training.training_images = real_images

    # 2. a run: every rank reads only its share of each batch; rank 0's side work outlasts the collective timeout
    reads = []
    getitem = MappedImages.__getitem__

    def counted(self, index):
        out = getitem(self, index)
        reads.append(len(out))
        return out

    MappedImages.__getitem__ = counted
    heldout = training.heldout_loss

    def slow_heldout(*args, **kwargs):
        time.sleep(SIDE_WORK_S)
        return heldout(*args, **kwargs)

    training.heldout_loss = slow_heldout if rank == 0 else heldout
    run = os.path.join(root, "run")
    results.put((rank, "run", _outcome(lambda: (training.train(config, run, device="cpu", progress=False).step,
                                               reads))))
    MappedImages.__getitem__ = getitem

    # 3. rank 1 resumes from its own, older copy of the run folder (as on a node without the shared filesystem)
    folder = run
    if rank == 1:
        folder = os.path.join(root, "copy")
        shutil.copytree(run, folder)
        os.remove(os.path.join(folder, "checkpoints", "checkpoint_00000004.pt"))
    longer = load_config("digits", [*TINY, "training.n_iters=6"])
    results.put((rank, "resume", _outcome(lambda: training.train(longer, folder, resume=True, device="cpu",
                                                                   progress=False))))
    distributed.cleanup()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """{scenario: [rank 0's outcome, rank 1's outcome]}; fails if a rank hangs or dies."""
    root = tmp_path_factory.mktemp("ranks")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(rank, 2, port, str(root), results)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    found: dict = {}
    try:
        for _ in range(6):
            rank, scenario, outcome = results.get(timeout=120)
            found.setdefault(scenario, [None, None])[rank] = outcome
    except queue.Empty:
        pytest.fail(f"a rank hung or died; outcomes so far: {found}")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return root, found


def test_a_setup_error_on_one_rank_stops_every_rank_with_the_same_line(two_ranks):
    root, found = two_ranks
    line = "rank 1: data/train.npy: cannot read it (simulated on rank 1)"
    assert found["setup"] == [("error", "DistributedError", line)] * 2
    assert not (root / "bad").exists()  # rank 0 wrote nothing: the setup had not passed everywhere


def test_side_work_longer_than_the_collective_timeout_does_not_trip_it_and_ranks_read_their_share(two_ranks):
    root, found = two_ranks
    (status0, (step0, reads0)), (status1, (step1, reads1)) = found["run"]
    assert status0 == status1 == "ok" and step0 == step1 == 4
    assert reads0 == reads1 == [8] * 4  # half of the global batch of 16 per rank and step
    assert [p.name for p in sorted((root / "run" / "checkpoints").glob("*.pt"))] == [
        "checkpoint_00000002.pt", "checkpoint_00000004.pt"]


def test_a_rank_with_an_older_copy_of_the_run_folder_stops_the_resume(two_ranks):
    root, found = two_ranks
    outcome = found["resume"]
    assert outcome[0] == outcome[1] and outcome[0][:2] == ("error", "DistributedError")
    assert "rank 1: --resume: this rank found checkpoint step 2" in outcome[0][2]
    assert "rank 0 step 4" in outcome[0][2] and "shared" in outcome[0][2]
    assert not (root / "run" / "resumes.jsonl").exists()  # nothing recorded: the resume never started


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(InputError, match=r"^--device cuda:0: under torchrun every rank would use this one device; "
                                         r"pass --device cuda and rank r takes cuda:LOCAL_RANK \(here cuda:1\)$"):
        distributed.setup("cuda:0")


def test_the_side_work_timeout_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.SIDE_WORK_TIMEOUT_ENV, raising=False)
    assert distributed.side_work_timeout() == datetime.timedelta(hours=2)
    monkeypatch.setenv(distributed.SIDE_WORK_TIMEOUT_ENV, "90")
    assert distributed.side_work_timeout() == datetime.timedelta(seconds=90)
    monkeypatch.setenv(distributed.SIDE_WORK_TIMEOUT_ENV, "soon")
    with pytest.raises(InputError, match="NCSN_SIDE_WORK_TIMEOUT_S='soon': need a positive number of seconds"):
        distributed.side_work_timeout()


def test_a_rank_without_the_run_folder_says_resuming_needs_a_shared_filesystem(tmp_path, monkeypatch):
    from ncsn.config import load_config
    from ncsn.resume import _resolve_config, resume_config
    from ncsn.runfolder import RunFolderError

    monkeypatch.setenv("WORLD_SIZE", "2")
    shared = r"to resume from \(every rank reads it: several nodes need a shared filesystem\)$"
    with pytest.raises(RunFolderError, match=shared):
        resume_config(tmp_path)
    with pytest.raises(RunFolderError, match=shared):
        _resolve_config(load_config("digits"), tmp_path, resume=True)


def test_the_agreed_line_names_the_first_failing_rank_or_every_rank():
    user = ("InputError", "sampling.snr: must be positive", True)
    assert distributed.agreed_line([None, None]) is None
    assert distributed.agreed_line([None, user]) == "rank 1: sampling.snr: must be positive"
    assert distributed.agreed_line([user, user]) == "every rank: sampling.snr: must be positive"
    other = ("DatasetNotFoundError", "no data in /x", True)
    assert distributed.agreed_line([None, other, user]) == "rank 1 (and 1 more): no data in /x"
    bug = ("TypeError", "unsupported operand", False)
    assert distributed.agreed_line([bug, None]) == (
        "rank 0 failed with a bug (TypeError: unsupported operand); see its traceback")


def test_one_process_raises_its_own_error_unchanged():
    err = InputError("bad")
    with pytest.raises(InputError) as caught:
        distributed.agree(err)
    assert caught.value is err
    assert distributed.agree(None, payload=7) == 7
