"""--sampler on `ncsn sample`, `inpaint`, `eval` and training grids, and `ncsn likelihood`, on tiny digits runs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ncsn.checkpoint import load_score_model
from ncsn.data import load_split
from ncsn.generate import batch_generator
from ncsn.likelihood import bits_per_dim

from .conftest import run, train_tiny

TINY = ["model.ngf=4", "training.n_iters=4", "training.batch_size=16", "training.checkpoint_every=4",
        "training.sample_every=4", "training.sample_n=4", "sampling.n_steps_each=2", "sampling.batch_size=8",
        "training.log_every=2", "training.eval_every=4", "model.num_scales=10"]  # the figures below count 10 levels


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """The digits preset: level-conditioned (and sigma-scaled) v1 network, its grid drawn by pc."""
    workdir = tmp_path_factory.mktemp("v1")
    train_tiny(workdir, [*TINY, "sampling.sampler=pc"])
    return workdir


@pytest.fixture(scope="module")
def v2(tmp_path_factory, unconditional_arch):
    """A sigma-scaled unconditional network: any sigma works; its training grid is drawn by heun."""
    workdir = tmp_path_factory.mktemp("v2")
    train_tiny(workdir, [*TINY, f"model.arch={unconditional_arch}", "sampling.sampler=heun", "sampling.n_steps=3"])
    return workdir


def sample(workdir, out, *args):
    result = run("sample", "--workdir", workdir, "--device", "cpu", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "sample_config.json").read_text()), np.load(out / "samples.npz")["samples"]


def test_training_grids_use_the_configured_sampler(v1, v2):
    assert (v1 / "samples" / "step_00000004.png").is_file() and (v2 / "samples" / "step_00000004.png").is_file()


def test_pc_samples_a_v1_model_on_its_ladder_and_records_sampler_settings_and_nfe(v1, tmp_path):
    meta, samples = sample(v1, tmp_path / "pc", "--sampler", "pc", "--corrector-steps", 2, "--snr", 0.2, "--n", 10,
                           "--batch-size", 4, "--progression")
    assert samples.shape == (10, 8, 8, 1)
    assert meta["sampler"] == "pc" and meta["nfe"] == 10 * 3 and meta["nfe_total"] == 3 * 30
    assert meta["sampler_settings"] == {"sampler": "pc", "n_steps": None, "predictor": "reverse_diffusion",
                                        "corrector": "langevin", "corrector_steps": 2, "snr": 0.2, "denoise": True,
                                        "init": "auto"}
    assert Image.open(tmp_path / "pc" / "progression.gif").n_frames == 10
    again, repeat = sample(v1, tmp_path / "again", "--sampler", "pc", "--corrector-steps", 2, "--snr", 0.2, "--n", 10,
                           "--batch-size", 4)
    assert np.array_equal(repeat, samples)


@pytest.mark.parametrize("args, message", [
    (["--sampler", "heun"], "Error: the heun sampler evaluates the score at sigmas between the levels, but this "
                            "network is level-conditioned (NCSN v1) and knows only its 10-level ladder: use the pc "
                            "sampler"),
    (["--sampler", "ode"], "Error: the ode sampler evaluates"),
    (["--sampler", "pc", "--n-steps", 20], "Error: pc with n_steps=20: this level-conditioned network"),
])
def test_samplers_that_leave_the_ladder_refuse_a_v1_model_in_one_line(v1, tmp_path, args, message):
    result = run("sample", "--workdir", v1, "--device", "cpu", "--out", tmp_path, "--n", 2, *args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["--sampler", "dpm"], "Invalid value for '--sampler': 'dpm' is not one of 'ald', 'pc', 'ode', 'heun'"),
    (["--n-steps", 0], "Invalid value for '--n-steps': 0 is not in the range x>=1"),
    (["--snr", 0], "Invalid value for '--snr': 0.0 is not in the range x>0"),
    (["--rtol", -1e-5], "Invalid value for '--rtol'"),
    (["--rho", 0], "Invalid value for '--rho'"),
    (["--sampler", "ald", "--s-min", 2, "--s-max", 1], "Error: --s-max: must be >= s_min (2.0) or none, got 1.0"),
])
def test_bad_sampler_options_are_one_clear_line(v1, tmp_path, args, message):
    result = run("sample", "--workdir", v1, "--device", "cpu", "--out", tmp_path, "--n", 2, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_a_training_grid_sampler_the_network_cannot_run_stops_training_before_it_starts(tmp_path):
    result = run("train", "--config", "digits", "--workdir", tmp_path, "--device", "cpu", "--no-progress",
                 *[f"--set={s}" for s in TINY], "--set", "sampling.sampler=ode")
    assert result.exit_code == 1 and "Error: the ode sampler evaluates" in result.output
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    bad = run("train", "--config", "digits", "--workdir", tmp_path, "--set", "sampling.sampler=dpm")
    assert bad.exit_code == 1 and "Error: config key 'sampling.sampler': unknown sampler 'dpm'" in bad.output


def test_heun_and_ode_sample_a_sigma_scaled_model(v2, tmp_path):
    meta, heun = sample(v2, tmp_path / "heun", "--sampler", "heun", "--n-steps", 4, "--n", 6, "--batch-size", 3)
    assert meta["nfe"] == 7 and meta["nfe_total"] == 14 and meta["sampler_settings"]["rho"] == 7.0
    _, again = sample(v2, tmp_path / "heun2", "--sampler", "heun", "--n-steps", 4, "--n", 6, "--batch-size", 3)
    assert np.array_equal(heun, again)
    meta, ode = sample(v2, tmp_path / "ode", "--sampler", "ode", "--rtol", 1e-2, "--atol", 1e-2, "--n", 6,
                       "--batch-size", 6, "--no-denoise", "--progression")
    assert meta["sampler"] == "ode" and meta["nfe"] >= 8 and meta["sampler_settings"]["rtol"] == 1e-2
    assert Image.open(tmp_path / "ode" / "progression.gif").n_frames == 10
    meta, _ = sample(v2, tmp_path / "churn", "--sampler", "heun", "--n-steps", 4, "--s-churn", 5, "--n", 2)
    assert meta["sampler_settings"]["s_churn"] == 5.0 and meta["nfe"] == 7


def test_inpainting_with_pc_keeps_known_pixels_and_records_the_sampler(v1, tmp_path):
    result = run("inpaint", "--workdir", v1, "--device", "cpu", "--sampler", "pc", "--corrector-steps", 1,
                 "--n-images", 2, "--n-per-image", 3, "--batch-size", 4, "--redraw", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "inpainting.json").read_text())
    assert report["sampler"] == "pc" and report["nfe"] == 20 and report["nfe_total"] == 40
    stored = np.load(tmp_path / "inpainting.npz")
    known = stored["mask"].astype(bool)[:, None, :, :, None]
    originals = np.broadcast_to(stored["original"][:, None], stored["samples"].shape)
    assert np.array_equal(np.where(known, stored["samples"], 0), np.where(known, originals, 0))
    refused = run("inpaint", "--workdir", v1, "--device", "cpu", "--sampler", "heun", "--out", tmp_path / "x")
    assert refused.exit_code == 1
    assert "Error: --sampler heun: inpainting works with the ald and pc samplers" in refused.output


def test_eval_records_the_sampler_and_its_nfe(v1, tmp_path):
    out = tmp_path / "eval.json"
    result = run("eval", "--workdir", v1, "--device", "cpu", "--metrics", "loss", "--n", 4, "--sampler", "pc",
                 "--corrector", "none", "--out", out)
    assert result.exit_code == 0, result.output
    sampling = json.loads(out.read_text())["sampling"]
    assert sampling["sampler"] == "pc" and sampling["nfe"] == 10 and sampling["sampler_settings"]["corrector"] == "none"


def test_likelihood_reports_bits_per_dim_with_an_interval_nfe_and_time(v2, tmp_path):
    out = tmp_path / "lik.json"
    result = run("likelihood", "--workdir", v2, "--device", "cpu", "--n", 6, "--batch-size", 4, "--rtol", 1e-3,
                 "--atol", 1e-3, "--seed", 2, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads(out.read_text())
    bpd = report["bits_per_dim"]
    assert bpd["n"] == 6 and bpd["ci95"][0] < bpd["mean"] < bpd["ci95"][1] and report["seconds"] > 0
    assert len(report["nfe"]["per_batch"]) == 2 and report["nfe"]["total"] == sum(report["nfe"]["per_batch"])
    model, config, _ = load_score_model(v2, device="cpu")
    images = load_split(config.data, "test").images[:6]
    direct = torch.cat([bits_per_dim(model, images[b * 4:(b + 1) * 4], float(model.sigmas[-1]), float(model.sigmas[0]),
                                     1e-3, 1e-3, generator=batch_generator(2, b, "cpu")) for b in range(2)])
    assert bpd["mean"] == pytest.approx(direct.mean().item(), rel=1e-6)


def test_likelihood_bad_input_is_one_clear_line(v1, v2, tmp_path):
    refused = run("likelihood", "--workdir", v1, "--device", "cpu", "--n", 2)
    assert refused.exit_code == 1 and "Error: the likelihood evaluates" in refused.output
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, samples=np.zeros((2, 6, 6, 1), dtype=np.uint8))
    result = run("likelihood", "--workdir", v2, "--device", "cpu", "--images", wrong)
    assert result.exit_code == 1
    assert "Error: likelihood: images of shape (1, 6, 6), the model takes (1, 8, 8)" in result.output
    np.savez(wrong, samples=np.full((2, 8, 8, 1), 2.0, dtype=np.float32))
    result = run("likelihood", "--workdir", v2, "--device", "cpu", "--images", wrong)
    assert result.exit_code == 1 and "Error: likelihood: float images must lie in [0, 1]" in result.output
    many = run("likelihood", "--workdir", v2, "--device", "cpu", "--n", 100_000)
    assert many.exit_code == 1 and "Error: --n 100000: test has only 297 images" in many.output


def test_likelihood_and_inpaint_read_only_the_images_they_use(v1, v2, tmp_path, monkeypatch):
    """--n and --n-images reach load_split as its limit, so a large (memory-mapped) split is never read whole."""
    import ncsn.cli.inpaint
    import ncsn.cli.likelihood

    loaded = []

    def spy(config, split="train", limit=None):
        images = load_split(config, split, limit=limit)
        loaded.append(len(images.images))
        return images

    monkeypatch.setattr(ncsn.cli.likelihood, "load_split", spy)
    monkeypatch.setattr(ncsn.cli.inpaint, "load_split", spy)
    result = run("likelihood", "--workdir", v2, "--device", "cpu", "--n", 2, "--rtol", 1e-2, "--atol", 1e-2)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n"] == 2
    result = run("inpaint", "--workdir", v1, "--device", "cpu", "--sampler", "ald", "--steps-each", 1, "--n-images", 3,
                 "--n-per-image", 1, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert loaded == [2, 3]


def test_a_run_whose_config_leaves_denoise_unset_ends_each_sampler_as_its_paper(tmp_path):
    """Like the v1 presets (no sampling.denoise): ald ends without the Tweedie step (NCSN), pc on its mean."""
    from ncsn import build_score_model
    from ncsn.checkpoint import atomic_save, training_state
    from ncsn.config import load_config

    config = load_config("digits", ["model.ngf=4", "sampling.denoise=null", "sampling.n_steps_each=1"])
    model = build_score_model(config.model)
    checkpoint = atomic_save(training_state(1, config, model, torch.optim.Adam(model.parameters())), tmp_path / "c.pt")
    levels = config.model.num_scales
    for sampler, denoise, nfe in (("ald", False, levels), ("pc", True, 2 * levels)):
        result = run("sample", "--checkpoint", checkpoint, "--device", "cpu", "--sampler", sampler, "--n", 2,
                     "--out", tmp_path / sampler)
        assert result.exit_code == 0, result.output
        meta = json.loads((tmp_path / sampler / "sample_config.json").read_text())
        assert meta["denoise"] is denoise and meta["sampler_settings"]["denoise"] is denoise and meta["nfe"] == nfe
