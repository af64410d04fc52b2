"""The `ncsn` command line: one click group, one module per family of subcommands."""

from __future__ import annotations

import click

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="ncsn")
def main() -> None:
    """Noise-conditional score networks: train, sample, inpaint and evaluate (Song & Ermon, 2019)."""


def _register() -> None:
    """Attach the subcommands (each module owns its own options)."""
    from . import commands

    for command in commands.ALL:
        main.add_command(command)


_register()
