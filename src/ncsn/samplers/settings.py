"""From settings to a run, the same way for every sampler of the registry.

``SamplerSettings`` is the schema of the config's ``sampling`` section (less the batch size): the sampler's name, the
chains' start and one sub-section per registered sampler (``sampling.ald``, ``sampling.pc``, ...), each that
sampler's own settings dataclass, so no key means two things. The functions below (``run_sampler``, ``schedule``,
``expected_nfe``, ``check_fits``, ``callback_count``, ``initial_state``, ``used_settings``) look the chosen sampler
up in the registry and ask its spec. ``nest_flat_keys`` maps the flat layout of older configs and checkpoints (one
settings object for every sampler) onto the sub-sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .common import Generators, ScoreFn, prior_init, require_any_sigma, require_on_ladder, uniform_init
from .registry import SPECS
from .spec import INITS as STARTS
from .spec import Callback, Constraint, SamplerSpec

SAMPLERS = tuple(SPECS)
INITS = ("auto", *STARTS)
COMMON = ("sampler", "init")  # the keys every sampler shares; the config adds batch_size
# Each sampler's end when its settings are left alone, as its paper samples: ald as NCSN (no final step; NCSNv2 adds
# the Tweedie step, so the v2 presets set denoise: true), pc and ode as Score-SDE (noise_removal: pc returns the last
# move's mean, ode adds the Tweedie step). heun has no such setting: EDM's schedule itself ends at sigma = 0.
DENOISE_DEFAULTS = {name: spec.settings().denoise for name, spec in SPECS.items()
                    if "denoise" in spec.keys()}


@dataclass
class SamplerSettings:
    """The sampler to run (``sampler``), where its chains start (``init``: auto = the sampler's own start,
    Uniform[0, 1] for ald, the prior N(0, sigma_max^2 I) for the others) and every registered sampler's settings in
    a section of its own (``ald``, ``pc``, ``ode``, ``heun``: ``AldSettings``, ...), at its paper's defaults.
    ``SamplerSettings.of("heun", n_steps=35)`` builds one for a sampler."""

    sampler: str = "ald"
    init: str = "auto"
    for _name, _spec in SPECS.items():  # one section per registered sampler, from the registry
        __annotations__[_name] = _spec.settings
        vars()[_name] = field(default_factory=_spec.settings)
    del _name, _spec

    @classmethod
    def of(cls, name: str = "ald", init: str = "auto", **keys):
        """Settings that run sampler ``name`` with ``keys`` set in its section (the others at their defaults); a key
        the sampler does not read is an InputError naming the samplers that do."""
        spec = sampler_spec(name)
        return cls(sampler=name, init=init, **{name: spec.settings(**_section_keys(spec, keys))})

    @classmethod
    def from_flat(cls, sampler: str = "ald", init: str = "auto", **values):
        """Settings from keys of the old flat layout (``SamplerSettings.from_flat("heun", n_steps=7, s_max=0.1)``),
        each going to every sampler section that reads it (``nest_flat_keys``), as an old config did."""
        nested, _ = nest_flat_keys(values)
        unknown = [key for key in nested if key not in SPECS]
        if unknown:
            raise InputError(f"{unknown[0]}: no sampler has a setting {unknown[0]!r}")
        return cls(sampler=sampler, init=init, **{name: SPECS[name].settings(**keys) for name, keys in nested.items()})

    @property
    def section(self):
        """The chosen sampler's settings."""
        return getattr(self, self.sampler)


def readers(key: str) -> list[str]:
    """The samplers with a setting ``key``."""
    return [name for name, spec in SPECS.items() if key in spec.keys()]


def not_read(key: str, sampler: str, what: str | None = None, noun: str = "a setting") -> str:
    """The one line for a setting the chosen sampler does not read: 'X is a setting of the ald sampler, not heun'
    (``what`` names X, e.g. an option's flag; ``noun`` what X is)."""
    what = what or key
    found = readers(key)
    if not found:
        return f"{what}: no sampler has a setting {key!r} (samplers: {', '.join(SAMPLERS)})"
    return f"{what} is {noun} of the {', '.join(found)} sampler{'s' if len(found) > 1 else ''}, not {sampler}"


def _section_keys(spec: SamplerSpec, keys: Mapping) -> dict:
    """``keys`` checked against the spec's settings."""
    for key in keys:
        if key not in spec.keys():
            raise InputError(not_read(key, spec.name))
    return dict(keys)


def sampler_spec(name_or_settings) -> SamplerSpec:
    """The registry's spec of a sampler name or of the sampler a settings object names."""
    name = getattr(name_or_settings, "sampler", name_or_settings)
    if name not in SPECS:
        raise InputError(f"sampling.sampler: unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SPECS[name]


def problems(s) -> list[tuple[str, str]]:
    """(key, message) for every setting out of range, keys relative to ``sampling``; empty when all are valid."""
    found = []
    if s.sampler not in SPECS:
        found.append(("sampler", f"unknown sampler {s.sampler!r}; choose from {', '.join(SAMPLERS)}"))
    if s.init not in INITS:
        found.append(("init", f"must be one of {INITS}, got {s.init!r}"))
    for name, spec in sorted(SPECS.items(), key=lambda item: item[0] != s.sampler):  # the chosen sampler's first
        section = getattr(s, name)
        if not isinstance(section, spec.settings):
            found.append((name, f"must be {spec.settings.__name__}, got {type(section).__name__}"))
            continue
        found += [(f"{name}.{key}", message) for key, message in section.problems()]
    return found


def validate(s) -> None:
    """Raise InputError naming the first setting out of range (``sampling.<sampler>.<key>: ...``)."""
    found = problems(s)
    if found:
        key, message = found[0]
        raise InputError(f"sampling.{key}: {message}")


def denoise_for(s) -> bool:
    """Whether the chosen sampler ends noise-free by a final step of its own (False for heun, which has none)."""
    return bool(getattr(getattr(s, s.sampler), "denoise", False))


def used_settings(s) -> dict:
    """The settings the chosen sampler reads, as a plain dict (for JSON records)."""
    return {"sampler": s.sampler, **dataclasses.asdict(getattr(s, s.sampler)), "init": s.init}


def schedule(s, ladder: torch.Tensor, frames: bool = False) -> torch.Tensor:
    """The sigma schedule the sampler runs on, from the model's ladder (float32, on the ladder's device).

    ``frames``: a callback watches, so an ode run gets intermediate output points (no extra evaluations)."""
    return sampler_spec(s).schedule(getattr(s, s.sampler), ladder, frames)


def check_fits(score_fn, s, ladder: torch.Tensor) -> None:
    """Refuse up front a sampler the network cannot run: one that evaluates any sigma (heun, ode) on a
    level-conditioned net, or a schedule off that net's ladder (pc with n_steps)."""
    validate(s)
    spec = sampler_spec(s)
    if spec.needs == "any_sigma":
        require_any_sigma(score_fn, f"the {spec.name} sampler")
    else:
        section = getattr(s, s.sampler)
        changed = [f"{f.name}={getattr(section, f.name)}" for f in dataclasses.fields(section)
                   if getattr(section, f.name) != f.default]
        what = f"{spec.name} with {', '.join(changed[:3])}" if changed else f"{spec.name} at its defaults"
        require_on_ladder(score_fn, spec.schedule(section, ladder, False), what)


def expected_nfe(s, ladder: torch.Tensor) -> int | None:
    """Network evaluations per chain, known ahead for every sampler but an adaptive one (None)."""
    return sampler_spec(s).expected_nfe(getattr(s, s.sampler), ladder)


def callback_count(s, ladder: torch.Tensor) -> int:
    """How many times ``run_sampler`` calls a callback it is given."""
    return sampler_spec(s).callback_count(getattr(s, s.sampler), ladder)


def frame_steps(s, ladder: torch.Tensor, most: int = 10) -> set[int]:
    """The callbacks (1-based counts) at which a progression keeps a frame: the sampler's own choice (ald: the end
    of every level), else up to ``most`` evenly spaced."""
    spec = sampler_spec(s)
    if spec.frame_steps is not None:
        return spec.frame_steps(getattr(s, s.sampler), ladder)
    total = callback_count(s, ladder)
    count = min(total, most)
    return {-(-total * (k + 1) // count) for k in range(count)}


def initial_state(s, shape, ladder: torch.Tensor, generator: Generators = None, device=None) -> torch.Tensor:
    """x at the start: Uniform[0, 1] or N(0, sigma_max^2 I), per ``init`` (auto: the sampler's own)."""
    init = s.init if s.init != "auto" else sampler_spec(s).init
    if init == "uniform":
        return uniform_init(shape, generator, device)
    return prior_init(shape, float(ladder[0]), generator, device)


def run_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    ladder: torch.Tensor,
    s,
    generator: Generators = None,
    callback: Callback | None = None,
    constraint: Constraint | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Run the sampler ``s.sampler`` names from x on the schedule it takes from ``ladder``; returns float32 x.

    ``callback(i, sigma_next, x)`` is called ``callback_count`` times. ``constraint`` (inpainting) works with the
    samplers whose spec takes one (ald, pc). ``info`` receives ``nfe`` and the sampler's other figures.
    """
    validate(s)
    spec = sampler_spec(s)
    if constraint is not None and not spec.inpainting:
        takers = ", ".join(name for name, other in SPECS.items() if other.inpainting)
        raise InputError(f"inpainting works with the {takers} samplers, not {spec.name}")
    settings = getattr(s, s.sampler)
    sigmas = spec.schedule(settings, ladder, callback is not None)
    return spec.run(score_fn, x, sigmas=sigmas, settings=settings, generator=generator, callback=callback,
                    constraint=constraint, info=info)


def settings_from(values, sampler: str | None = None, init: str | None = None, **keys) -> SamplerSettings:
    """A SamplerSettings copied from any object with its attributes (e.g. the config's sampling section), with
    ``sampler`` and ``init`` changed and ``keys`` set in the chosen sampler's section (strictly: a key it does not
    read is an InputError)."""
    name = values.sampler if sampler is None else sampler
    spec = sampler_spec(name)
    sections = {n: dataclasses.replace(getattr(values, n)) for n in SPECS}
    sections[name] = dataclasses.replace(sections[name], **_section_keys(spec, keys))
    return SamplerSettings(sampler=name, init=values.init if init is None else init, **sections)


# Keys of the flat layout whose None meant "the sampler's default" (denoise: its paper's end; n_steps: heun's 18).
LEGACY_NONE_IS_DEFAULT = ("denoise", "n_steps")


# The samplers of the old single settings object: only their sections can receive its flat keys (a sampler added
# later, with the sections, never had any: an old preset's s_noise was ald's temperature, not a new sampler's).
FLAT_LAYOUT_SAMPLERS = ("ald", "pc", "ode", "heun")


def legacy_targets(key: str) -> list[tuple[str, str]]:
    """(sampler, field) for every section that reads the flat key ``key`` (under its own name or a spec's rename)."""
    found = []
    for name in FLAT_LAYOUT_SAMPLERS:
        spec = SPECS[name]
        target = spec.legacy.get(key, key)
        if target in spec.keys():
            found.append((name, target))
    return found


def nest_flat_keys(sampling: Mapping) -> tuple[dict, list[str]]:
    """(the ``sampling`` mapping in the sectioned layout, the flat keys moved).

    The old layout held every sampler's settings flat in one object; each flat key goes to every section that reads
    it, so an old config or checkpoint samples exactly as before (``s_max: 0.11`` bounded ald's s_noise and heun's
    churn alike, so both sections get it). A None that meant "the sampler's default" (``LEGACY_NONE_IS_DEFAULT``)
    becomes each section's default. Keys given in a section win over flat ones of the same mapping; unknown keys
    stay (and are refused where the mapping is checked).
    """
    nested: dict = {}
    moved = []
    for key, value in sampling.items():
        targets = [] if key in COMMON or key in SPECS else legacy_targets(key)
        if not targets:
            continue
        moved.append(key)
        for name, target in targets:
            if value is None and key in LEGACY_NONE_IS_DEFAULT:
                value_here = SPECS[name].settings.__dataclass_fields__[target].default
            else:
                value_here = value
            nested.setdefault(name, {})[target] = value_here
    out = {key: value for key, value in sampling.items() if key not in moved and key not in nested}
    for name, values in nested.items():
        given = sampling.get(name)
        out[name] = {**values, **given} if isinstance(given, Mapping) else values if given is None else given
    for name in SPECS:
        if name in sampling and name not in out:
            out[name] = sampling[name]
    return out, moved
