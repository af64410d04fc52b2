"""The list of subcommands `ncsn` exposes; each lives in its own module."""

from .run import demo_command, export_command, sample_command, train_command

ALL: list = [train_command, sample_command, export_command, demo_command]
