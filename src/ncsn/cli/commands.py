"""The list of subcommands `ncsn` exposes; each lives in its own module."""

ALL: list = []
