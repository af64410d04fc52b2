"""The sampler option group: --sampler, --init and every registered sampler's settings, generated from the specs.

Each settings field of a spec (``ncsn.samplers.spec.option``) becomes one option, its flag shared by the samplers with
a field of that name (``--n-steps``: pc and heun); its type, choices and range come from the field, and a setting that
may be None takes ``none``. The group hands the command a ``SamplerChoice``: what was given, nothing more. Applied to
a loaded config's sampling section (``SamplerChoice.apply``) it builds a new section, refusing an option the chosen
sampler does not read ("--steps-each is an option of the ald sampler, not heun"); the loaded config is left alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click
import torch

from ..errors import InputError
from ..samplers import INITS, SAMPLERS, SPECS, sampler_spec, schedule, validate
from ..samplers.settings import readers
from ..samplers.spec import value_type
from ..sigmas import geometric_sigmas
from .option_groups import option_group
from .options import FiniteFloat

NONE_WORDS = ("none", "null")


class Null:
    """The value ``none`` given to a setting that may be None (click's None means "not given")."""

    def __repr__(self) -> str:
        return "none"


NULL = Null()


@dataclass(frozen=True)
class Setting:
    """One option: its flag, the settings key it sets and the samplers (and their fields) that read it."""

    flag: str
    key: str
    fields: tuple[tuple[str, dataclasses.Field], ...]

    @property
    def samplers(self) -> list[str]:
        return [name for name, _ in self.fields]


class SettingType(click.ParamType):
    """A sampler setting's value: the field's type, its choices or range checked while parsing, ``none`` where the
    setting may be None."""

    def __init__(self, setting: Setting):
        name, f = setting.fields[0]
        self.setting, self.field = setting, f
        self.kind = value_type(SPECS[name].settings, f.name)[0]
        self.optional = any(value_type(SPECS[n].settings, g.name)[1] for n, g in setting.fields)  # none: where read
        self.name = self.kind.__name__

    def convert(self, value, param, ctx):
        if isinstance(value, Null) or value is None:
            return value
        if self.optional and str(value).lower() in NONE_WORDS:
            return NULL
        return self.plain.convert(value, param, ctx)

    @property
    def plain(self) -> click.ParamType:
        """click's type for the value itself: a range (finite floats), a choice or a string."""
        low, open_ = self.field.metadata.get("min"), self.field.metadata.get("min_open", False)
        if self.kind is int:
            return click.IntRange(min=low, min_open=open_)
        if self.kind is float:
            return FiniteFloat(min=low, min_open=open_)
        choices = self.field.metadata.get("choices")
        return click.Choice(choices) if choices else click.STRING


def settings_by_flag() -> dict[str, Setting]:
    """Every sampler setting's option, by flag, from the registry (a flag two samplers share must mean one type)."""
    found: dict[str, list] = {}
    for name, spec in SPECS.items():
        for f in dataclasses.fields(spec.settings):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            found.setdefault(flag, []).append((name, f))
    settings = {}
    for flag, fields in found.items():
        kinds = {(f.name, value_type(SPECS[name].settings, f.name)[0]) for name, f in fields}
        if len(kinds) > 1:
            raise TypeError(f"{flag}: the samplers {[n for n, _ in fields]} read it as different settings {kinds}")
        settings[flag] = Setting(flag, fields[0][1].name, tuple(fields))
    return settings


SETTINGS = settings_by_flag()


def _help(setting: Setting) -> str:
    helps = {f.metadata.get("help", ""): name for name, f in setting.fields}
    if len(helps) == 1:
        text = f"{', '.join(setting.samplers)}: {next(iter(helps))}"
    else:
        text = "; ".join(f"{name}: {f.metadata.get('help', '')}" for name, f in setting.fields)
    defaults = sorted({repr(f.default) if f.default is not None else "none" for _, f in setting.fields})
    return f"{text} [default: config's sampling.<sampler>.{setting.key}, {' / '.join(defaults)} unless set]."


def _click_option(setting: Setting):
    """The click option of one setting: a --flag/--no-flag switch for a bool, else a typed value."""
    kind = SettingType(setting)
    names = [setting.flag, setting.flag.removeprefix("--").replace("-", "_")]
    if kind.kind is bool:
        names[0] = f"{setting.flag}/--no-{setting.flag.removeprefix('--')}"
        return click.option(*names, default=None, help=_help(setting))
    metavar = "|".join(setting.fields[0][1].metadata.get("choices", ())) or kind.name.upper()
    return click.option(*names, type=kind, default=None, metavar=metavar + ("|none" if kind.optional else ""),
                        help=_help(setting))


def _param(setting: Setting) -> str:
    return setting.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class SamplerChoice:
    """What the command line said about sampling: the sampler (None: the config's), the chains' start (None: the
    config's) and the settings given, as (flag, key, value) with value None for ``none``."""

    sampler: str | None = None
    init: str | None = None
    given: tuple[tuple[str, str, object], ...] = ()

    def apply(self, sampling):
        """A new sampling section (of ``sampling``'s type): the chosen sampler, with the given settings in its
        section. An option the sampler does not read is an InputError naming the samplers that do; a value out of
        range (s_max below s_min) one naming the option."""
        name = self.sampler or sampling.sampler
        spec = sampler_spec(name)
        for flag, key, _ in self.given:
            if key not in spec.keys():
                which = readers(key)
                raise InputError(f"{flag} is an option of the {', '.join(which)} sampler{'s' * (len(which) > 1)}, "
                                 f"not {name}")
        section = dataclasses.replace(getattr(sampling, name), **{key: value for _, key, value in self.given})
        resolved = dataclasses.replace(sampling, sampler=name, init=self.init or sampling.init, **{name: section})
        flags = {f"sampling.{name}.{key}": flag for flag, key, _ in self.given}
        try:
            validate(resolved)
        except InputError as err:
            where, _, message = str(err).partition(": ")
            raise InputError(f"{flags[where]}: {message}" if where in flags else str(err)) from None
        return resolved

    def section(self, sampling):
        """The chosen sampler's settings with the given ones applied (``apply(sampling).section``)."""
        return self.apply(sampling).section


def _choice(sampler=None, init=None, **values) -> SamplerChoice:
    given = tuple((s.flag, s.key, None if values[_param(s)] is NULL else values[_param(s)])
                  for s in SETTINGS.values() if values.get(_param(s)) is not None)
    return SamplerChoice(sampler, init, given)


SAMPLER = click.option(
    "--sampler", type=click.Choice(SAMPLERS), default=None,
    help="; ".join(f"{name}: {spec.summary}" for name, spec in SPECS.items()) + " [default: config's sampling.sampler].")
INIT = click.option("--init", type=click.Choice(INITS), default=None,
                    help="Chain start: uniform [0, 1] or the prior N(0, sigma_max^2); auto = the sampler's own "
                         "(uniform for ald, the prior for the others) [default: config's sampling.init].")
OPTIONS = {flag: _click_option(setting) for flag, setting in SETTINGS.items()}

sampler_options = option_group("sampler", [SAMPLER, INIT, *OPTIONS.values()], _choice)
"""--sampler, --init and every sampler's settings as ``sampler: SamplerChoice``."""


def settings_options(name: str, keys: tuple[str, ...]):
    """One sampler's options ``keys`` alone (``likelihood``: the ode solver's --rtol, --atol, --ode-method), the same
    definitions as in ``sampler_options``, as ``name: SamplerChoice`` of that sampler."""
    spec = SPECS[name]
    chosen = [flag for flag, setting in SETTINGS.items() if name in setting.samplers and setting.key in keys]
    wanted = {_param(SETTINGS[flag]) for flag in chosen}

    def build(**values):
        return dataclasses.replace(_choice(**{k: v for k, v in values.items() if k in wanted}), sampler=spec.name)

    return option_group(name, [OPTIONS[flag] for flag in chosen], build)


NOTED_KEY = "ncsn.ladder_noted"


def untrained_ladder_note(config) -> str | None:
    """The one line that says the sampler runs on the model's ladder that the network was not trained over (a net
    trained on σ drawn continuously: objective ve or edm); None when it runs elsewhere or the net knows its ladder."""
    t, m, s = config.training, config.model, config.sampling
    if t.objective == "ladder":
        return None
    ladder = geometric_sigmas(m.sigma_max, m.sigma_min, m.num_scales)
    sigmas = schedule(s, ladder)
    if len(sigmas) != len(ladder) or not torch.allclose(sigmas, ladder):
        return None
    return (f"note: {s.sampler} runs on the model's {m.num_scales}-level ladder (sigma {m.sigma_max:g} -> "
            f"{m.sigma_min:g}), a ladder this network was not trained over (it was trained on continuous sigma, "
            f"training.objective {t.objective}); running it anyway")


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
