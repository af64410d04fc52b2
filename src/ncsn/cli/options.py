"""Pieces every command shares: the one-line error policy, a validated --device, finite float options, JSON files."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import click

from ..data import DatasetNotFoundError
from ..distributed import check_device
from ..errors import InputError, NcsnError, storage_message
from ..io import write_json as atomic_json

USER_ERRORS = (NcsnError, DatasetNotFoundError)


def user_errors(func):
    """Report the library's own errors (and a full disk, read-only folder or path below a file) as one `Error: ...`
    line with exit status 1. Any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            message = storage_message(err)
            if message is None:
                raise
            raise click.ClickException(message) from None

    return wrapper


def _device(ctx, param, value):
    """Validate --device while parsing, for every command: the device must exist on this machine."""
    try:
        return check_device(value)
    except InputError as err:
        raise click.BadParameter(str(err).removeprefix("--device ")) from None


def device_option(default: str | None = None, help: str = "cpu, cuda, cuda:1 ... [default: cuda if available]."):
    return click.option("--device", default=default, callback=_device, help=help)


class FiniteFloat(click.FloatRange):
    """A float option in a range that also refuses nan and +-inf (click's FloatRange lets them through)."""

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE = FiniteFloat(min=0, min_open=True)


def finite(value):
    """JSON has no NaN or infinity: they are written as null (e.g. a ratio with a zero denominator)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict) -> Path:
    """Strict JSON (non-finite numbers as null), indented, written atomically (``ncsn.io``); a full disk or read-only
    folder is a StorageError."""
    return atomic_json(path, finite(payload), allow_nan=False)
