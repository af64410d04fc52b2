import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ncsn.cli import main
from ncsn.config import load_config

from .conftest import run, train_tiny

TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=2",
        "training.sample_every=100", "training.sample_n=4", "sampling.ald.n_steps_each=2", "sampling.batch_size=8",
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
    assert gif.n_frames == load_config("digits").model.num_scales  # one frame per level
    assert (out / "progression.png").is_file()
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
        (["train", "--config", "digits", "--set", "model.sigma_min=3"], "Error: config key 'model.sigma_max'"),
        (["train", "--config", "nope"], "Error: unknown config 'nope'"),
        (["train", "--config", "mnist", "--set", "data.download=false", "--set", "data.root=/nonexistent"],
         "Error: mnist: "),
        (["sample", "--checkpoint", "/nonexistent.pt", "--out", "x"], "Error: /nonexistent.pt: no such checkpoint"),
        (["sample", "--out", "x"], "give exactly one of --workdir DIR or --checkpoint PATH"),
        (["sample", "--checkpoint", "x.pt", "--n", "0", "--out", "x"], "Invalid value for '--n'"),
        (["train", "--config", "digits", "--set", "training=5"], "Error: config key 'training': is a section"),
        (["train", "--config", "digits", "--set", "training.lr=inf"], "config key 'training.lr': must be a finite"),
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
    """The default preset (a sigma-continuous NCSN++): trained, sampled with its Heun with churn and with EDM's
    deterministic Heun (35 NFE), both scored; a rerun reuses the model and gives the same figures."""
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
    assert report["sampling"]["nfe"] == 2 * 50 - 1 and "with heun (99 NFE)" in result.output
    det = report["deterministic"]
    assert (det["sampler"], det["nfe"], det["n"]) == ("heun", 35, 20) and det["cfid"] > 0 and 1 <= det["cscore"] <= 10
    assert f"deterministic sampler (heun, 35 NFE, same seed): classifier FID {det['cfid']:.2f}" in result.output
    stored = np.load(tmp_path / "samples_deterministic" / "samples.npz")["samples"]
    assert stored.shape == (20, 8, 8, 1) and not np.array_equal(
        stored, np.load(tmp_path / "samples_final" / "samples.npz")["samples"])
    assert report["wall_seconds"] >= report["train_seconds"] + report["sample_seconds"] and "s in all" in result.output
    assert (tmp_path / "samples_final" / "grid.png").is_file() and (tmp_path / "samples_final" / "nn.png").is_file()
    rerun = run("demo", "--workdir", tmp_path, "--n", 20, "--device", "cpu", *[f"--set={s}" for s in TINY])
    assert rerun.exit_code == 0 and "reused the model trained to step 4" in rerun.output
    again = json.loads((tmp_path / "demo.json").read_text())
    assert again["class_shares"] == report["class_shares"] and again["deterministic"]["cfid"] == det["cfid"]


def test_demo_trains_another_digits_preset_and_skips_heun_on_a_level_conditioned_net(tmp_path):
    """--config digits (the paper's level-conditioned network) samples with its ALD; Heun cannot evaluate it, so the
    report has no deterministic row. A preset of other data is refused in one line."""
    result = run("demo", "--config", "digits", "--workdir", tmp_path, "--n", 20, "--device", "cpu",
                 *[f"--set={s}" for s in TINY], "--set=sampling.ald.n_steps_each=1")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["deterministic"] is None and report["sampling"]["nfe"] == 12 + 1 and "deterministic" not in result.output
    refused = run("demo", "--config", "fashion_mnist", "--workdir", tmp_path / "f", "--device", "cpu")
    assert refused.exit_code != 0 and "the demo scores digits, but fashion_mnist trains on fashion_mnist" in refused.output


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


def handled(result) -> bool:
    """The command stopped through click (an `Error:` line or a usage error), not with an exception."""
    return isinstance(result.exception, SystemExit) and "Traceback" not in result.output


COMMANDS = {
    "train": ["train", "--config", "digits"],
    "sample": ["sample", "--checkpoint", "x.pt", "--out", "o"],
    "inpaint": ["inpaint", "--checkpoint", "x.pt", "--out", "o"],
    "eval": ["eval", "--checkpoint", "x.pt", "--out", "o.json"],
    "demo": ["demo"],
    "toy": ["toy", "langevin"],
    "likelihood": ["likelihood", "--checkpoint", "x.pt"],
}
BAD_DEVICES = ["foo", "cuda:99", "meta"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_device_this_machine_lacks_is_refused_while_parsing_by_every_command(command, device, tmp_path):
    result = CliRunner().invoke(main, [*COMMANDS[command], "--device", device], catch_exceptions=True)
    assert result.exit_code == 2 and handled(result), result.output
    assert "Invalid value for '--device'" in result.output and device in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
def test_non_finite_or_non_positive_floats_are_refused(value, trained, tmp_path):
    for args in (["sample", "--workdir", trained, "--out", tmp_path, "--step-lr", value],
                 ["sample", "--workdir", trained, "--out", tmp_path, "--sampler", "pc", "--snr", value],
                 ["likelihood", "--workdir", trained, "--rtol", value],
                 ["toy", "langevin", "--out", tmp_path, "--step-size", value]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and handled(result) and "Invalid value for '--" in result.output, result.output
    assert not (tmp_path / "samples.npz").exists()


def test_paths_below_a_file_are_one_line(trained, tmp_path):
    (tmp_path / "afile").write_text("")
    below = tmp_path / "afile" / "run"
    for args in (["train", "--config", "digits", "--workdir", below],
                 ["sample", "--workdir", trained, "--n", 1, "--steps-each", 1, "--out", below, "--device", "cpu"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1 and handled(result), result.output
        assert f"{tmp_path / 'afile'} is a file, not a folder" in result.output


def test_a_full_disk_and_a_read_only_folder_are_one_line_and_keep_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    from ncsn import io as ncsn_io
    from ncsn import runfolder

    workdir = tmp_path / "run"
    train_tiny(workdir, TINY)
    good = sorted((workdir / "checkpoints").iterdir())
    real_fsync = ncsn_io.os.fsync

    def full_for_checkpoints(fd):  # the disk fills up while a checkpoint is written (other small files still fit)
        if ".checkpoint_" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(ncsn_io.os, "fsync", full_for_checkpoints)
    result = run("train", "--workdir", workdir, "--resume", "--device", "cpu", "--no-progress",
                 "--set=training.n_iters=6")
    assert result.exit_code == 1 and handled(result), result.output
    assert f"Error: {workdir / 'checkpoints' / 'checkpoint_00000006.pt'}: No space left on device" in result.output
    assert sorted((workdir / "checkpoints").iterdir()) == good  # no temp file, the old checkpoints intact
    monkeypatch.undo()

    real_open = runfolder.os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(runfolder.os, "open", read_only)
    result = run("train", "--workdir", workdir, "--resume", "--device", "cpu", "--no-progress")
    assert result.exit_code == 1 and handled(result)
    assert f"Error: {workdir / '.lock'}: Read-only file system" in result.output


def test_a_bug_keeps_its_traceback(trained, tmp_path, monkeypatch):
    """Only the library's own errors become one line; a ValueError from a bug is not passed off as bad input."""
    from ncsn.cli import sample as run_module

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(run_module, "generate", broken)
    result = CliRunner().invoke(main, ["sample", "--workdir", str(trained), "--out", str(tmp_path), "--device", "cpu"])
    assert isinstance(result.exception, ValueError) and "Error: an internal bug" not in result.output


def test_per_example_seeds_make_samples_independent_of_the_batch_size(trained, tmp_path):
    def samples(name, *extra):
        out = tmp_path / name
        # eps 1.3e-4: the top level's step eps (sigma_max / sigma_min)^2 stays ~0.3, so the 4-step network's chains
        # do not saturate every pixel at 0 or 1 (where any two chains agree)
        result = run("sample", "--workdir", trained, "--n", 6, "--seed", 3, "--steps-each", 2, "--step-lr", 1.3e-4,
                     "--device", "cpu", "--out", out, *extra)
        assert result.exit_code == 0, result.output
        return np.load(out / "samples.npz")["samples"].astype(int)

    a, b = samples("a", "--per-example-seeds", "--batch-size", 4), samples("b", "--per-example-seeds", "--batch-size", 6)
    # the same noise for every chain; only the network's float32 rounding may differ between batch sizes (~1e-6)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
    c, d = samples("c", "--batch-size", 4), samples("d", "--batch-size", 6)
    assert (c != d).mean() > 0.5  # per-batch seeding: the batch size changes the samples
    assert json.loads((tmp_path / "a" / "sample_config.json").read_text())["per_example_seeds"] is True


def _sample_without_a_shared_filesystem(rank, world, port, root, source):
    """One rank of a two-process gloo group; each rank sees only its own folder (no shared filesystem)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from ncsn import distributed
    from ncsn.cli.sample import resolved_sampling, sample_to_folder
    from ncsn.cli.sampler_options import SamplerChoice
    from ncsn.model_loading import load_score_model

    torch.set_num_threads(1)  # as the reference below: thread counts may change float32 summation order
    info = distributed.setup("cpu")
    model, config, meta = load_score_model(source)
    config = resolved_sampling(config, SamplerChoice(given=(("--steps-each", "n_steps_each", 2),)), 4)
    sample_to_folder(model, config, meta, 10, 5, f"{root}/rank{rank}", info, runtime=None)
    assert distributed.broadcast_from_main(f"best of rank {rank}") == "best of rank 0"  # what --sweep sends
    distributed.cleanup()


def test_sampling_over_the_process_group_needs_no_shared_folder(trained, tmp_path, one_thread):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sample_without_a_shared_filesystem, args=(2, port, str(tmp_path), str(trained)), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0"]  # rank 1 wrote nothing anywhere
    one = tmp_path / "one"
    assert run("sample", "--workdir", trained, "--n", 10, "--seed", 5, "--steps-each", 2, "--batch-size", 4,
               "--device", "cpu", "--out", one).exit_code == 0
    assert np.array_equal(np.load(tmp_path / "rank0" / "samples.npz")["samples"],
                          np.load(one / "samples.npz")["samples"])
