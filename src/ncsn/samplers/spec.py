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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

Callback = Callable[[int, float, torch.Tensor], None]
Constraint = Callable[[torch.Tensor, int, int], None]
NEEDS = ("any_sigma", "ladder")  # evaluates sigmas between a ladder's levels / only the levels of its schedule
INITS = ("uniform", "prior")  # Uniform[0, 1] (NCSN's reference) or the VE prior N(0, sigma_max^2 I)


def option(default=dataclasses.MISSING, *, help: str, flag: str | None = None, choices: tuple = (), **kwargs):
    """A settings field with what a command line needs to offer it: its help line, its flag (default
    ``--key-with-dashes``) and, for strings, the allowed values."""
    metadata = {"help": help, "flag": flag, "choices": tuple(choices)}
    return field(default=default, metadata=metadata, **kwargs)


def check(found: list, ok: bool, key: str, message: str) -> None:
    """Append (key, message) to ``found`` unless ``ok``: the settings classes' ``problems()`` are lists of these."""
    if not ok:
        found.append((key, message))


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
