"""`ncsn export`: a slim, weights-only export of a run or checkpoint for sampling and sharing."""

from __future__ import annotations

import click

from ..checkpoint import export_slim
from .option_groups import model_source_options, out_option, output_options
from .options import user_errors


@click.command("export")
@model_source_options
@output_options(out=out_option("folder", "Folder for model.safetensors + config.json."), seed=None, batch_size=None)
@user_errors
def export_command(source, output):
    """Write a slim, weights-only export (safetensors + JSON config) that `ncsn sample --checkpoint` loads."""
    folder = export_slim(source.path, output.out, **source.load_kwargs())
    click.echo(f"exported to {folder}")
