"""The shared command-line options: each defined once, in groups that hand the command one explicit value."""

import pathlib
import re

import click
import pytest
from click.testing import CliRunner

import ncsn.cli.train
from ncsn.cli import main
from ncsn.cli.option_groups import ModelSource, Output, model_source_options, output_options, runtime_options
from ncsn.cli.sample import resolved_sampling
from ncsn.config import load_config
from ncsn.runtime import RuntimeOptions

CLI = pathlib.Path(ncsn.cli.__file__).parent
MODEL_SOURCE = ("workdir", "checkpoint", "ema", "dataset", "image_size")
RUNTIME = ("compile", "precision", "channels_last")


def commands(group=main, prefix=()):
    """Every leaf command of `ncsn` with its path, e.g. ('toy', 'scores')."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def definitions(name: str) -> dict[tuple, dict]:
    """The option called ``name`` of every command that has one, as click describes it (flags, type, default, help)."""
    found = {}
    for path, command in commands():
        for param in command.params:
            if param.name == name:
                found[path] = param.to_info_dict()
    return found


def test_model_source_options_are_one_definition_in_every_command_that_loads_a_model():
    loaders = {path for path, command in commands() if any(p.name == "checkpoint" for p in command.params)}
    assert loaders == {("sample",), ("export",), ("eval",), ("inpaint",), ("likelihood",)}
    for name in MODEL_SOURCE:
        found = definitions(name)
        assert loaders <= set(found)
        forms = {repr(found[path]) for path in loaders}
        assert len(forms) == 1, (name, forms)  # same flags, path type, default and help everywhere
    # train and demo take --workdir as the run folder they write: a folder path as well, never a file
    for path in (("train",), ("demo",)):
        assert definitions("workdir")[path]["type"] == definitions("workdir")[("sample",)]["type"]


@pytest.mark.parametrize("name,users", [
    ("compile", {("train",), ("sample",), ("demo",), ("eval",), ("inpaint",)}),
    ("precision", {("train",), ("sample",), ("demo",), ("eval",), ("inpaint",)}),
    ("channels_last", {("train",), ("sample",), ("demo",), ("eval",), ("inpaint",)}),
    ("seed", {("sample",), ("demo",), ("eval",), ("inpaint",), ("likelihood",), ("noise-plan",),
              ("toy", "langevin"), ("toy", "scores"), ("toy", "manifold")}),
])
def test_shared_options_read_the_same_in_every_command(name, users):
    found = definitions(name)
    assert set(found) == users
    assert len({repr(info) for info in found.values()}) == 1, name


def test_sampling_commands_share_device_and_batch_size():
    for name in ("device", "batch_size"):
        found = definitions(name)
        sampling = [found[(c,)] for c in ("sample", "eval", "inpaint", "likelihood")]
        assert all(info == sampling[0] for info in sampling), name


def test_each_shared_flag_is_spelled_in_one_module_only():
    """The flags of the shared groups appear as literals in option_groups.py (and --device in options.py), nowhere
    else in the command line; toy's --batch-size is its training batch, a different option."""
    flags = {'"--workdir"': "option_groups.py", '"--checkpoint"': "option_groups.py",
             '"--ema/--no-ema"': "option_groups.py", '"--dataset"': "option_groups.py",
             '"--image-size"': "option_groups.py", '"--seed"': "option_groups.py", '"--out"': "option_groups.py",
             '"--compile/--no-compile"': "option_groups.py", '"--precision"': "option_groups.py",
             '"--channels-last/--no-channels-last"': "option_groups.py", '"--device"': "options.py",
             '"--n"': "option_groups.py"}
    for flag, home in flags.items():
        where = sorted(p.name for p in CLI.glob("*.py") if flag in p.read_text())
        assert where == [home], (flag, where)
    batch = sorted(p.name for p in CLI.glob("*.py") if '"--batch-size"' in p.read_text())
    assert batch == ["option_groups.py", "toy.py"]
    assert not any(re.search(r"ctx\.meta|RUNTIME_KEY", p.read_text()) for p in CLI.glob("*.py")
                   if p.name != "sampler_options.py")  # the runtime options travel as a value, not in the context


def test_workdir_and_checkpoint_together_is_a_usage_error(tmp_path):
    for command in ("sample", "export", "eval", "inpaint", "likelihood"):
        both = ["--workdir", str(tmp_path), "--checkpoint", str(tmp_path / "a.pt")]
        result = CliRunner().invoke(main, [command, *both, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, (command, result.output)
        assert "Error: give exactly one of --workdir DIR or --checkpoint PATH" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_groups_hand_the_command_explicit_values():
    seen = {}

    @click.command()
    @model_source_options
    @runtime_options
    @output_options(n=click.option("--n", type=int, default=3))
    def probe(source, runtime, output):
        seen.update(source=source, runtime=runtime, output=output)

    result = CliRunner().invoke(probe, ["--checkpoint", "w.pt", "--no-ema", "--dataset", "cifar10", "--image-size",
                                        "32", "--precision", "bf16", "--compile", "--no-channels-last", "--seed", "7",
                                        "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert seen["source"] == ModelSource(checkpoint="w.pt", ema=False, dataset="cifar10", image_size=32)
    assert seen["source"].path == "w.pt"
    assert seen["source"].load_kwargs() == {"ema": False, "dataset": "cifar10", "image_size": 32}
    assert seen["runtime"] == RuntimeOptions(compile=True, precision="bf16", channels_last=False)
    assert seen["output"] == Output(out=None, n=3, seed=7, batch_size=5)


def test_train_receives_the_runtime_options_as_a_value(monkeypatch, tmp_path):
    got = {}

    class Done(Exception):
        pass

    def fake_train(config, workdir, **kwargs):
        got.update(kwargs)
        raise Done

    monkeypatch.setattr(ncsn.cli.train, "train", fake_train)
    result = CliRunner().invoke(main, ["train", "--config", "digits", "--workdir", str(tmp_path), "--device", "cpu",
                                       "--precision", "fp32", "--channels-last"])
    assert isinstance(result.exception, Done)
    assert got["runtime"] == RuntimeOptions(compile=False, precision="fp32", channels_last=True)


def test_resolved_sampling_leaves_the_loaded_config_as_it_is():
    from ncsn.cli.sampler_options import SamplerChoice

    config = load_config("digits", ["sampling.ald.denoise=false"])
    before = (config.sampling.ald.n_steps_each, config.sampling.ald.step_lr, config.sampling.batch_size,
              config.sampling.ald.denoise)
    choice = SamplerChoice(given=(("--denoise", "denoise", True), ("--steps-each", "n_steps_each", 7),
                                  ("--step-lr", "step_lr", 1e-4)))
    resolved = resolved_sampling(config, choice, 3)
    assert (resolved.sampling.ald.n_steps_each, resolved.sampling.ald.step_lr, resolved.sampling.batch_size,
            resolved.sampling.ald.denoise) == (7, 1e-4, 3, True)
    assert (config.sampling.ald.n_steps_each, config.sampling.ald.step_lr, config.sampling.batch_size,
            config.sampling.ald.denoise) == before
    assert resolved.model is config.model and resolved.data is config.data
