"""Samplers for score models, each a pure function of (score function, x, sigma schedule, settings, generator).

- ``annealed_langevin`` (langevin.py): the paper's sampler on the model's ladder;
- ``pc_sampler`` (pc.py): Score-SDE's VE predictor-corrector;
- ``ode_sampler`` (ode.py): the probability-flow ODE with an adaptive solver;
- ``heun_sampler`` (heun.py): EDM's second-order sampler on the rho-schedule.

Each returns the final x in float32, reports what it spent in an optional ``info`` dict (``nfe``: network
evaluations, each on the whole batch), calls back as ``callback(i, sigma_next, x)`` and shares its noise, counting
and checks (common.py). Each file also holds the sampler's ``SPEC`` (spec.py: its settings, schedule, NFE, needs);
``SPECS`` (registry.py) maps names to them and ``run_sampler`` (settings.py) runs the one a ``SamplerSettings``
names on a model's ladder.
"""

from .common import Counted, Generators, ScoreFn, per_example_generators, prior_init, randn, uniform_init
from .heun import HeunSettings, heun_sampler
from .langevin import CONVENTIONS, AldSettings, annealed_langevin, langevin_update, step_sizes
from .ode import ODESettings, ode_sampler
from .pc import CORRECTORS, PREDICTORS, PCSettings, pc_sampler
from .registry import SPECS
from .settings import (
    DENOISE_DEFAULTS,
    INITS,
    SAMPLERS,
    SamplerSettings,
    callback_count,
    check_fits,
    denoise_for,
    expected_nfe,
    frame_steps,
    initial_state,
    nest_flat_keys,
    run_sampler,
    sampler_spec,
    schedule,
    settings_from,
    used_settings,
    validate,
)
from .spec import SamplerSpec

__all__ = [
    "CONVENTIONS", "CORRECTORS", "DENOISE_DEFAULTS", "INITS", "PREDICTORS", "SAMPLERS", "SPECS", "AldSettings",
    "Counted", "Generators", "HeunSettings", "ODESettings", "PCSettings", "SamplerSettings", "SamplerSpec", "ScoreFn",
    "annealed_langevin", "callback_count", "check_fits", "denoise_for", "expected_nfe", "frame_steps", "heun_sampler",
    "initial_state", "langevin_update", "nest_flat_keys", "ode_sampler", "pc_sampler", "per_example_generators",
    "prior_init", "randn", "run_sampler", "sampler_spec", "schedule", "settings_from", "step_sizes", "uniform_init",
    "used_settings", "validate",
]
