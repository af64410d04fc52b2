"""From settings to a run: which sampler, its sigma schedule on a model's ladder, its initial state and its NFE.

``SamplerSettings`` is the schema of the config's ``sampling`` section (less the batch size); ``run_sampler`` turns
it and a model's ladder into one call of the sampler it names. Schedules come from the ladder's ends:

- ``ald``: the ladder itself; ``pc``: the ladder, or N geometric levels (the VE SDE grid) with ``n_steps`` = N;
- ``heun``: EDM's rho-schedule of ``n_steps`` (default 18) steps from sigma_max to sigma_min, then to 0;
- ``ode``: from sigma_max to sigma_min.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..schedules import karras_sigmas, ve_sde_sigmas
from .common import Generators, ScoreFn, prior_init, report, require_any_sigma, require_on_ladder, uniform_init
from .heun import heun_sampler
from .langevin import CONVENTIONS, annealed_langevin
from .ode import METHODS, ode_sampler
from .pc import CORRECTORS, PREDICTORS, pc_sampler

SAMPLERS = ("ald", "pc", "ode", "heun")
INITS = ("auto", "uniform", "prior")
HEUN_DEFAULT_STEPS = 18
ODE_FRAMES = 10
USED = {  # the settings each sampler reads (recorded in JSON outputs)
    "ald": ("n_steps_each", "step_lr", "denoise", "convention", "s_noise", "s_min", "s_max", "init"),
    "pc": ("n_steps", "predictor", "corrector", "corrector_steps", "snr", "denoise", "init"),
    "ode": ("rtol", "atol", "ode_method", "denoise", "init"),
    "heun": ("n_steps", "rho", "s_churn", "s_min", "s_max", "s_noise", "init"),
}


# Each sampler's end when ``denoise`` is None, as its paper samples: ald as NCSN (no final step; NCSNv2 adds the
# Tweedie step, so the v2 presets set denoise: true), pc and ode as Score-SDE (noise_removal: pc returns the last
# move's mean, ode adds the Tweedie step). heun has no such setting: EDM's schedule itself ends at sigma = 0.
DENOISE_DEFAULTS = {"ald": False, "pc": True, "ode": True}


@dataclass
class SamplerSettings:
    """Every sampler's settings; each sampler reads its own (``USED``). ``n_steps`` None: pc runs on the model's own
    ladder and heun takes 18 steps. ``s_max`` None: no upper bound on churn (heun) or on s_noise (ald). ``init``
    auto: Uniform[0, 1] for ald (the reference), the VE prior N(0, sigma_max^2 I) for the others (Score-SDE, EDM).
    ``denoise`` None: the sampler's paper default (``DENOISE_DEFAULTS``: off for ald, on for pc and ode)."""

    sampler: str = "ald"
    n_steps_each: int = 100
    step_lr: float = 2e-5
    denoise: bool | None = None
    convention: str = "code"
    n_steps: int | None = None
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    corrector_steps: int = 1
    snr: float = 0.16
    rho: float = 7.0
    rtol: float = 1e-5
    atol: float = 1e-5
    ode_method: str = "dopri5"
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float | None = None
    s_noise: float = 1.0
    init: str = "auto"


def problems(s) -> list[tuple[str, str]]:
    """(key, message) for every setting out of range; empty when all are valid."""
    checks = [
        ("sampler", s.sampler in SAMPLERS, f"unknown sampler {s.sampler!r}; choose from {', '.join(SAMPLERS)}"),
        ("n_steps_each", s.n_steps_each >= 1, f"must be >= 1, got {s.n_steps_each}"),
        ("step_lr", s.step_lr > 0, f"must be positive, got {s.step_lr}"),
        ("convention", s.convention in CONVENTIONS, f"must be one of {CONVENTIONS}, got {s.convention!r}"),
        ("n_steps", s.n_steps is None or s.n_steps >= 1, f"must be >= 1 (or null), got {s.n_steps}"),
        ("predictor", s.predictor in PREDICTORS, f"must be one of {PREDICTORS}, got {s.predictor!r}"),
        ("corrector", s.corrector in CORRECTORS, f"must be one of {CORRECTORS}, got {s.corrector!r}"),
        ("corrector_steps", s.corrector_steps >= 0, f"must be >= 0, got {s.corrector_steps}"),
        ("snr", s.snr > 0, f"must be positive, got {s.snr}"),
        ("rho", s.rho > 0, f"must be positive, got {s.rho}"),
        ("rtol", s.rtol > 0, f"must be positive, got {s.rtol}"),
        ("atol", s.atol > 0, f"must be positive, got {s.atol}"),
        ("ode_method", s.ode_method in METHODS, f"must be one of {METHODS}, got {s.ode_method!r}"),
        ("s_churn", s.s_churn >= 0, f"must be >= 0, got {s.s_churn}"),
        ("s_min", s.s_min >= 0, f"must be >= 0, got {s.s_min}"),
        ("s_max", s.s_max is None or s.s_max >= s.s_min, f"must be >= s_min ({s.s_min}) or null, got {s.s_max}"),
        ("s_noise", s.s_noise > 0, f"must be positive, got {s.s_noise}"),
        ("init", s.init in INITS, f"must be one of {INITS}, got {s.init!r}"),
    ]
    found = [(key, message) for key, ok, message in checks if not ok]
    if s.sampler == "pc" and s.predictor == "none" and (s.corrector == "none" or s.corrector_steps == 0):
        found.append(("predictor", "pc needs a predictor or a corrector; both are off"))
    return found


def validate(s) -> None:
    """Raise ValueError naming the first setting out of range."""
    found = problems(s)
    if found:
        key, message = found[0]
        raise InputError(f"sampling.{key}: {message}")


def denoise_for(s) -> bool:
    """Whether the sampler ``s`` names ends noise-free: its denoise setting, else its paper's default (False for
    heun, which has no final step to add)."""
    return s.denoise if s.denoise is not None else DENOISE_DEFAULTS.get(s.sampler, False)


def used_settings(s) -> dict:
    """The settings the chosen sampler reads, as a plain dict (for JSON records; denoise as resolved)."""
    return {"sampler": s.sampler, **{key: denoise_for(s) if key == "denoise" else getattr(s, key)
                                     for key in USED[s.sampler]}}


def schedule(s, ladder: torch.Tensor, frames: bool = False) -> torch.Tensor:
    """The sigma schedule the sampler runs on, from the model's ladder (float32, on the ladder's device).

    ``frames`` gives the ode sampler intermediate output points (ODE_FRAMES geometric steps; no extra evaluations).
    """
    top, bottom = float(ladder[0]), float(ladder[-1])
    if s.sampler == "ald" or (s.sampler == "pc" and s.n_steps is None):
        return ladder
    if s.sampler == "pc":
        return ve_sde_sigmas(top, bottom, s.n_steps, device=ladder.device)
    if s.sampler == "heun":
        return karras_sigmas(top, bottom, s.n_steps or HEUN_DEFAULT_STEPS, s.rho, device=ladder.device)
    return ve_sde_sigmas(top, bottom, ODE_FRAMES + 1 if frames else 2, device=ladder.device)


def check_fits(score_fn, s, ladder: torch.Tensor) -> None:
    """Refuse up front a sampler the network cannot run (heun/ode, or pc off the ladder, on a level-conditioned net)."""
    validate(s)
    if s.sampler in ("heun", "ode"):
        require_any_sigma(score_fn, f"the {s.sampler} sampler")
    elif s.sampler == "pc":
        require_on_ladder(score_fn, schedule(s, ladder), f"pc with n_steps={s.n_steps}")


def expected_nfe(s, ladder: torch.Tensor) -> int | None:
    """Network evaluations per chain, known ahead for every sampler but the adaptive ode (None)."""
    if s.sampler == "ald":
        return len(ladder) * s.n_steps_each + int(denoise_for(s))
    if s.sampler == "pc":
        levels = len(ladder) if s.n_steps is None else s.n_steps
        corrector = 0 if s.corrector == "none" else s.corrector_steps
        return levels * (corrector + int(s.predictor != "none"))
    if s.sampler == "heun":
        return 2 * (s.n_steps or HEUN_DEFAULT_STEPS) - 1
    return None


def callback_count(s, ladder: torch.Tensor) -> int:
    """How many times ``run_sampler`` calls its callback (ald: every step; pc: every level; heun: every step;
    ode: every output point, ODE_FRAMES)."""
    if s.sampler == "ald":
        return len(ladder) * s.n_steps_each
    if s.sampler == "ode":
        return ODE_FRAMES
    return len(schedule(s, ladder)) - (s.sampler == "heun")


def initial_state(s, shape, ladder: torch.Tensor, generator: Generators = None, device=None) -> torch.Tensor:
    """x at the start: Uniform[0, 1] or N(0, sigma_max^2 I), per ``init`` (auto: uniform for ald only)."""
    init = s.init if s.init != "auto" else ("uniform" if s.sampler == "ald" else "prior")
    if init == "uniform":
        return uniform_init(shape, generator, device)
    return prior_init(shape, float(ladder[0]), generator, device)


def run_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    ladder: torch.Tensor,
    s,
    generator: Generators = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    constraint: Callable[[torch.Tensor, int, int], None] | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Run the sampler ``s.sampler`` names from x on the schedule it takes from ``ladder``; returns float32 x.

    ``callback(done, total, x)`` is called ``callback_count`` times (done = 1 .. total). ``constraint`` (inpainting)
    works with ald and pc. ``info`` receives ``nfe`` and the sampler's other figures.
    """
    validate(s)
    if constraint is not None and s.sampler not in ("ald", "pc"):
        raise InputError(f"inpainting works with the ald and pc samplers, not {s.sampler}")
    sigmas = schedule(s, ladder, frames=callback is not None)
    total = callback_count(s, ladder)
    step_callback = None
    if callback is not None and s.sampler == "ald":
        def step_callback(level, step, x):
            callback(level * s.n_steps_each + step + 1, total, x)
    elif callback is not None:
        def step_callback(i, sigma, x):
            callback(i + (s.sampler != "ode"), total, x)
    found: dict = {}
    denoise = denoise_for(s)
    s_max = math.inf if s.s_max is None else s.s_max  # None: no upper bound (ald's s_noise, heun's churn)
    if s.sampler == "ald":
        x = annealed_langevin(score_fn, x, sigmas, s.n_steps_each, s.step_lr, denoise, s.convention, generator,
                              step_callback, constraint, found, s.s_noise, s.s_min, s_max)
    elif s.sampler == "pc":
        x = pc_sampler(score_fn, x, sigmas, s.predictor, s.corrector, s.corrector_steps, s.snr, denoise,
                       generator, step_callback, constraint, found)
    elif s.sampler == "heun":
        x = heun_sampler(score_fn, x, sigmas, s.s_churn, s.s_min, s_max, s.s_noise, generator, step_callback, found)
    else:
        x = ode_sampler(score_fn, x, sigmas, s.rtol, s.atol, denoise, s.ode_method, generator, step_callback,
                        found)
    report(info, **found)
    return x


def settings_from(values, **changes) -> SamplerSettings:
    """A SamplerSettings from any object with the same attributes (e.g. the config's sampling section)."""
    names = [f.name for f in dataclasses.fields(SamplerSettings)]
    return dataclasses.replace(SamplerSettings(**{n: getattr(values, n) for n in names}), **changes)
