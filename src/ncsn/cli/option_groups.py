"""Option groups every command shares, each defined once and handed to the command as one explicit value.

A group adds its click options to a command and gathers what they parse into one parameter: ``source``
(``ModelSource``: where the model comes from), ``output`` (``Output``: --out, --n, --seed, --batch-size) and
``runtime`` (``ncsn.runtime.RuntimeOptions``: --compile, --precision, --channels-last). Nothing is kept in the
click context and nothing is written into a loaded config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from ..data import DATASETS
from ..runtime import PRECISIONS, RuntimeOptions


def option_group(name: str, options: list, build):
    """A decorator adding ``options`` to a command and passing ``build(**their values)`` as the parameter ``name``."""

    def decorate(func):
        keys = [_key(option) for option in options]

        @functools.wraps(func)
        def command(*args, **kwargs):
            kwargs[name] = build(**{key: kwargs.pop(key) for key in keys})
            return func(*args, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _key(option) -> str:
    """The parameter name a ``click.option`` decorator gives its value."""
    probe = option(lambda: None).__click_params__[-1]
    return probe.name


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a run folder or a weights file (exactly one), which weights, and the data section
    an official checkpoint does not record."""

    workdir: str | None = None
    checkpoint: str | None = None
    ema: bool | None = None
    dataset: str | None = None
    image_size: int | None = None

    @property
    def path(self) -> str:
        """The run folder or file given (a usage error unless exactly one of the two was)."""
        if bool(self.workdir) == bool(self.checkpoint):
            raise click.UsageError("give exactly one of --workdir DIR or --checkpoint PATH")
        return self.workdir or self.checkpoint

    def load_kwargs(self) -> dict:
        """Keyword arguments of ``ncsn.load_score_model`` (and ``export_slim``) besides the path."""
        return {"ema": self.ema, "dataset": self.dataset, "image_size": self.image_size}


MODEL_SOURCE_OPTIONS = [
    click.option("--workdir", type=click.Path(file_okay=False), help="Run folder (its latest checkpoint)."),
    click.option("--checkpoint", type=click.Path(), help="Checkpoint, export or official .pth file."),
    click.option("--ema/--no-ema", default=None, help="Use EMA weights [default: EMA when the checkpoint has them]."),
    click.option("--dataset", type=click.Choice(sorted(DATASETS)), default=None,
                 help="Dataset of an official checkpoint (required for those; they do not record it)."),
    click.option("--image-size", type=click.IntRange(min=4), default=None,
                 help="Image size of an official checkpoint [default: that of the official release]."),
]


def _model_source(**values) -> ModelSource:
    source = ModelSource(**values)
    source.path  # noqa: B018 -- exactly one of --workdir/--checkpoint, checked before the command starts
    return source


model_source_options = option_group("source", MODEL_SOURCE_OPTIONS, _model_source)
"""--workdir | --checkpoint, --ema/--no-ema, --dataset, --image-size as ``source: ModelSource``."""


def run_folder_option(default: str | None, help: str):
    """--workdir of the commands that write a run folder (train, demo), not one they load a model from."""
    return click.option("--workdir", type=click.Path(file_okay=False), default=default, help=help)


RUNTIME_OPTIONS = [
    click.option("--compile/--no-compile", "compile", default=False,
                 help="torch.compile the network (CUDA graphs for sampling on CUDA)."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="bf16 autocasts the network (the Langevin and loss arithmetic stay float32). auto: bf16 only "
                      "on a CPU with native bf16 (avx512_bf16/AMX) where a first-use timed trial, cached in "
                      "$NCSN_CACHE or ~/.cache/ncsn, finds it faster; fp32 elsewhere, CUDA included. A resumed "
                      "run keeps its recorded precision."),
    click.option("--channels-last/--no-channels-last", "channels_last", default=None,
                 help="channels_last memory format [default: for sampling on a CPU from 16x16 images up]."),
]

runtime_options = option_group("runtime", RUNTIME_OPTIONS, RuntimeOptions)
"""--compile, --precision, --channels-last as ``runtime: RuntimeOptions``."""


@dataclass(frozen=True)
class Output:
    """What a command writes and how much: its output path, the number of items, the seed and the batch size
    (None where a command does not take that option, or leaves it to the config)."""

    out: Path | None = None
    n: int | None = None
    seed: int = 0
    batch_size: int | None = None


SEED = click.option("--seed", type=int, default=0, help="Seed of every random draw; batch b uses (seed, b).")
BATCH_SIZE = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                          help="Chains (images) per batch [default: config's sampling.batch_size].")


def n_option(default: int | None, help: str, minimum: int = 1, torchrun: bool = False):
    """--n: how many samples or images (also spelled --num-samples where torchrun launches the command)."""
    names = ("--n", "--num-samples", "n") if torchrun else ("--n", "n")
    return click.option(*names, type=click.IntRange(min=minimum), default=default, help=help)


def out_option(kind: str, help: str, required: bool = True, default: str | None = None):
    """--out: a folder (``kind="folder"``) or a file (``kind="file"``)."""
    path = click.Path(file_okay=False) if kind == "folder" else click.Path(dir_okay=False)
    return click.option("--out", type=path, required=required, default=default, help=help)


def output_options(out=None, n=None, seed=SEED, batch_size=BATCH_SIZE):
    """The output group of a command: any of --out (``out_option``), --n (``n_option``), --seed and --batch-size
    (pass None for one the command does not take), as ``output: Output``."""
    options = [o for o in (n, batch_size, seed, out) if o is not None]
    return option_group("output", options, lambda **values: Output(
        out=Path(values["out"]) if values.get("out") is not None else None, n=values.get("n"),
        seed=values.get("seed", 0), batch_size=values.get("batch_size")))
