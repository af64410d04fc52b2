"""dpmpp_2m and dpmpp_2m_sde as the registry knows them: settings at their papers' defaults, the schedule from a
model's ladder, NFE, strict keys, old configs, and `ncsn train` / `ncsn sample` end to end on a tiny model."""

import json
import math

import numpy as np
import pytest
import torch

from ncsn import SigmaOffLadderError, karras_sigmas
from ncsn.config import FlatSamplingWarning, from_dict, load_config, to_dict
from ncsn.errors import InputError
from ncsn.samplers import (SPECS, SamplerSettings, callback_count, check_fits, expected_nfe, run_sampler, schedule,
                           settings_from, used_settings, validate)
from ncsn.samplers.dpmpp import Dpmpp2mSdeSettings, Dpmpp2mSettings, dpmpp_2m_sampler, dpmpp_2m_sde_sampler

from .conftest import run, train_tiny
from .test_dpmpp import SCORE, SMAX, SMIN, gen, start

LADDER = torch.tensor([SMAX, 1.0, SMIN])


@pytest.mark.parametrize("name, keys", [("dpmpp_2m", {}), ("dpmpp_2m", {"n_steps": 7, "rho": 3.0}),
                                        ("dpmpp_2m_sde", {}),
                                        ("dpmpp_2m_sde", {"n_steps": 5, "eta": 0.5, "s_noise": 1.1,
                                                          "solver_type": "heun"})])
def test_run_sampler_is_the_function_on_the_rho_schedule_of_the_ladder_at_the_papers_defaults(name, keys):
    settings = SamplerSettings.of(name, **keys)
    section = settings.section
    assert (section.n_steps, section.rho) == (keys.get("n_steps", 20), keys.get("rho", 7.0))
    sigmas = karras_sigmas(float(LADDER[0]), float(LADDER[-1]), section.n_steps, section.rho)
    assert torch.equal(schedule(settings, LADDER), sigmas)
    assert expected_nfe(settings, LADDER) == callback_count(settings, LADDER) == section.n_steps
    info, x0 = {}, start(3)
    out = run_sampler(SCORE, x0, LADDER, settings, gen(2), info=info)
    if name == "dpmpp_2m":
        assert torch.equal(out, dpmpp_2m_sampler(SCORE, x0, sigmas))
    else:
        assert (section.eta, section.s_noise, section.solver_type) == (keys.get("eta", 1.0), keys.get("s_noise", 1.0),
                                                                      keys.get("solver_type", "midpoint"))
        assert torch.equal(out, dpmpp_2m_sde_sampler(SCORE, x0, sigmas, section.eta, section.s_noise,
                                                     section.solver_type, gen(2)))
    assert info["nfe"] == section.n_steps
    assert used_settings(settings) == {"sampler": name, **{key: getattr(section, key) for key in SPECS[name].keys()},
                                       "init": "auto"}


@pytest.mark.parametrize("name, keys, message", [
    ("dpmpp_2m", {"n_steps": 0}, "sampling.dpmpp_2m.n_steps: must be >= 1, got 0"),
    ("dpmpp_2m", {"rho": -1.0}, "sampling.dpmpp_2m.rho: must be positive, got -1.0"),
    ("dpmpp_2m_sde", {"eta": -0.5}, "sampling.dpmpp_2m_sde.eta: must be >= 0, got -0.5"),
    ("dpmpp_2m_sde", {"eta": math.inf}, "sampling.dpmpp_2m_sde.eta: must be finite, got inf"),
    ("dpmpp_2m_sde", {"s_noise": 0.0}, "sampling.dpmpp_2m_sde.s_noise: must be positive, got 0.0"),
    ("dpmpp_2m_sde", {"solver_type": "euler"},
     "sampling.dpmpp_2m_sde.solver_type: must be one of ('midpoint', 'heun'), got 'euler'"),
])
def test_bad_settings_are_one_line_naming_the_key(name, keys, message):
    with pytest.raises(InputError) as err:
        validate(SamplerSettings.of(name, **keys))
    assert str(err.value) == message


def test_keys_of_another_sampler_are_refused_naming_the_sampler_that_reads_them():
    with pytest.raises(InputError, match="^eta is a setting of the dpmpp_2m_sde sampler, not dpmpp_2m$"):
        SamplerSettings.of("dpmpp_2m", eta=0.5)
    with pytest.raises(InputError, match="^s_churn is a setting of the heun sampler, not dpmpp_2m_sde$"):
        SamplerSettings.of("dpmpp_2m_sde", s_churn=1.0)
    with pytest.raises(InputError, match="solver_type is a setting of the dpmpp_2m_sde sampler, not heun"):
        load_config("digits", ["sampling.heun.solver_type=heun"])
    config = load_config("digits", ["sampling.sampler=dpmpp_2m_sde", "sampling.dpmpp_2m_sde.eta=0.25"])
    assert config.sampling.section.eta == 0.25 and config.sampling.section.n_steps == 20


def test_an_old_flat_config_leaves_the_new_samplers_at_their_defaults():
    """The flat layout never had these samplers: its s_noise (ald's temperature), n_steps and rho stay out."""
    values = to_dict(load_config("digits"))
    values["sampling"] = {"sampler": "ald", "n_steps_each": 10, "step_lr": 1e-3, "n_steps": 7, "rho": 3.0,
                          "s_noise": 1.2, "s_max": 0.11, "batch_size": 100}
    with pytest.warns(FlatSamplingWarning):
        config = from_dict(values)
    assert config.sampling.heun.s_noise == 1.2 and config.sampling.heun.n_steps == 7  # the old samplers keep them
    assert config.sampling.dpmpp_2m == Dpmpp2mSettings()
    assert config.sampling.dpmpp_2m_sde == Dpmpp2mSdeSettings()


def test_a_level_conditioned_network_is_refused_up_front():
    def level_conditioned(x, sigma):
        return SCORE(x, sigma)

    level_conditioned.level_conditioned = True
    for name in ("dpmpp_2m", "dpmpp_2m_sde"):
        with pytest.raises(SigmaOffLadderError, match=f"the {name} sampler evaluates the score at sigmas between"):
            check_fits(level_conditioned, SamplerSettings.of(name), LADDER)


TINY = ["model.ngf=4", "model.num_scales=10", "training.n_iters=2", "training.batch_size=8",
        "training.checkpoint_every=2", "training.sample_every=2", "training.sample_n=4", "training.log_every=1",
        "training.eval_every=100", "sampling.batch_size=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, unconditional_arch):
    """A tiny sigma-scaled network trained by `ncsn train`, its training grid drawn by dpmpp_2m_sde (3 steps)."""
    workdir = tmp_path_factory.mktemp("dpmpp")
    train_tiny(workdir, [*TINY, f"model.arch={unconditional_arch}", "sampling.sampler=dpmpp_2m_sde",
                         "sampling.dpmpp_2m_sde.n_steps=3", "sampling.dpmpp_2m.n_steps=4"])
    return workdir


def test_a_trained_model_samples_with_both_through_generate(trained):
    """The saved run keeps the sections; ``generate`` spends the spec's NFE per batch and one frame per step,
    seeded."""
    from ncsn.model_loading import load_score_model
    from ncsn.generate import generate

    assert (trained / "samples" / "step_00000002.png").is_file()
    model, loaded, _ = load_score_model(trained)
    assert loaded.sampling.sampler == "dpmpp_2m_sde" and loaded.sampling.dpmpp_2m.n_steps == 4
    for name, steps in (("dpmpp_2m", 4), ("dpmpp_2m_sde", 3)):
        settings, info = settings_from(loaded.sampling, sampler=name), {}
        _, images, frames = generate(model, model.sigmas, 5, (1, 8, 8), settings, seed=3, batch_size=2,
                                     keep_frames=True, info=info)
        assert images.shape == (5, 1, 8, 8) and torch.isfinite(images).all()
        assert info["nfe_per_batch"] == [steps] * 3 and len(frames) == steps
        _, again, _ = generate(model, model.sigmas, 5, (1, 8, 8), settings, seed=3, batch_size=2)
        _, other, _ = generate(model, model.sigmas, 5, (1, 8, 8), settings, seed=4, batch_size=2)
        assert torch.equal(again, images) and not torch.equal(other, images)


def cli_sample(workdir, out, *args):
    result = run("sample", "--workdir", workdir, "--device", "cpu", "--out", out, "--n", 4, "--batch-size", 2, *args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "sample_config.json").read_text()), np.load(out / "samples.npz")["samples"]


def test_ncsn_sample_runs_both_with_their_options(trained, tmp_path):
    meta, _ = cli_sample(trained, tmp_path / "2m", "--sampler", "dpmpp_2m")
    assert meta["sampler"] == "dpmpp_2m" and meta["nfe"] == 4 and meta["nfe_total"] == 2 * 4
    assert meta["sampler_settings"] == {"sampler": "dpmpp_2m", "n_steps": 4, "rho": 7.0, "init": "auto"}
    meta, _ = cli_sample(trained, tmp_path / "2m5", "--sampler", "dpmpp_2m", "--n-steps", 5, "--rho", 3)
    assert meta["nfe"] == 5 and meta["sampler_settings"]["rho"] == 3.0
    sde = ["--sampler", "dpmpp_2m_sde", "--n-steps", 2, "--eta", 0.5, "--s-noise", 1.1, "--solver-type", "heun"]
    meta, samples = cli_sample(trained, tmp_path / "sde", *sde)
    assert samples.shape == (4, 8, 8, 1) and meta["nfe"] == 2 and meta["sampler_settings"] == {
        "sampler": "dpmpp_2m_sde", "n_steps": 2, "rho": 7.0, "eta": 0.5, "s_noise": 1.1, "solver_type": "heun",
        "init": "auto"}
    _, again = cli_sample(trained, tmp_path / "again", *sde)
    _, other = cli_sample(trained, tmp_path / "other", *sde, "--seed", 1)
    assert np.array_equal(again, samples) and not np.array_equal(other, samples)
    meta, _ = cli_sample(trained, tmp_path / "config", "--n-steps", 2)  # the config's sampler: dpmpp_2m_sde, eta 1
    assert meta["sampler"] == "dpmpp_2m_sde" and meta["sampler_settings"]["eta"] == 1.0 and meta["nfe"] == 2


@pytest.mark.parametrize("args, message", [
    (["--sampler", "dpmpp_2m", "--eta", 0.5], "Error: --eta is an option of the dpmpp_2m_sde sampler, not dpmpp_2m"),
    (["--sampler", "dpmpp_2m_sde", "--solver-type", "rk4"], "Invalid value for '--solver-type'"),
    (["--sampler", "dpmpp_2m_sde", "--eta", -1], "Invalid value for '--eta'"),
    (["--sampler", "dpmpp_2m_sde", "--s-churn", 1], "Error: --s-churn is an option of the heun sampler"),
], ids=["eta-on-2m", "solver-type", "negative-eta", "churn"])
def test_bad_options_are_one_line(trained, tmp_path, args, message):
    result = run("sample", "--workdir", trained, "--device", "cpu", "--out", tmp_path, "--n", 2, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "samples.npz").exists()
