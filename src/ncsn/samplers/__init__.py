"""Samplers for score models, each a pure function of (score function, x, sigma schedule, settings, generator).

- ``annealed_langevin`` (langevin.py): the paper's sampler on the model's ladder;
- ``pc_sampler`` (pc.py): Score-SDE's VE predictor-corrector;
- ``ode_sampler`` (ode.py): the probability-flow ODE with an adaptive solver;
- ``heun_sampler`` (heun.py): EDM's second-order sampler on the rho-schedule.

Each returns the final x in float32, reports what it spent in an optional ``info`` dict (``nfe``: network
evaluations, each on the whole batch) and shares its noise, counting and checks (common.py). ``run_sampler``
(settings.py) runs the one a ``SamplerSettings`` names on a model's ladder.
"""

from .common import Counted, Generators, ScoreFn, per_example_generators, prior_init, randn, uniform_init
from .heun import heun_sampler
from .langevin import CONVENTIONS, annealed_langevin, langevin_update, step_sizes
from .ode import ode_sampler
from .pc import CORRECTORS, PREDICTORS, pc_sampler
from .settings import (
    DENOISE_DEFAULTS,
    INITS,
    SAMPLERS,
    SamplerSettings,
    callback_count,
    check_fits,
    denoise_for,
    expected_nfe,
    initial_state,
    run_sampler,
    schedule,
    settings_from,
    used_settings,
    validate,
)

__all__ = [
    "CONVENTIONS", "CORRECTORS", "DENOISE_DEFAULTS", "INITS", "PREDICTORS", "SAMPLERS", "Counted", "Generators",
    "SamplerSettings", "ScoreFn", "annealed_langevin", "callback_count", "check_fits", "denoise_for", "expected_nfe",
    "heun_sampler", "initial_state", "langevin_update", "ode_sampler", "pc_sampler", "per_example_generators",
    "prior_init", "randn", "run_sampler", "schedule", "settings_from", "step_sizes", "uniform_init", "used_settings",
    "validate",
]
