"""`ncsn train`: train a score network into a run folder, or resume one."""

from __future__ import annotations

import math
from pathlib import Path

import click

from .. import distributed
from ..config import load_config, named_configs
from ..resume import resume_config
from ..training import train
from .option_groups import run_folder_option, runtime_options
from .options import device_option, user_errors


@click.command("train")
@click.option("--config", "config_name", default=None, help=f"Preset ({', '.join(named_configs())}) or YAML file.")
@run_folder_option(None, "Run folder [default: runs/<config>].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, repeatable.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's latest checkpoint (and its config).")
@device_option()
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@runtime_options
@user_errors
def train_command(config_name, workdir, overrides, resume, device, progress, runtime):
    """Train a score network by denoising score matching (use torchrun for several processes)."""
    if config_name is None and not (resume and workdir):
        raise click.UsageError("--config is required (or --resume --workdir DIR to continue a run)")
    workdir = Path(workdir or f"runs/{Path(config_name).stem}")
    if config_name:
        config = load_config(config_name, overrides)
    else:  # the latest checkpoint's config is the source of truth, whatever config.yaml says
        config, stale = resume_config(workdir, overrides)
        if stale and distributed.setup(device).is_main:
            click.echo(f"note: {workdir / 'config.yaml'} is missing or differs from the latest checkpoint's config; "
                       "resuming with the checkpoint's (pass --set KEY=VALUE to change a value)")
    result = train(config, workdir, resume=resume, device=device, progress=progress, runtime=runtime)
    if distributed.setup(device).is_main:
        loss = "" if math.isnan(result.last_loss) else f"; loss {result.last_loss:.4f}"
        budget = (f" (training.time_budget_s {config.training.time_budget_s:g} spent; --resume continues)"
                  if result.step < config.training.n_iters else "")
        click.echo(f"trained to step {result.step}{budget}{loss}; checkpoint {result.checkpoint}")
    distributed.cleanup()
