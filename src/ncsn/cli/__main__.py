"""`python -m ncsn.cli` (what torchrun launches)."""

from . import main

main()
