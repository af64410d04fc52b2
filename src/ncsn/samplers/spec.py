"""What a sampler tells the rest of the package about itself: a ``SamplerSpec`` (one per sampler, in its own file).

A spec carries the sampler's settings dataclass (its config sub-section ``sampling.<name>``, defaults from its paper,
``problems()`` for range checks), the sigma schedule it takes from a model's ladder, the NFE and callback count that
schedule costs, what the network must accept (any sigma, or only the ladder's levels), whether it takes an
inpainting constraint, where its chains start, and ``run``: the sampler's pure function called with keyword-only
arguments. ``registry.py`` maps names to specs; ``settings.py`` has the generic functions over them.

Every sampler calls back the same way, ``callback(i, sigma_next, x)``: ``i`` the 0-based index of the update just
made, ``sigma_next`` the noise level x is at after it (0 after a final denoising step).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Callback = Callable[[int, float, torch.Tensor], None]
Constraint = Callable[[torch.Tensor, int, int], None]
NEEDS = ("any_sigma", "ladder")  # evaluates sigmas between a ladder's levels / only the levels of its schedule
INITS = ("uniform", "prior")  # Uniform[0, 1] (NCSN's reference) or the VE prior N(0, sigma_max^2 I)


def option(default=dataclasses.MISSING, *, help: str, flag: str | None = None, choices: tuple = (),
           min: float | None = None, min_open: bool = False):
    """A settings field with its range and what a command line needs to offer it: its help line, its flag (default
    ``--key-with-dashes``), for strings the allowed values, for numbers the lower bound ``min`` (excluded with
    ``min_open``). ``field_problems`` checks the range; the command line checks it while parsing."""
    metadata = {"help": help, "flag": flag, "choices": tuple(choices), "min": min, "min_open": min_open}
    return field(default=default, metadata=metadata)


def check(found: list, ok: bool, key: str, message: str) -> None:
    """Append (key, message) to ``found`` unless ``ok``: the settings classes' ``problems()`` are lists of these."""
    if not ok:
        found.append((key, message))


def value_type(settings: type, key: str) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a settings field, from its annotation (``float | None``)."""
    hint = typing.get_type_hints(settings)[key]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def range_problem(f: dataclasses.Field, value, optional: bool) -> str | None:
    """Why ``value`` is out of the field's declared range (its ``option`` metadata), or None."""
    if value is None:
        return None if optional else "must be a value, not none"
    either = " (or none)" if optional else ""
    choices, low = f.metadata.get("choices"), f.metadata.get("min")
    if choices and value not in choices:
        return f"must be one of {choices}, got {value!r}"
    if low is not None and not isinstance(value, bool) and isinstance(value, int | float):
        if f.metadata.get("min_open") and not value > low:
            return f"must be {'positive' if low == 0 else f'> {low:g}'}{either}, got {value}"
        if not f.metadata.get("min_open") and not value >= low:
            return f"must be >= {low:g}{either}, got {value}"
    return None


def field_problems(settings) -> list[tuple[str, str]]:
    """(key, message) for every field of a settings object outside its declared range."""
    found = []
    for f in dataclasses.fields(settings):
        message = range_problem(f, getattr(settings, f.name), value_type(type(settings), f.name)[1])
        if message is not None:
            found.append((f.name, message))
    return found


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler as the package sees it.

    - ``settings``: its settings dataclass (fields made with ``option``; ``problems()`` -> [(key, message)]);
    - ``run(score_fn, x, *, sigmas, settings, generator, callback, constraint, info)`` -> float32 x;
    - ``schedule(settings, ladder, frames)``: the sigmas it runs on (``frames``: a callback wants intermediate
      points; only ode's output points depend on it);
    - ``expected_nfe(settings, ladder)``: network evaluations per chain, None when adaptive;
    - ``callback_count(settings, ladder)``: callbacks per chain (with a callback given);
    - ``needs``: "any_sigma" or "ladder" (``NEEDS``); ``inpainting``: takes a constraint; ``init``: its start;
    - ``frame_steps(settings, ladder)``: the callback counts (1-based) a progression keeps, or None for up to ten
      evenly spaced;
    - ``legacy``: flat config keys of the old single settings object that name one of its fields differently.
    """

    name: str
    summary: str
    settings: type
    run: Callable[..., torch.Tensor]
    schedule: Callable[[Any, torch.Tensor, bool], torch.Tensor]
    expected_nfe: Callable[[Any, torch.Tensor], int | None]
    callback_count: Callable[[Any, torch.Tensor], int]
    needs: str
    inpainting: bool
    init: str
    frame_steps: Callable[[Any, torch.Tensor], set[int]] | None = None
    legacy: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.needs not in NEEDS or self.init not in INITS or not dataclasses.is_dataclass(self.settings):
            raise ValueError(f"sampler spec {self.name!r}: needs in {NEEDS}, init in {INITS}, settings a dataclass")

    def keys(self) -> tuple[str, ...]:
        """The names of its settings (its config sub-section's keys)."""
        return tuple(f.name for f in dataclasses.fields(self.settings))
