"""The Score-SDE presets (issue 24): each loads, validates, carries the official settings and builds the network
whose parameter count and state_dict size are the issue's table (built on the meta device: no memory, no time)."""

import pytest
import torch

from ncsn.config import ConfigError, load_config, named_configs
from ncsn.samplers.settings import expected_nfe, schedule, settings_from
from ncsn.schedules import ve_sde_sigmas
from ncsn.score_model import build_score_model
from ncsn.sigmas import geometric_sigmas

FOLDER = ["data.root=/images"]
# name: (overrides, parameters, state_dict entries, sigma_max, batch, iterations, N, snr, ema_rate, reduce_mean)
PRESETS = {
    "cifar10_ncsnpp": ([], 62_758_915, 572, 50.0, 128, 1_300_000, 1000, 0.16, 0.999, False),
    "cifar10_ncsnpp_deep": ([], 107_587_075, 964, 50.0, 128, 950_000, 1000, 0.16, 0.999, False),
    "celebahq256_ncsnpp": (FOLDER, 65_574_549, 646, 348.0, 64, 2_400_000, 2000, 0.075, 0.999, False),
    "ffhq256_ncsnpp": (FOLDER, 65_574_549, 646, 348.0, 64, 2_400_000, 2000, 0.075, 0.999, False),
    "church256_ncsnpp": (FOLDER, 65_574_549, 646, 380.0, 64, 2_400_000, 2000, 0.075, 0.999, False),
    "bedroom256_ncsnpp": (FOLDER, 65_574_549, 646, 378.0, 64, 2_400_000, 2000, 0.075, 0.999, False),
    "ffhq1024_ncsnpp": (FOLDER, 105_785_896, 554, 1348.0, 8, 2_400_000, 2000, 0.15, 0.9999, True),
}


def test_every_score_sde_preset_is_shipped():
    assert set(PRESETS) <= set(named_configs())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_the_official_network_with_the_official_recipe(name):
    overrides, params, entries, sigma_max, batch, iters, n, snr, ema_rate, reduce_mean = PRESETS[name]
    c = load_config(name, overrides)
    d, m, t, s = c.data, c.model, c.training, c.sampling
    with torch.device("meta"):
        model = build_score_model(m)
    assert sum(p.numel() for p in model.net.parameters()) == params
    assert len(model.state_dict()) == entries
    assert model.sigma_conditioned and not model.level_conditioned
    # the data as Score-SDE feeds it: [0, 1] (the net centres it), flips, no dequantisation, at the net's size
    assert (d.random_flip, d.dequantize, m.ncsnpp.image_size) == (True, False, d.image_size)
    assert (m.sigma_max, m.sigma_min, m.num_scales, m.preconditioning) == (sigma_max, 0.01, n, "none")
    # Score-SDE's optimisation and continuous VE objective
    assert (t.objective, t.t_eps, t.reduce_mean, t.likelihood_weighting) == ("ve", 1e-5, reduce_mean, False)
    assert (t.lr, t.beta1, t.eps, t.weight_decay, t.lr_warmup, t.lr_schedule, t.grad_clip) == (
        2e-4, 0.9, 1e-8, 0.0, 5000, "constant", 1.0)
    assert (t.ema, t.ema_rate, t.ema_warmup, t.batch_size, t.n_iters) == (True, ema_rate, True, batch, iters)
    # PC: reverse diffusion + one Langevin step at the official snr on the N-level VE grid, noise-free last step
    assert (s.sampler, s.pc.predictor, s.pc.corrector, s.pc.corrector_steps, s.pc.snr, s.pc.denoise) == (
        "pc", "reverse_diffusion", "langevin", 1, snr, True)
    settings, ladder = settings_from(s), geometric_sigmas(m.sigma_max, m.sigma_min, m.num_scales)
    torch.testing.assert_close(schedule(settings, ladder), ve_sde_sigmas(sigma_max, 0.01, n))
    assert expected_nfe(settings, ladder) == 2 * n


@pytest.mark.parametrize("name", ["celebahq256_ncsnpp", "ffhq1024_ncsnpp"])
def test_image_folder_presets_ask_for_the_folder(name):
    with pytest.raises(ConfigError, match="data.root"):
        load_config(name)
    c = load_config(name, FOLDER)
    assert (c.data.dataset, c.data.root, c.data.channels) == ("folder", "/images", 3)


def test_a_preset_network_follows_a_changed_image_size():
    """The 256 px network halves six times, so 128 px cannot be built; 320 px can (and keeps the 16 px attention)."""
    with pytest.raises(ConfigError, match="model.ncsnpp.attn_resolutions|model.ncsnpp.image_size"):
        load_config("ffhq256_ncsnpp", [*FOLDER, "data.image_size=96"])
    assert load_config("ffhq256_ncsnpp", [*FOLDER, "data.image_size=1024"]).model.ncsnpp.image_size == 1024


def test_digits_ncsnpp_is_a_small_continuous_ve_ncsnpp_sampled_by_heun_under_100_evaluations():
    c = load_config("digits_ncsnpp")
    digits = load_config("digits")
    m, t, s = c.model, c.training, c.sampling
    with torch.device("meta"):
        model = build_score_model(m)
    assert sum(p.numel() for p in model.net.parameters()) == 447_137 and model.sigma_conditioned
    assert (m.ncsnpp.ch_mult, m.ncsnpp.num_res_blocks, m.ncsnpp.attn_resolutions, m.ngf) == ([1, 2, 2], 2, [4], 16)
    assert (m.sigma_max, m.sigma_min, m.num_scales) == (digits.model.sigma_max, digits.model.sigma_min, 12)
    assert (t.objective, t.n_iters, t.batch_size, t.ema_warmup) == ("ve", digits.training.n_iters, 128, True)
    assert c.data == digits.data
    ladder = geometric_sigmas(m.sigma_max, m.sigma_min, m.num_scales)
    assert (s.sampler, s.heun.s_churn, s.heun.s_min, s.heun.s_max, s.heun.s_noise) == ("heun", 10.0, 0.0, None, 1.0)
    assert expected_nfe(settings_from(s), ladder) == 69
    assert expected_nfe(settings_from(s, sampler="ald"), ladder) == 12 * 10 + 1  # the digits preset's 121
