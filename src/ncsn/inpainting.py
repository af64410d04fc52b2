"""Inpainting (SPEC §6): a sampler of ``ncsn.samplers`` (ald or pc) plus a constraint that holds known pixels.

At level i the known pixels of x are set to one noisy copy y + sigma_i * z before the level and reset to it after
every step (the paper's procedure); ``redraw_every_step`` draws a fresh copy at every reset instead (the v2 code,
and Score-SDE's way with the pc sampler, whose known pixels get a fresh noisy copy after every move).
A mask is 1 (True) where a pixel is known (``ncsn.masks``); the figures that score completions are
``ncsn.evaluation.inpainting``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InputError
from .masks import fit_mask
from .samplers import (SPECS, Generators, SamplerSettings, ScoreFn, initial_state, randn, run_sampler, sampler_spec,
                       schedule)


@torch.no_grad()
def inpaint(
    score_fn: ScoreFn,
    images: torch.Tensor,
    mask,
    sigmas: torch.Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = False,
    convention: str = "code",
    redraw_every_step: bool = False,
    generator: Generators = None,
    init: torch.Tensor | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    settings: SamplerSettings | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Complete ``images`` (N, C, H, W, [0, 1]) where ``mask`` is 0; known pixels come back exactly as given.

    ``sigmas`` is the model's ladder. ``settings`` (a SamplerSettings naming a sampler that takes a constraint: ald
    or pc) replaces the four annealed Langevin arguments when given. Chains start from ``init`` (default: the
    sampler's own start, drawn from ``generator``). The noisy copies of the known pixels are drawn from
    ``generator`` too, but only when something is known, so an empty mask reproduces the sampler with the same
    generator. ``callback(i, sigma_next, x)`` and ``info`` are ``run_sampler``'s. Returns float32, unclamped, like
    the sampler.
    """
    if settings is None:
        settings = SamplerSettings.of("ald", n_steps_each=n_steps_each, step_lr=step_lr, denoise=denoise,
                                      convention=convention)
    if not sampler_spec(settings).inpainting:
        takers = ", ".join(name for name, spec in SPECS.items() if spec.inpainting)
        raise InputError(f"inpainting works with the {takers} samplers, not {settings.sampler}")
    y = images.detach().to(torch.float32)
    known = fit_mask(mask, y)
    x = initial_state(settings, y.shape, sigmas, generator, y.device) if init is None else init
    levels = [float(s) for s in schedule(settings, sigmas)]
    held: dict[str, torch.Tensor] = {}

    def hold_known(x: torch.Tensor, level: int, step: int) -> None:
        if step == -1 or redraw_every_step:
            held["y"] = y + levels[level] * randn(y.shape, generator, y.device)
        x.copy_(torch.where(known, held["y"], x))

    constraint = hold_known if bool(known.any()) else None
    x = run_sampler(score_fn, x, sigmas, settings, generator, callback, constraint, info)
    return torch.where(known, y, x)
