"""--sampler and its settings for every command that samples; unset ones fall back to the config's ``sampling``.

The values are kept in the click context (like the runtime options), so commands take them without new
parameters; ``apply_sampler_options`` writes them into a loaded config's sampling section and validates it.
"""

from __future__ import annotations

import click

from ..samplers import CORRECTORS, INITS, PREDICTORS, SAMPLERS, SamplerSettings, validate
from .options import POSITIVE, FiniteFloat

SAMPLER_KEY = "ncsn.sampler"
DEFAULTS = SamplerSettings()
NON_NEGATIVE = FiniteFloat(min=0)


def _store(ctx, param, value):
    if value is not None:
        ctx.meta.setdefault(SAMPLER_KEY, {})[param.name] = value
    return value


def _option(flag: str, key: str, kind, text: str):
    default = getattr(DEFAULTS, key)
    shown = {None: "null", float("inf"): "inf"}.get(default, default)
    return click.option(flag, key, type=kind, default=None, expose_value=False, callback=_store,
                        help=f"{text} [default: config's sampling.{key}, {shown} unless set].")


def sampler_options(func):
    """The sampler choice and the settings of pc, ode and heun (ald's are --steps-each, --step-lr, --denoise)."""
    options = [
        _option("--sampler", "sampler", click.Choice(SAMPLERS),
                "ald: annealed Langevin; pc: VE predictor-corrector; ode: probability flow (adaptive); heun: EDM"),
        _option("--n-steps", "n_steps", click.IntRange(min=1),
                "Steps N: pc levels (geometric VE grid; null = the model's ladder), heun steps (null = 18)"),
        _option("--predictor", "predictor", click.Choice(PREDICTORS), "pc predictor"),
        _option("--corrector", "corrector", click.Choice(CORRECTORS),
                "pc corrector: langevin (step 2(snr |z|/|s|)^2) or ald (step 2(snr sigma)^2)"),
        _option("--corrector-steps", "corrector_steps", click.IntRange(min=0), "pc corrector moves per level"),
        _option("--snr", "snr", POSITIVE, "pc corrector signal-to-noise ratio"),
        _option("--rtol", "rtol", POSITIVE, "ode relative tolerance"),
        _option("--atol", "atol", POSITIVE, "ode absolute tolerance"),
        _option("--rho", "rho", POSITIVE, "heun rho-schedule exponent"),
        _option("--s-churn", "s_churn", NON_NEGATIVE, "heun churn (0 = deterministic)"),
        _option("--s-min", "s_min", NON_NEGATIVE, "heun: churn only, ald: s_noise only, for sigma >= s_min"),
        _option("--s-max", "s_max", NON_NEGATIVE,
                "heun: churn only, ald: s_noise only, for sigma <= s_max (null = no bound)"),
        _option("--s-noise", "s_noise", POSITIVE,
                "noise scale: of ald's Langevin noise (temperature s_noise^2) and of heun's churn noise"),
        _option("--init", "init", click.Choice(INITS),
                "Chain start: uniform [0, 1] or the prior N(0, sigma_max^2); auto = uniform for ald, prior otherwise"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def apply_sampler_options(sampling) -> None:
    """Write the running command's sampler options into ``sampling`` (in place) and validate the result."""
    ctx = click.get_current_context(silent=True)
    for key, value in (ctx.meta.get(SAMPLER_KEY, {}) if ctx is not None else {}).items():
        setattr(sampling, key, value)
    validate(sampling)


NOTED_KEY = "ncsn.ladder_noted"


def untrained_ladder_note(config) -> str | None:
    """The one line that says ald runs on a ladder the network was not trained over (a net trained on σ drawn
    continuously: objective ve or edm); None when the sampler is not ald or the net was trained on that ladder."""
    t, m = config.training, config.model
    if config.sampling.sampler != "ald" or t.objective == "ladder":
        return None
    return (f"note: ald runs on the model's {m.num_scales}-level ladder (sigma {m.sigma_max:g} -> {m.sigma_min:g}), "
            f"a ladder this network was not trained over (it was trained on continuous sigma, training.objective "
            f"{t.objective}); running it anyway")


def note_untrained_ladder(config) -> None:
    """Echo ``untrained_ladder_note`` to stderr once per command (commands that sample several times say it once;
    stdout stays the command's own output, e.g. JSON)."""
    note = untrained_ladder_note(config)
    ctx = click.get_current_context(silent=True)
    if note is None or (ctx is not None and ctx.meta.get(NOTED_KEY)):
        return
    if ctx is not None:
        ctx.meta[NOTED_KEY] = True
    click.echo(note, err=True)
