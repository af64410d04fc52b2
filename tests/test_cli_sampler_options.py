"""The sampler option group: generated from the registry's specs, strict about options the chosen sampler does not
read, able to give every config value (``none`` too), returning a value and leaving the loaded config alone."""

import dataclasses
import json

import pytest
import torch

from ncsn import build_score_model
from ncsn.checkpoint import atomic_save, training_state
from ncsn.cli.sampler_options import SETTINGS, SamplerChoice
from ncsn.config import load_config
from ncsn.errors import InputError
from ncsn.samplers import SPECS

from .conftest import run
from .test_cli_options import definitions


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained tiny digits checkpoints: the preset's level-conditioned net and a sigma-scaled NCSNv2."""
    folder = tmp_path_factory.mktemp("sampler_options")
    found = {}
    for name, extra in (("v1", []), ("v2", ["model.arch=ncsnv2"])):
        config = load_config("digits", ["model.ngf=4", "sampling.batch_size=2", *extra])
        model = build_score_model(config.model)
        state = training_state(1, config, model, torch.optim.Adam(model.parameters()))
        found[name] = atomic_save(state, folder / f"{name}.pt")
    return found


def sample(checkpoint, out, *args):
    return run("sample", "--checkpoint", checkpoint, "--device", "cpu", "--n", 2, "--out", out, *args)


def test_every_setting_of_every_spec_has_one_option():
    for name, spec in SPECS.items():
        for key in spec.keys():
            assert [flag for flag, s in SETTINGS.items() if (name, key) in [(n, f.name) for n, f in s.fields]], key
    assert SETTINGS["--n-steps"].samplers == ["pc", "heun"] and SETTINGS["--steps-each"].samplers == ["ald"]
    assert SETTINGS["--ode-method"].key == "method"


@pytest.mark.parametrize("args, message", [
    (["--sampler", "heun", "--steps-each", 5], "Error: --steps-each is an option of the ald sampler, not heun"),
    (["--sampler", "heun", "--denoise"], "Error: --denoise is an option of the ald, pc, ode samplers, not heun"),
    (["--s-churn", 1], "Error: --s-churn is an option of the heun sampler, not ald"),  # the config's sampler: ald
    (["--sampler", "ode", "--n-steps", 3], "Error: --n-steps is an option of the pc, heun samplers, not ode"),
    (["--sampler", "heun", "--n-steps", "none"], "Error: --n-steps: must be a value, not none"),
])
def test_an_option_the_sampler_does_not_read_is_one_line_naming_who_reads_it(checkpoints, tmp_path, args, message):
    result = sample(checkpoints["v2"], tmp_path, *args)
    assert result.exit_code == 1 and result.output.strip() == message
    assert not (tmp_path / "samples.npz").exists()


def test_none_is_a_value_on_the_command_line(checkpoints, tmp_path):
    """The digits preset bounds ald's s_noise to sigma <= 0.11; --s-max none lifts the bound, as s_max: null would."""
    result = sample(checkpoints["v1"], tmp_path / "a", "--steps-each", 1, "--s-max", "none", "--seed", 4)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "a" / "sample_config.json").read_text())
    assert meta["sampler_settings"]["s_max"] is None and meta["sampler_settings"]["s_noise"] == 1.2
    checkpoint = tmp_path / "null.pt"  # the same model with s_max: null in its config
    state = torch.load(checkpoints["v1"], weights_only=True)
    state["config"]["sampling"]["ald"]["s_max"] = None
    atomic_save(state, checkpoint)
    assert sample(checkpoint, tmp_path / "b", "--steps-each", 1, "--seed", 4).exit_code == 0
    assert (tmp_path / "a" / "samples.npz").read_bytes() == (tmp_path / "b" / "samples.npz").read_bytes()
    pc = sample(checkpoints["v1"], tmp_path / "pc", "--sampler", "pc", "--n-steps", "null", "--corrector", "none")
    assert pc.exit_code == 0, pc.output
    assert json.loads((tmp_path / "pc" / "sample_config.json").read_text())["nfe"] == 12  # its 12-level ladder


def test_a_choice_builds_a_new_section_and_leaves_the_config_alone():
    config = load_config("digits")
    before = dataclasses.asdict(config.sampling)
    choice = SamplerChoice("heun", "prior", (("--n-steps", "n_steps", 7), ("--s-max", "s_max", None)))
    new = choice.apply(config.sampling)
    assert (new.sampler, new.init, new.heun.n_steps, new.heun.s_max, new.batch_size) == ("heun", "prior", 7, None, 1000)
    assert new.ald == config.sampling.ald and dataclasses.asdict(config.sampling) == before
    with pytest.raises(InputError, match="^--n-steps is an option of the pc, heun samplers, not ald$"):
        SamplerChoice(given=(("--n-steps", "n_steps", 7),)).apply(config.sampling)


def test_the_ode_solver_options_are_defined_once_and_likelihood_reads_the_config(checkpoints, tmp_path):
    for name in ("rtol", "atol", "ode_method"):
        found = definitions(name)
        assert {("sample",), ("likelihood",), ("eval",), ("inpaint",)} <= set(found), name
        assert len({repr(info) for info in found.values()}) == 1, name
    state = torch.load(checkpoints["v2"], weights_only=True)
    state["config"]["sampling"]["ode"].update(rtol=1e-2, atol=2e-2, method="bosh3")
    checkpoint = atomic_save(state, tmp_path / "ode.pt")
    result = run("likelihood", "--checkpoint", checkpoint, "--device", "cpu", "--n", 2)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["rtol"], report["atol"], report["method"]) == (1e-2, 2e-2, "bosh3")
    result = run("likelihood", "--checkpoint", checkpoint, "--device", "cpu", "--n", 2, "--rtol", 0.05)
    assert json.loads(result.output)["rtol"] == 0.05
