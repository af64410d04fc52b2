"""`ncsn noise-plan`: NCSNv2's sigma_1, number of levels and step size computed from a config's training data."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from ..config import load_config, to_dict
from ..data import read_array
from ..io import write_text
from ..noise_plan import noise_plan
from ..sigmas import OVERLAP_TARGET
from .option_groups import output_options
from .options import POSITIVE, FiniteFloat, user_errors, write_json


@click.command("noise-plan")
@click.option("--config", "config_name", default="digits", help="Preset name or YAML file whose data to measure.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, repeatable.")
@click.option("--steps-each", type=click.IntRange(min=1), default=5, help="Langevin steps per level T.")
@click.option("--sigma-min", type=POSITIVE, default=0.01, help="Smallest sigma.")
@click.option("--target", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=OVERLAP_TARGET,
              help="Overlap of adjacent levels (technique 2); 0.566 is fitted to reproduce the official ladders (a "
                   "calibration), 0.5 is the paper's wording.")
@click.option("--max-points", type=click.IntRange(min=2), default=10_000,
              help="Exact pairwise maximum up to this many images, else over a seeded subsample of this size.")
@output_options(batch_size=None)  # --seed: of the subsample
@click.option("--write", "write_path", type=click.Path(dir_okay=False),
              help="Write the config with the plan applied (model ladder, sampling steps) to this YAML file.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the plan's numbers as JSON.")
@user_errors
def noise_plan_command(config_name, overrides, steps_each, sigma_min, target, max_points, output, write_path,
                       json_path):
    """Compute the NCSNv2 noise plan (sigma_1, L, eps) for the config's training images."""
    config = load_config(config_name, overrides)
    if not sigma_min < 1:
        raise click.BadParameter(f"must be below 1 for images in [0, 1], got {sigma_min}", param_hint="--sigma-min")
    images, _ = read_array(config.data, "train")  # memory-mapped where cached: the plan reads only its subsample
    plan = noise_plan(images, steps_each=steps_each, sigma_min=sigma_min, target=target, max_points=max_points,
                      seed=output.seed)
    click.echo(f"{config.data.dataset} at {config.data.image_size}px\n{plan.describe()}")
    if json_path:
        write_json(json_path, plan.as_dict())
    if write_path:
        values = to_dict(config)
        for section, keys in plan.config_overrides().items():
            for key, value in keys.items():  # sampling.ald: into the section, its other keys kept
                values[section][key] = {**values[section][key], **value} if isinstance(value, dict) else value
        write_text(Path(write_path), yaml.safe_dump(values, sort_keys=False))
        load_config(write_path)  # the written file is a valid config
        click.echo(f"wrote {write_path}")
