"""Run folders that cannot hurt each other or themselves: one trainer at a time, resumes that keep their settings,
orphan temp files cleaned, nothing left behind by a run that fails to start, slim snapshots, scoped global state."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn import training
from ncsn.config import load_config
from ncsn.io import temp_path
from ncsn.model_loading import load_score_model
from ncsn.runfolder import (
    UNKNOWN_HOST_STALE_S,
    RunFolderLock,
    read_history,
    remove_orphan_temp_files,
    write_config,
)
from ncsn.training import RunFolderError, train

from .conftest import run

PRESET_LR = load_config("digits").training.lr  # what a run keeps when a hand edit or a failed resume is undone

TINY = ["model.ngf=4", "training.batch_size=16", "training.log_every=5", "training.eval_every=5",
        "training.eval_batch_size=20", "training.checkpoint_every=5", "training.snapshot_every=10",
        "training.keep_last=2", "training.sample_every=1000", "training.sample_n=4", "sampling.n_steps_each=1",
        "training.ema=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def train_cli(workdir, *extra, config="digits"):
    head = ["train", "--workdir", workdir, "--device", "cpu", "--no-progress"]
    return run(*head, *(["--config", config] if config else []), *extra)


def sets(*overrides):
    return [f"--set={s}" for s in (*TINY, *overrides)]


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    # the error is the last line and a single one; a note printed before it (the precision chosen) may precede it
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: ") and result.output.count("Error: ") == 1, result.output
    assert "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_a_failed_resume_leaves_the_run_as_it_was_and_the_history_says_what_it_tried(tmp_path):
    assert train_cli(tmp_path, *sets("training.n_iters=10")).exit_code == 0
    saved_yaml = (tmp_path / "config.yaml").read_text()

    bad = train_cli(tmp_path, "--resume", *sets("training.n_iters=20", "training.lr=1e6"), config=None)
    one_line_error(bad, "NaN/inf", "checkpoint_00000010.pt")
    assert (tmp_path / "config.yaml").read_text() == saved_yaml  # the failed resume changed nothing
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [5, 10]
    history = read_history(tmp_path)
    assert [(h["event"], h["step"]) for h in history] == [("resume", 10), ("stopped", 15)]
    assert history[0]["changes"] == {"training.n_iters": [10, 20], "training.lr": [PRESET_LR, 1e6]}

    good = train_cli(tmp_path, "--resume", "--set=training.n_iters=20", config=None)  # no lr given: the saved one
    assert good.exit_code == 0, good.output
    state = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path))
    assert state["step"] == 20 and state["config"]["training"]["lr"] == PRESET_LR
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert load_config(str(tmp_path / "config.yaml")) == load_config("digits", TINY + ["training.n_iters=20"])
    assert read_history(tmp_path)[-1]["changes"] == {"training.n_iters": [10, 20]}


def test_the_latest_checkpoint_is_the_source_of_truth_when_config_yaml_is_missing_or_edited(tmp_path):
    assert train_cli(tmp_path, *sets("training.n_iters=5")).exit_code == 0
    (tmp_path / "config.yaml").write_text("training:\n  lr: 1000000.0\n  n_iters: 10\n")  # hand-edited
    result = train_cli(tmp_path, "--resume", "--set=training.n_iters=10", config=None)
    assert result.exit_code == 0, result.output
    assert "differs from the latest checkpoint's config" in result.output
    state = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path))
    assert state["config"]["training"]["lr"] == PRESET_LR and state["config"]["model"]["ngf"] == 4
    (tmp_path / "config.yaml").unlink()
    result = train_cli(tmp_path, "--resume", "--set=training.n_iters=15", config=None)
    assert result.exit_code == 0 and "missing or differs" in result.output
    assert load_config(str(tmp_path / "config.yaml")).training.n_iters == 15


@pytest.mark.parametrize("override,message", [
    ("training.seed=7", "changing training.seed (1234 -> 7) would break the bit-identity"),
    ("training.batch_size=8", "changing training.batch_size (16 -> 8) would break the bit-identity"),
    ("model.ngf=8", "--resume: model.ngf (4 -> 8) differ from the run's saved config"),
    ("data.image_size=16", "data.image_size (8 -> 16)"),
])
def test_resumes_that_would_break_the_run_are_refused_naming_the_keys(tmp_path_factory, override, message):
    workdir = tmp_path_factory.getbasetemp() / "refusals"
    if not ckpt.list_checkpoints(workdir):
        assert train_cli(workdir, *sets("training.n_iters=5")).exit_code == 0
    before = sorted(p.name for p in workdir.rglob("*"))
    one_line_error(train_cli(workdir, "--resume", *sets("training.n_iters=10", override)), message)
    assert sorted(p.name for p in workdir.rglob("*")) == before


@pytest.mark.parametrize("override,message", [
    ("training.batch_size=5000", "config key 'training.batch_size': 5000 exceeds the training set (1500 images)"),
    ("data.dataset=mnist", "mnist: "),
])
def test_a_run_that_fails_to_start_leaves_no_run_folder(tmp_path, override, message):
    workdir = tmp_path / "run"
    extra = ["--set=model.in_channels=1", "--set=data.download=false", f"--set=data.root={tmp_path / 'none'}"]
    one_line_error(train_cli(workdir, *sets("training.n_iters=5", override), *extra), message)
    assert not workdir.exists()


def test_a_second_trainer_is_refused_naming_the_holder_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    args = ["-m", "ncsn.cli", "train", "--config", "digits", "--workdir", str(tmp_path), "--device", "cpu",
            "--no-progress", *sets("training.n_iters=100000")]
    holder = subprocess.Popen([sys.executable, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ckpt.list_checkpoints(tmp_path) and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.list_checkpoints(tmp_path), "the first run must have started"
        for extra in (["--resume"], []):
            line = one_line_error(train_cli(tmp_path, *extra, *sets("training.n_iters=100000")), f"PID {holder.pid}")
            assert "is in use" in line
        with pytest.raises(RunFolderError, match=f"PID {holder.pid}"):
            train(load_config("digits", TINY), tmp_path, resume=True, device="cpu", progress=False)
        snapshot = ckpt.snapshot_path(tmp_path, 10)
        while not snapshot.is_file() and time.time() < deadline:
            time.sleep(0.05)
        sample = run("sample", "--checkpoint", snapshot, "--n", 2, "--out", tmp_path.parent / "s", "--device", "cpu")
        assert sample.exit_code == 0, sample.output  # reading commands take no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    last = ckpt.list_checkpoints(tmp_path)[-1][0]
    resumed = train_cli(tmp_path, "--resume", f"--set=training.n_iters={last + 5}", config=None)
    assert resumed.exit_code == 0, resumed.output  # the kernel dropped the killed holder's lock
    assert ckpt.list_checkpoints(tmp_path)[-1][0] == last + 5


def test_the_lock_file_names_its_holder_and_a_fresh_folder_is_removed_when_the_run_never_started(tmp_path):
    lock = RunFolderLock(tmp_path / "new").acquire()
    assert (tmp_path / "new" / ".lock").read_text().startswith(f"{os.getpid()} on ")
    with pytest.raises(RunFolderError, match=f"PID {os.getpid()} on"):
        RunFolderLock(tmp_path / "new").acquire()
    lock.release(discard=True)
    assert not (tmp_path / "new").exists()
    again = RunFolderLock(tmp_path / "new").acquire()
    again.release()
    assert (tmp_path / "new" / ".lock").is_file()  # kept (an unlink would race with a waiting process)


def test_temp_files_of_dead_writers_are_removed_when_a_run_resumes(tmp_path):
    assert train_cli(tmp_path, *sets("training.n_iters=5")).exit_code == 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    try:
        dead_file = tmp_path / "checkpoints" / f".checkpoint_00000010.pt.{host}-{gone.pid}.tmp"
        live_file = tmp_path / "checkpoints" / f".checkpoint_00000010.pt.{host}-{alive.pid}.tmp"
        other = tmp_path / "checkpoints" / "notes.tmp"
        for path in (dead_file, live_file, other):
            path.write_bytes(b"partial checkpoint")
        assert train_cli(tmp_path, "--resume", "--set=training.n_iters=10", config=None).exit_code == 0
        assert not dead_file.exists() and live_file.exists() and other.exists()
    finally:
        alive.kill()
        alive.wait()


def test_checkpoint_and_config_writes_stage_under_a_name_that_carries_host_and_pid(tmp_path, monkeypatch):
    staged = []
    replace = os.replace

    def spy(src, dst):
        staged.append(Path(src).name)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    ckpt.atomic_save({"step": 1}, tmp_path / "checkpoint_00000001.pt")
    write_config(tmp_path, load_config("digits"))
    suffix = re.escape(f".{socket.gethostname()}-{os.getpid()}.tmp")
    assert len(staged) == 2
    for name, target in zip(staged, ("checkpoint_00000001.pt", "config.yaml")):
        assert re.fullmatch(rf"\.{re.escape(target)}\.[0-9a-f]{{8}}{suffix}", name), name
    assert re.fullmatch(rf"\.x\.pt\.[0-9a-f]{{8}}{suffix}", temp_path(tmp_path / "x.pt").name)


def test_another_hosts_temp_files_are_kept_and_host_less_ones_only_once_stale(tmp_path):
    """On a folder shared between hosts, a PID that is dead here may be alive on the other host."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    names = {
        "mine, dead": f".checkpoint_00000010.pt.{host}-{gone.pid}.tmp",
        "mine, alive": f".checkpoint_00000010.pt.{host}-{alive.pid}.tmp",
        "other host": f".checkpoint_00000010.pt.not-{host}-{gone.pid}.tmp",
        "other fqdn": f".checkpoint_00000010.pt.{host}.example.org-{gone.pid}.tmp",
        "host-less, fresh": f".checkpoint_00000010.pt.{gone.pid}.tmp",
        "host-less, stale": f".checkpoint_00000020.pt.{gone.pid}.tmp",
        "host-less, stale, alive": f".checkpoint_00000030.pt.{alive.pid}.tmp",
    }
    try:
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"partial")
            if "stale" in key:
                hours_ago = time.time() - 2 * UNKNOWN_HOST_STALE_S
                os.utime(tmp_path / name, (hours_ago, hours_ago))
        removed = remove_orphan_temp_files(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in removed) == sorted([names["mine, dead"], names["host-less, stale"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k not in ("mine, dead", "host-less, stale"))


def test_the_package_imports_and_locks_run_folders_without_fcntl(tmp_path):
    """As on Windows: no fcntl module. filelock's lock stands in; a second holder is refused in one line."""
    script = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import ncsn, ncsn.cli\n"
        "from ncsn.runfolder import RunFolderError, RunFolderLock, fcntl\n"
        "assert fcntl is None\n"
        f"folder = {str(tmp_path / 'run')!r}\n"
        "lock = RunFolderLock(folder).acquire()\n"
        "try:\n"
        "    RunFolderLock(folder).acquire()\n"
        "except RunFolderError as err:\n"
        "    print(err)\n"
        "lock.release(discard=True)\n"
        "again = RunFolderLock(folder).acquire()\n"
        "again.release()\n"
        "print('reacquired')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{tmp_path / 'run'} is in use: another ncsn process (its PID is not recorded on this platform) is training "
        "there; wait for it to end or choose another --workdir", "reacquired"]


def test_snapshot_steps_are_kept_slim_beside_the_last_full_checkpoints(tmp_path):
    result = train(load_config("digits", TINY + ["training.n_iters=40"]), tmp_path, device="cpu", progress=False)
    assert result.step == 40
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [35, 40]
    assert [s for s, _ in ckpt.list_snapshots(tmp_path)] == [10, 20, 30, 40]
    full = ckpt.checkpoint_path(tmp_path, 40).stat().st_size
    assert all(path.stat().st_size < 0.3 * full for _, path in ckpt.list_snapshots(tmp_path))
    slim, _, info = load_score_model(ckpt.snapshot_path(tmp_path, 40))
    ema = ckpt.load_training_state(ckpt.checkpoint_path(tmp_path, 40))["ema"]
    assert info == {"weights": "ema", "step": 40}
    assert all(torch.equal(v, ema[k]) for k, v in slim.state_dict().items())
    assert [s for s, _ in ckpt.sweep_checkpoints(tmp_path)] == [10, 20, 30, 35, 40]


def test_training_leaves_the_callers_random_state_and_checkpoints_keep_no_generator_state(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=5"])
    torch.manual_seed(99)
    before = torch.get_rng_state()
    train(config, tmp_path, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    state = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path))
    assert "rng" not in state  # every draw of the loop comes from (seed, step) generators
    config.training.n_iters = 10
    train(config, tmp_path, resume=True, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_cudnn_autotuning_is_on_for_the_training_steps_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored afterwards
    monkeypatch.setattr(training, "autotunes", lambda device: True)  # act as on CUDA
    seen = {"steps": set(), "grids": set()}
    step, generate = training.train_step, training.generate

    def spy_step(*args, **kwargs):
        seen["steps"].add(torch.backends.cudnn.benchmark)
        return step(*args, **kwargs)

    def spy_generate(*args, **kwargs):
        seen["grids"].add(torch.backends.cudnn.benchmark)
        return generate(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", spy_step)
    monkeypatch.setattr(training, "generate", spy_generate)
    train(load_config("digits", TINY + ["training.n_iters=4", "training.sample_every=2"]), tmp_path, device="cpu",
          progress=False)
    assert seen == {"steps": {True}, "grids": {False}}
    assert torch.backends.cudnn.benchmark is False  # the process's setting is back
