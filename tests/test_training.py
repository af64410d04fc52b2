import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ncsn import training
from ncsn.checkpoint import list_checkpoints, load_training_state
from ncsn.config import ConfigError, load_config
from ncsn.lr_schedule import lr_at
from ncsn.training import NonFiniteLossError, RunFolderError, train

TINY = [
    "model.ngf=4", "training.batch_size=16", "training.log_every=5", "training.eval_every=5",
    "training.eval_batch_size=20", "training.checkpoint_every=5", "training.snapshot_every=10",
    "training.keep_last=2", "training.sample_every=1000", "training.sample_n=4", "sampling.n_steps_each=1",
    "training.ema=true",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "ncsn.cli", *args], env=ENV, capture_output=True, text=True, check=False, **kwargs)


def final_state(workdir):
    return load_training_state(list_checkpoints(workdir)[-1][1])


def test_tiny_run_writes_its_files(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=10"])
    result = train(config, tmp_path, device="cpu", progress=False)
    assert result.step == 10 and result.checkpoint.name == "checkpoint_00000010.pt"
    assert (tmp_path / "config.yaml").is_file() and load_config(str(tmp_path / "config.yaml")) == config
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "test_loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10] and [r["step"] for r in eval_rows] == [5, 10]
    assert all(r["images_per_s"] > 0 and r["lr"] == lr_at(config.training, r["step"] - 1) for r in train_rows)
    assert len(eval_rows[0]["test_loss_per_level"]) == config.model.num_scales
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10]
    assert (tmp_path / "samples" / "step_00000010.png").is_file()
    state = final_state(tmp_path)
    assert state["step"] == 10 and state["ema"] is not None and state["config"]["model"]["ngf"] == 4
    with pytest.raises(RunFolderError, match="already has checkpoints"):
        train(config, tmp_path, device="cpu", progress=False)
    with pytest.raises(RunFolderError, match="no checkpoint"):
        train(config, tmp_path / "fresh", resume=True, device="cpu", progress=False)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = ["train", "--config", "digits", "--device", "cpu", "--no-progress"]
    schedule = ["training.lr_schedule=cosine", "training.lr_warmup=10"]  # the rate is a function of the step
    sets = [f"--set={s}" for s in TINY + schedule + ["training.n_iters=60"]]
    straight = cli(*args, "--workdir", str(tmp_path / "straight"), *sets)
    assert straight.returncode == 0, straight.stderr

    victim = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "ncsn.cli", *args, "--workdir", str(victim), *sets], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list_checkpoints(victim) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = list_checkpoints(victim)[-1][0]
    assert 5 <= killed_at < 60, "the run must die part-way"
    resumed = cli(*args, "--workdir", str(victim), "--resume", *sets)
    assert resumed.returncode == 0, resumed.stderr

    a, b = final_state(tmp_path / "straight"), final_state(victim)
    assert a["step"] == b["step"] == 60
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    steps = [json.loads(r)["step"] for r in (victim / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    assert steps == list(range(5, 61, 5))  # rows after the checkpoint were dropped, then rewritten


def test_learning_rate_schedules_follow_their_closed_forms():
    t = load_config("digits", ["training.n_iters=101", "training.lr=1e-3", "training.lr_min=1e-4",
                               "training.lr_warmup=0", "training.lr_schedule=cosine"]).training
    assert lr_at(t, 0) == pytest.approx(1e-3) and lr_at(t, 100) == pytest.approx(1e-4)
    assert lr_at(t, 50) == pytest.approx(5.5e-4) and lr_at(t, 25) == pytest.approx(1e-4 + 9e-4 * (1 + 0.5 ** 0.5) / 2)
    lin = dataclasses.replace(t, lr_schedule="linear", lr_warmup=20, lr_min=0.0)
    assert [lr_at(lin, s) for s in (0, 9, 19)] == pytest.approx([5e-5, 5e-4, 1e-3])  # warm-up ends at lr
    assert lr_at(lin, 60) == pytest.approx(5e-4) and lr_at(lin, 100) == 0.0
    const = dataclasses.replace(t, lr_schedule="constant", lr_warmup=0)
    assert {lr_at(const, s) for s in range(101)} == {1e-3}


def test_the_logged_rate_is_the_scheduled_one_and_bad_schedules_are_refused(tmp_path):
    config = load_config("digits", TINY + ["training.n_iters=20", "training.lr_schedule=linear", "training.lr_min=0",
                                         "training.lr=1e-3", "training.lr_warmup=0"])
    train(config, tmp_path, device="cpu", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "loss" in r] == pytest.approx([1e-3 * k / 19 for k in (15, 10, 5, 0)])  # after steps 4, 9, 14, 19
    for bad, key in (("training.lr_schedule=step", "lr_schedule"), ("training.lr_warmup=-1", "lr_warmup"),
                     ("training.lr_min=1", "lr_min")):
        with pytest.raises(ConfigError, match=key):
            load_config("digits", TINY + ["training.n_iters=20", bad])


def test_resume_reuses_the_recorded_precision_instead_of_deciding_again(tmp_path, monkeypatch, capsys):
    from ncsn import autotune, runtime
    from ncsn.runtime import RuntimeOptions

    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "_decided", {})
    monkeypatch.setattr(runtime, "_announced", set())
    monkeypatch.setattr(autotune, "cpu_info", lambda path=None: ("CPU with AMX", frozenset({"amx_bf16"})))
    clock = [0.0]

    def favours_bf16(*args, **kwargs):  # a trial in which bf16 takes half the time
        return lambda precision: clock.__setitem__(0, clock[0] + (1.0 if precision == "bf16" else 2.0))

    monkeypatch.setattr(runtime, "trial_workload", favours_bf16)
    monkeypatch.setattr(autotune, "perf_counter", lambda: clock[0])
    sets = TINY + ["training.ema=false", "training.eval_every=1000"]
    run = tmp_path / "auto"
    train(load_config("digits", sets + ["training.n_iters=5"]), run, device="cpu", progress=False,
          runtime=RuntimeOptions())
    record = json.loads((run / "runtime.json").read_text())
    assert (record["precision"], record["requested"], record["channels_last"]) == ("bf16", "auto", False)
    assert record["machine"]["cpu"] == "CPU with AMX" and "timed trial" in record["reason"]

    # Resumed where the rule would now pick fp32 (no native bf16) and any trial is an error: the record decides.
    monkeypatch.setattr(autotune, "_decided", {})
    monkeypatch.setattr(autotune, "cpu_info", lambda path=None: ("CPU without", frozenset({"avx2"})))
    monkeypatch.setattr(runtime, "trial_workload", lambda *a, **k: pytest.fail("the resumed run ran a trial"))
    capsys.readouterr()
    train(load_config("digits", sets + ["training.n_iters=10"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions())
    assert "precision bf16 for the resumed run: recorded in" in capsys.readouterr().err
    assert json.loads((run / "runtime.json").read_text())["precision"] == "bf16"
    straight = tmp_path / "straight"
    train(load_config("digits", sets + ["training.n_iters=10"]), straight, device="cpu", progress=False,
          runtime=RuntimeOptions(precision="bf16"))
    a, b = final_state(straight)["model"], final_state(run)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted bf16 run

    (run / "runtime.json").write_text("{broken")
    with pytest.raises(ValueError, match="runtime.json is unreadable.*--precision fp32 or bf16"):
        train(load_config("digits", sets + ["training.n_iters=15"]), run, resume=True, device="cpu",
              progress=False, runtime=RuntimeOptions())
    capsys.readouterr()
    train(load_config("digits", sets + ["training.n_iters=15"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions(precision="fp32"))  # an explicit choice resumes and is recorded
    assert json.loads((run / "runtime.json").read_text())["precision"] == "fp32"
    (run / "runtime.json").unlink()  # a run folder from before the record trained in fp32, the default then
    train(load_config("digits", sets + ["training.n_iters=20"]), run, resume=True, device="cpu", progress=False,
          runtime=RuntimeOptions())
    assert "precision fp32 for the resumed run: no runtime.json" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = training.dsm_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] >= 7 else out

    monkeypatch.setattr(training, "dsm_loss", poisoned)
    config = load_config("digits", TINY + ["training.n_iters=20"])
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf by step 10.*checkpoint_00000005.pt"):
        train(config, tmp_path, device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    state = final_state(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    sets = [f"--set={s}" for s in TINY + ["training.n_iters=5", "training.ema=false"]]
    one = cli("train", "--config", "digits", "--device", "cpu", "--no-progress", "--workdir", str(tmp_path / "one"),
              *sets)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ncsn.cli",
         "train", "--config", "digits", "--device", "cpu", "--no-progress", "--workdir", str(tmp_path / "two"), *sets],
        env=ENV, capture_output=True, text=True, check=False,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = final_state(tmp_path / "one")["model"], final_state(tmp_path / "two")["model"]
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    first = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["processes"] == 2
    alone = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == alone["step"] == 5
    assert first["loss"] == pytest.approx(alone["loss"], abs=1e-5)  # the global batch's mean loss, not rank 0's


def test_shards_split_the_global_batch():
    from ncsn.distributed import shard

    assert [shard(16, r, 2) for r in (0, 1)] == [slice(0, 8), slice(8, 16)]
    with pytest.raises(ValueError, match="does not split evenly"):
        shard(15, 0, 2)
