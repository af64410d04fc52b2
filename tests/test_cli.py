import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ncsn.cli import main

from .conftest import run, train_tiny

TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=2",
        "training.sample_every=100", "training.sample_n=4", "sampling.n_steps_each=2", "sampling.batch_size=8",
        "training.log_every=2", "training.eval_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    assert "trained to step 4" in train_tiny(workdir, TINY)
    return workdir


def test_sample_writes_npz_grid_and_progression(trained, tmp_path):
    out = tmp_path / "s"
    result = run("sample", "--workdir", trained, "--n", 10, "--seed", 3, "--progression", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (10, 8, 8, 1) and samples.dtype == np.uint8
    assert Image.open(out / "grid.png").size[0] > 8
    gif = Image.open(out / "progression.gif")
    assert gif.n_frames == 10 and (out / "progression.png").is_file()
    meta = json.loads((out / "sample_config.json").read_text())
    assert meta["n_steps_each"] == 2 and meta["batch_size"] == 8 and meta["seed"] == 3 and meta["weights"] == "ema"

    again = tmp_path / "again"
    run("sample", "--workdir", trained, "--n", 10, "--seed", 3, "--out", again, "--device", "cpu")
    assert np.array_equal(np.load(again / "samples.npz")["samples"], samples)
    other = tmp_path / "other"
    run("sample", "--workdir", trained, "--n", 10, "--seed", 4, "--out", other, "--device", "cpu")
    assert not np.array_equal(np.load(other / "samples.npz")["samples"], samples)


def test_sampler_overrides_reach_the_chain(trained, tmp_path):
    result = run("sample", "--workdir", trained, "--n", 2, "--steps-each", 1, "--step-lr", "1e-4", "--denoise",
                 "--batch-size", 2, "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "sample_config.json").read_text())
    assert (meta["n_steps_each"], meta["step_lr"], meta["denoise"], meta["batch_size"]) == (1, 1e-4, True, 2)


def test_export_then_sample_from_the_export_gives_the_same_samples(trained, tmp_path):
    assert run("export", "--workdir", trained, "--out", tmp_path / "export").exit_code == 0
    run("sample", "--workdir", trained, "--n", 4, "--out", tmp_path / "a", "--device", "cpu")
    run("sample", "--checkpoint", tmp_path / "export", "--n", 4, "--out", tmp_path / "b", "--device", "cpu")
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--config", "digits", "--set", "training.lrr=1"], "Error: unknown config key 'training.lrr'"),
        (["train", "--config", "digits", "--set", "model.sigma_min=2"], "Error: config key 'model.sigma_max'"),
        (["train", "--config", "nope"], "Error: unknown config 'nope'"),
        (["train", "--config", "mnist", "--set", "data.download=false", "--set", "data.root=/nonexistent"],
         "Error: mnist: "),
        (["sample", "--checkpoint", "/nonexistent.pt", "--out", "x"], "Error: /nonexistent.pt: no such checkpoint"),
        (["sample", "--out", "x"], "give exactly one of --workdir DIR or --checkpoint PATH"),
        (["sample", "--checkpoint", "x.pt", "--n", "0", "--out", "x"], "Invalid value for '--n'"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_corrupt_checkpoint_in_run_folder(trained, tmp_path):
    bad = tmp_path / "checkpoints"
    bad.mkdir()
    (bad / "checkpoint_00000009.pt").write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(main, ["sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "corrupt or truncated" in result.output and "checkpoint_00000009.pt" in result.output


def test_demo_trains_samples_and_scores(tmp_path):
    result = run("demo", "--workdir", tmp_path, "--n", 20, "--device", "cpu", *[f"--set={s}" for s in TINY])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["samples"]["n"] == 20 and len(report["class_shares"]) == 10
    assert abs(sum(report["class_shares"]) - 1) < 1e-6 and report["real_test"]["classifier_test_accuracy"] > 0.9
    assert set(report["baselines"]) == {"gmm_10", "gmm_30"} and report["baselines"]["gmm_30"]["n"] == 20
    assert report["real_test"]["cfid_at_test_n"] < report["baselines"]["gmm_10"]["cfid"]  # real digits beat a GMM
    assert report["beats_baselines"] == all(report["samples"]["cfid"] < b["cfid"] for b in report["baselines"].values())
    assert "Gaussian mixture, 30 components" in result.output and "real held-out digits" in result.output
    assert report["train_steps"] == 4 and report["train_images_per_s"] > 0
    assert (tmp_path / "samples_final" / "grid.png").is_file() and (tmp_path / "samples_final" / "nn.png").is_file()
    rerun = run("demo", "--workdir", tmp_path, "--n", 20, "--device", "cpu", *[f"--set={s}" for s in TINY])
    assert rerun.exit_code == 0 and json.loads((tmp_path / "demo.json").read_text())["class_shares"] == report[
        "class_shares"]


def test_sampling_under_torchrun_matches_one_process(trained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["sample", "--workdir", str(trained), "--num-samples", "20", "--batch-size", "4", "--device", "cpu", "--out"]
    one = subprocess.run([sys.executable, "-m", "ncsn.cli", *base, str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, check=False)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ncsn.cli", *base, str(tmp_path / "two")], env=env, capture_output=True, text=True, check=False)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("one", "two"))
    assert a.shape == (20, 8, 8, 1) and np.array_equal(a, b)
    assert json.loads((tmp_path / "two" / "sample_config.json").read_text())["processes"] == 2
    assert not list((tmp_path / "two").glob(".part_*"))
