"""The sampler registry: every spec's NFE and callbacks against what its sampler really does, strict settings, and the
old flat ``sampling`` layout of configs and checkpoints mapped onto the per-sampler sections draw for draw."""

import dataclasses
import math
import warnings

import pytest
import torch

from ncsn.config import FlatSamplingWarning, from_dict, load_config, to_dict
from ncsn.errors import InputError
from ncsn.samplers import (SPECS, Counted, SamplerSettings, annealed_langevin, callback_count, expected_nfe,
                           heun_sampler, initial_state, pc_sampler, run_sampler, schedule, settings_from)
from ncsn.schedules import karras_sigmas
from ncsn.sigmas import geometric_sigmas

from .conftest import gaussian_score

LADDER = geometric_sigmas(1.0, 0.01, 6)
MU, S = 0.4, 0.2

# settings to walk per sampler (a sampler added to the registry is walked at its defaults and any listed here)
VARIANTS = {
    "ald": [dict(n_steps_each=1), dict(n_steps_each=3, denoise=True), dict(n_steps_each=2, s_noise=1.3, s_max=0.1)],
    "pc": [dict(), dict(n_steps=4, corrector="none"), dict(predictor="none", corrector_steps=2),
           dict(n_steps=3, predictor="euler_maruyama", corrector="ald", corrector_steps=2, denoise=False)],
    "heun": [dict(n_steps=1), dict(n_steps=5), dict(n_steps=4, s_churn=10.0, s_max=0.5)],
    "ode": [dict(rtol=1e-3, atol=1e-3), dict(rtol=1e-2, atol=1e-2, denoise=False, method="bosh3")],
}


def walk():
    for name in SPECS:
        for keys in VARIANTS.get(name, [{}]):
            yield pytest.param(name, keys, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in keys.items()) or 'defaults'}")


def expected_sigmas(name: str, s, sigmas: torch.Tensor) -> list[float]:
    """The documented sigma_next of every callback, per sampler: the level x is at after each update."""
    levels = [float(v) for v in sigmas]
    if name == "ald":
        return [v for v in levels for _ in range(s.n_steps_each)] + [0.0] * s.denoise
    if name == "pc":
        return levels if s.predictor == "none" else levels[1:] + [0.0]
    if name == "ode":
        return levels[1:] + [0.0] * s.denoise
    return levels[1:]  # heun: to the next sigma of the schedule, the last is 0


@pytest.mark.parametrize("name, keys", list(walk()))
def test_every_spec_counts_its_nfe_and_callbacks_as_its_sampler_spends_them(name, keys):
    settings = SamplerSettings.of(name, **keys)
    counted, info, seen = Counted(gaussian_score(MU, S, LADDER)), {}, []
    x0 = initial_state(settings, (2, 1, 3, 3), LADDER, torch.Generator().manual_seed(0))
    out = run_sampler(counted, x0, LADDER, settings, torch.Generator().manual_seed(1),
                      callback=lambda i, sigma, x: seen.append((i, sigma, x.clone())), info=info)
    assert info["nfe"] == counted.calls > 0
    nfe = expected_nfe(settings, LADDER)
    assert nfe is None if SPECS[name].expected_nfe(settings.section, LADDER) is None else nfe == counted.calls
    assert len(seen) == callback_count(settings, LADDER)
    assert [i for i, _, _ in seen] == list(range(len(seen)))
    assert torch.equal(seen[-1][2], out)  # the last callback sees the final x
    if name in VARIANTS:
        wanted = expected_sigmas(name, settings.section, schedule(settings, LADDER, frames=True))
        assert [sigma for _, sigma, _ in seen] == pytest.approx(wanted, rel=1e-6)
    # without a callback the same chain (ode: other output points, so the same within its tolerance)
    again = run_sampler(gaussian_score(MU, S, LADDER), x0, LADDER, settings, torch.Generator().manual_seed(1))
    assert torch.allclose(again, out, atol=1e-2 if name == "ode" else 0.0)


def test_the_documented_nfe_of_each_known_sampler():
    """Closed forms: ald L*T (+1), pc N*(corrector + predictor), heun 2N - 1, ode adaptive."""
    nfe = {name: [expected_nfe(SamplerSettings.of(name, **keys), LADDER) for keys in VARIANTS[name]]
           for name in VARIANTS}
    assert nfe == {"ald": [6, 19, 12], "pc": [12, 4, 12, 9], "heun": [1, 9, 7], "ode": [None, None]}


def test_a_setting_another_sampler_reads_is_refused_naming_it():
    with pytest.raises(InputError, match="^n_steps_each is a setting of the ald sampler, not heun$"):
        SamplerSettings.of("heun", n_steps_each=5)
    with pytest.raises(InputError, match="^s_churn is a setting of the heun sampler, not pc$"):
        settings_from(SamplerSettings(), sampler="pc", s_churn=1.0)
    with pytest.raises(InputError, match="^denoise is a setting of the ald, pc, ode samplers, not heun$"):
        SamplerSettings.of("heun", denoise=True)
    with pytest.raises(InputError, match="unknown sampler 'dpm'"):
        SamplerSettings.of("dpm")


def test_a_config_section_refuses_keys_its_sampler_does_not_read():
    with pytest.raises(InputError) as err:
        load_config("digits", ["sampling.heun.step_lr=0.1"])
    assert str(err.value) == ("config key 'sampling.heun.step_lr': step_lr is a setting of the ald sampler, not heun")
    with pytest.raises(InputError, match="'sampling.ald.typo': typo: no sampler has a setting 'typo'"):
        load_config("digits", ["sampling.ald.typo=1"])


def test_none_is_a_value_of_the_bounds():
    config = load_config("digits", ["sampling.ald.s_max=null", "sampling.heun.s_max=0.5"])
    assert config.sampling.ald.s_max is None and config.sampling.heun.s_max == 0.5


# The sampling section exactly as the code before the registry wrote it (dataclasses.asdict of its flat
# SamplerSettings plus batch_size): every sampler's settings side by side.
OLD_DIGITS_SAMPLING = {
    "sampler": "ald", "n_steps_each": 10, "step_lr": 1e-3, "denoise": True, "convention": "code", "n_steps": None,
    "predictor": "reverse_diffusion", "corrector": "langevin", "corrector_steps": 1, "snr": 0.16, "rho": 7.0,
    "rtol": 1e-5, "atol": 1e-5, "ode_method": "dopri5", "s_churn": 0.0, "s_min": 0.0, "s_max": 0.11, "s_noise": 1.2,
    "init": "auto", "batch_size": 1000,
}


def old_config(**sampling) -> dict:
    values = to_dict(load_config("digits"))
    values["sampling"] = {**OLD_DIGITS_SAMPLING, **sampling}
    return values


def load_once(values: dict, overrides=()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = from_dict(values, overrides)
    lines = [w for w in caught if issubclass(w.category, FlatSamplingWarning)]
    assert len(lines) == 1 and "\n" not in str(lines[0].message)
    return config


def test_an_old_flat_config_maps_onto_the_sections_once_and_samples_as_before():
    config = load_once(old_config())
    preset = load_config("digits").sampling  # the digits preset, in its new form
    assert (config.sampling.sampler, config.sampling.ald, config.sampling.pc) == ("ald", preset.ald, preset.pc)
    # the flat s_max/s_noise bounded ald's temperature and heun's churn alike: both sections keep them
    assert (config.sampling.heun.s_max, config.sampling.heun.s_noise) == (0.11, 1.2)
    assert config.sampling.heun.n_steps == 18 and config.sampling.pc.n_steps is None  # None: each one's default
    score, x0 = gaussian_score(MU, S, LADDER), torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    old = annealed_langevin(score, x0, LADDER, 10, 1e-3, True, "code", torch.Generator().manual_seed(1),
                            s_noise=1.2, s_min=0.0, s_max=0.11)
    assert torch.equal(run_sampler(score, x0, LADDER, config.sampling, torch.Generator().manual_seed(1)), old)
    heun = load_once(old_config(sampler="heun", n_steps=5, s_churn=10.0, ode_method="bosh3"))
    top, bottom = float(LADDER[0]), float(LADDER[-1])
    old = heun_sampler(score, x0, karras_sigmas(top, bottom, 5), 10.0, 0.0, 0.11, 1.2, torch.Generator().manual_seed(1))
    assert torch.equal(run_sampler(score, x0, LADDER, heun.sampling, torch.Generator().manual_seed(1)), old)
    assert heun.sampling.ode.method == "bosh3" and heun.sampling.pc.n_steps == 5
    pc = load_once(old_config(sampler="pc", n_steps=4, denoise=None, snr=0.2))
    old = pc_sampler(score, x0, geometric_sigmas(top, bottom, 4), snr=0.2, generator=torch.Generator().manual_seed(1))
    assert pc.sampling.pc.denoise is True  # null: the paper's default, as before
    assert torch.equal(run_sampler(score, x0, LADDER, pc.sampling, torch.Generator().manual_seed(1)), old)


def test_a_flat_override_maps_the_same_way():
    config = load_once(to_dict(load_config("digits")), ["sampling.s_max=0.3", "sampling.n_steps=7"])
    assert (config.sampling.ald.s_max, config.sampling.heun.s_max) == (0.3, 0.3)
    assert (config.sampling.pc.n_steps, config.sampling.heun.n_steps) == (7, 7)
    new = from_dict(to_dict(load_config("digits")), ["sampling.heun.s_max=0.3"])
    assert (new.sampling.ald.s_max, new.sampling.heun.s_max) == (0.11, 0.3)
    # a flat null meant "each sampler's paper default": the digits preset's ald.denoise true goes back to NCSN's off
    unset = load_once(to_dict(load_config("digits")), ["sampling.denoise=null", "sampling.n_steps=null"])
    assert (unset.sampling.ald.denoise, unset.sampling.pc.denoise, unset.sampling.ode.denoise) == (False, True, True)
    assert (unset.sampling.pc.n_steps, unset.sampling.heun.n_steps) == (None, 18)


def test_an_old_checkpoint_loads_once_and_samples_as_before(tmp_path):
    from ncsn import build_score_model
    from ncsn.checkpoint import SNAPSHOT_FORMAT, atomic_save
    from ncsn.model_loading import load_score_model
    from ncsn.generate import batch_generator, generate

    values = old_config(n_steps_each=2)
    values["model"].update(ngf=4)
    config = from_dict(values)
    model = build_score_model(config.model).eval()
    path = atomic_save({"format": SNAPSHOT_FORMAT, "step": 1, "config": values, "weights": "raw",
                        "model": model.state_dict()}, tmp_path / "old.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, loaded_config, _ = load_score_model(path)
    assert sum(issubclass(w.category, FlatSamplingWarning) for w in caught) == 1
    assert dataclasses.asdict(loaded_config.sampling.ald) == {
        "n_steps_each": 2, "step_lr": 1e-3, "denoise": True, "convention": "code", "s_noise": 1.2, "s_min": 0.0,
        "s_max": 0.11}
    _, images, _ = generate(loaded, loaded.sigmas, 3, (1, 8, 8), loaded_config.sampling, seed=5)
    gen = batch_generator(5, 0, "cpu")
    x0 = initial_state(loaded_config.sampling, (3, 1, 8, 8), loaded.sigmas, gen)
    old = annealed_langevin(model, x0, model.sigmas, 2, 1e-3, True, "code", gen, s_noise=1.2, s_max=0.11)
    assert torch.equal(images, old.clamp(0, 1)) and math.isfinite(float(images.sum()))
