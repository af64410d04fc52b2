"""Nothing lost: the fault battery of issue 23 on checkpoints, exports, resumes and sample outputs.

Each test injects the fault a user met (a torn line, a crash between two files, a kill while writing, a text file
or NaN weights where a checkpoint belongs) and checks that the last good state survives or that one line says why.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .conftest import run
from ncsn import NCSNv2, build_score_model
from ncsn.checkpoint import CheckpointError, atomic_save, export_slim, load_score_model, safe_load, training_state
from ncsn.config import load_config
from ncsn.errors import StorageError
from ncsn.runfolder import read_history
from ncsn.runtime import RuntimeOptions
from ncsn.sigmas import geometric_sigmas
from ncsn.training import train

TINY = ["model.ngf=4", "training.batch_size=8", "training.log_every=5", "training.eval_every=5",
        "training.eval_batch_size=8", "training.checkpoint_every=5", "training.snapshot_every=10",
        "training.keep_last=2", "training.sample_every=1000", "training.sample_n=4", "sampling.n_steps_each=1"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("Error: ") == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert all(f in line for f in fragments), line


def _checkpoint(path, step=3, bump=0.0, ema=True):
    config = load_config("digits", ["model.ngf=4", "training.n_iters=3", f"training.ema={str(ema).lower()}"])
    torch.manual_seed(0)
    model = build_score_model(config.model)
    with torch.no_grad():
        model.net.end_conv.bias.add_(bump)
    avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True) if ema else None
    atomic_save(training_state(step, config, model, torch.optim.Adam(model.parameters()), avg), path)
    return model


# --- checkpoints that are not checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [b"hello world\nthis is a text file\n", b"e", b"}"])
def test_a_text_file_as_checkpoint_is_one_line_naming_it(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_bytes(text)  # 'h' reads as a memo lookup (KeyError: 101 before), 'e' pops an empty stack
    with pytest.raises(CheckpointError, match="notes.txt: corrupt or truncated checkpoint"):
        safe_load(path)
    _one_line_error(run("sample", "--checkpoint", path, "--out", tmp_path / "o", "--device", "cpu"), "notes.txt")


def test_official_file_with_nan_ema_weights_is_refused_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    net = NCSNv2(3, 2)
    shadow = {k: v.clone() for k, v in net.state_dict().items()}
    shadow["begin_conv.weight"][0, 0, 0, 0] = float("nan")
    state = [{f"module.{k}": v for k, v in {"sigmas": geometric_sigmas(5.0, 0.01, 4), **net.state_dict()}.items()},
             {"state": {}, "param_groups": []}, 3, 300, shadow]
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"EMA weights hold NaN or infinity \(1 of \d+ values of "
                                              r"'begin_conv.weight'\)"):
        load_score_model(tmp_path / "nan.pth", dataset="cifar10", image_size=8)
    model, _, info = load_score_model(tmp_path / "nan.pth", ema=False, dataset="cifar10", image_size=8)
    assert info["weights"] == "official-v2"  # the raw weights are finite and still load
    _one_line_error(run("sample", "--checkpoint", tmp_path / "nan.pth", "--dataset", "cifar10", "--image-size", 8,
                        "--n", 2, "--out", tmp_path / "o", "--device", "cpu"), "begin_conv.weight")
    assert not (tmp_path / "o" / "samples.npz").exists()


def test_own_checkpoints_and_exports_with_infinite_weights_are_refused(tmp_path):
    _checkpoint(tmp_path / "ok.pt", ema=False)
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    state["model"]["net.end_conv.bias"][0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="inf.pt: its weights hold NaN or infinity .*'net.end_conv.bias'"):
        load_score_model(tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="net.end_conv.bias"):
        export_slim(tmp_path / "inf.pt", tmp_path / "export")
    assert not (tmp_path / "export").exists()


# --- exports: a consistent pair, no leftovers, ordinary permissions ----------------------------------------------

def test_an_export_cut_short_between_its_two_files_is_refused(tmp_path):
    _checkpoint(tmp_path / "a.pt", step=3)
    _checkpoint(tmp_path / "b.pt", step=7, bump=1.0)
    export_slim(tmp_path / "a.pt", tmp_path / "ex")
    export_slim(tmp_path / "b.pt", tmp_path / "newer")
    # a kill after one file of the new export was in place: new config beside old weights
    (tmp_path / "ex" / "config.json").write_bytes((tmp_path / "newer" / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="not the weights config.json beside it was written for"):
        load_score_model(tmp_path / "ex")
    _, _, info = load_score_model(tmp_path / "newer")
    assert info["step"] == 7


def test_a_failed_export_keeps_the_previous_pair_and_leaves_no_temp(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "a.pt", step=3)
    old = _checkpoint(tmp_path / "b.pt", step=7, bump=1.0)
    export_slim(tmp_path / "b.pt", tmp_path / "ex", ema=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ex").iterdir()}
    real_replace = os.replace

    def full_disk_for_weights(src, dst):
        if str(dst).endswith("model.safetensors"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_for_weights)
    with pytest.raises(StorageError, match="model.safetensors: No space left on device"):
        export_slim(tmp_path / "a.pt", tmp_path / "ex", ema=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "ex").iterdir()} == before  # no .tmp, old pair intact
    model, _, info = load_score_model(tmp_path / "ex")
    assert info["step"] == 7 and torch.equal(model.net.end_conv.bias, old.net.end_conv.bias)


def test_exports_and_run_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _checkpoint(tmp_path / "a.pt")
        export_slim(tmp_path / "a.pt", tmp_path / "ex")
        config = load_config("digits", TINY + ["training.n_iters=5"])
        train(config, tmp_path / "run", device="cpu", progress=False, runtime=RuntimeOptions(precision="fp32"))
    finally:
        os.umask(old)
    files = [tmp_path / "ex" / "model.safetensors", tmp_path / "ex" / "config.json", tmp_path / "run" / "runtime.json",
             tmp_path / "run" / "config.yaml", tmp_path / "run" / "checkpoints" / "checkpoint_00000005.pt"]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: oct(0o644) for f in files}


# --- resumes: a torn metrics.jsonl, and the history of resumes that failed ----------------------------------------

def test_a_torn_metrics_line_is_repaired_on_resume_and_only_a_resume_that_ran_is_recorded(tmp_path):
    from ncsn.resume import TornMetricsWarning

    config = load_config("digits", TINY + ["training.n_iters=10"])
    fp32 = RuntimeOptions(precision="fp32")
    train(config, tmp_path, device="cpu", progress=False, runtime=fp32)
    metrics = tmp_path / "metrics.jsonl"
    good = metrics.read_text()
    with metrics.open("a") as fh:
        fh.write('{"step": 15, "loss": 0.12')  # the disk filled up in the middle of a row

    runtime_json = (tmp_path / "runtime.json").read_text()
    (tmp_path / "runtime.json").write_text("{")  # a resume that fails in its setup, after the checkpoint loaded
    longer = load_config("digits", TINY + ["training.n_iters=15"])
    with pytest.raises(ValueError, match="runtime.json is unreadable"):
        train(longer, tmp_path, resume=True, device="cpu", progress=False)
    assert read_history(tmp_path) == []  # the failed resume left no row
    assert metrics.read_text().startswith(good) and metrics.read_text() != good  # and left the metrics alone

    (tmp_path / "runtime.json").write_text(runtime_json)
    with pytest.warns(TornMetricsWarning, match=r"dropped 1 unreadable line.*kept 4 row\(s\) up to step 10"):
        result = train(longer, tmp_path, resume=True, device="cpu", progress=False)
    assert result.step == 15
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses again
    assert metrics.read_text().startswith(good) and [r["step"] for r in rows] == [5, 5, 10, 10, 15, 15]
    assert [(h["event"], h["step"]) for h in read_history(tmp_path)] == [("resume", 10)]


def test_truncating_metrics_is_atomic(tmp_path, monkeypatch):
    from ncsn.resume import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError):
        truncate_metrics(path, 10)
    monkeypatch.undo()
    assert path.read_text() == '{"step": 5}\n{"step": 10}\n{"step": 15}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing torn: no warning
        truncate_metrics(path, 10)
    assert path.read_text() == '{"step": 5}\n{"step": 10}\n'


# --- sample outputs -------------------------------------------------------------------------------------------------

def test_a_kill_while_writing_samples_keeps_the_previous_outputs(tmp_path, monkeypatch):
    _checkpoint(tmp_path / "a.pt")
    out = tmp_path / "out"
    args = ("sample", "--checkpoint", tmp_path / "a.pt", "--n", 2, "--steps-each", 1, "--out", out, "--device", "cpu")
    assert run(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = np.savez_compressed

    def killed(file, **arrays):  # the process dies with the archive half written
        real(file, **arrays)
        if hasattr(file, "truncate"):
            file.truncate(10)
        else:
            with open(file, "r+b") as fh:
                fh.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        from ncsn.cli.sample import sample_to_folder
        from ncsn import distributed

        model, config, info = load_score_model(tmp_path / "a.pt")
        config.sampling.ald.n_steps_each = 1
        sample_to_folder(model, config, info, 2, 1, out, distributed.setup("cpu"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old samples intact, no temp left
