"""The `ncsn` command line: one click group, one module per family of subcommands."""

from __future__ import annotations

import warnings

import click

from ..config import FlatSamplingWarning

CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"], "max_content_width": 110}
_FORMAT = warnings.formatwarning


def _one_line(message, category, filename, lineno, line=None) -> str:
    """The library's deprecation of old config layouts as one `warning: ...` line; other warnings as Python has them."""
    if issubclass(category, FlatSamplingWarning):
        return f"warning: {message}\n"
    return _FORMAT(message, category, filename, lineno, line)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="ncsn")
def main() -> None:
    """Noise-conditional score networks: train, sample, inpaint and evaluate (Song & Ermon, 2019)."""
    warnings.formatwarning = _one_line


def _register() -> None:
    """Attach the subcommands (each module owns its own options)."""
    from . import commands

    for command in commands.ALL:
        main.add_command(command)


_register()
