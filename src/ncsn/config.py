"""Run configuration: typed sections validated by OmegaConf, named YAML presets and dotted overrides.

The model section is exactly the score model's constructor schema (``ModelConfig``); the resolved config is saved
in the run folder and inside every checkpoint, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .data import DATASETS, FOLDER_CHANNELS, DataConfig
from .errors import InputError
from .losses import OBJECTIVES
from .lr_schedule import LR_SCHEDULES
from .preconditioning import EDM_P_MEAN, EDM_P_STD, PRECONDITIONINGS
from .nets.ncsnpp import problems as ncsnpp_problems
from .samplers import SPECS, SamplerSettings, nest_flat_keys
from .samplers.settings import not_read
from .samplers.settings import problems as sampler_problems
from .score_model import ARCHITECTURES, ModelConfig, NCSNppConfig


class ConfigError(InputError):
    """A config problem, reported in one line that names the key."""


class FlatSamplingWarning(FutureWarning):
    """A config, run folder or checkpoint in the old flat ``sampling`` layout (mapped onto the sampler sections)."""


@dataclass
class TrainingConfig:
    """Optimisation, logging and checkpoint cadence (reference: Adam 1e-3, batch 128, 200k iterations)."""

    n_iters: int = 200_000
    batch_size: int = 128
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    anneal_power: float = 2.0  # the ladder objective's sigma^p weight
    objective: str = "ladder"  # how sigma is drawn and weighted: ladder, ve (Score-SDE) or edm (ncsn.losses)
    reduce_mean: bool = False  # ve/edm/ladder: mean over dimensions instead of the (½) sum
    likelihood_weighting: bool = False  # ve: Score-SDE's g(t)^2 weighting
    t_eps: float = 1e-5  # ve: t ~ U(t_eps, 1)
    p_mean: float = EDM_P_MEAN  # edm: ln sigma ~ N(p_mean, p_std^2), in [0, 1] units (EDM's -1.2 - ln 2)
    p_std: float = EDM_P_STD
    grad_clip: float | None = None
    lr_schedule: str = "constant"  # constant, cosine or linear decay to lr_min over the steps after the warm-up
    lr_warmup: int = 0
    lr_min: float = 0.0
    ema: bool = False
    ema_rate: float = 0.999
    ema_warmup: bool = False  # Score-SDE's decay min(ema_rate, (1 + n)/(10 + n)) at the n-th update
    seed: int = 1234
    log_every: int = 100
    eval_every: int = 100
    eval_batch_size: int = 128
    checkpoint_every: int = 5000
    snapshot_every: int = 5000
    keep_last: int = 3
    sample_every: int = 5000
    sample_n: int = 64
    tensorboard: bool = False
    time_budget_s: float | None = None  # stop (checkpointed, resumable) once the loop has run this many seconds


@dataclass
class SamplingConfig(SamplerSettings):
    """The sampler and its settings (``ncsn.samplers.SamplerSettings``: ``sampler`` (ald by default), ``init`` and
    one section per sampler, ``sampling.ald.step_lr``, ``sampling.heun.s_churn``, ...) used by `ncsn sample`,
    `inpaint`, `eval`, training-time grids and the demo, plus the number of chains per batch."""

    batch_size: int = 100


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def named_configs() -> list[str]:
    """Names of the presets shipped with the package."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("ncsn.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(name_or_path: str) -> dict:
    path = Path(name_or_path)
    preset = name_or_path in named_configs() and not path.is_file()  # a folder named like a preset is no config file
    if not preset and (path.suffix in (".yaml", ".yml") or path.exists()):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path}: not a YAML text file (it is not UTF-8 text)") from None
    elif name_or_path in named_configs():
        text = resources.files("ncsn.configs").joinpath(f"{name_or_path}.yaml").read_text()
    else:
        raise ConfigError(f"unknown config {name_or_path!r}: use one of {named_configs()} or a YAML file")
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {name_or_path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {name_or_path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))


def _check_sections(layer) -> None:
    """A section given a plain value (``--set training=5``) is named as such, before OmegaConf's merge error."""
    for name in SECTIONS:
        value = layer.get(name) if hasattr(layer, "get") else None
        if value is not None and not hasattr(value, "keys"):
            raise ConfigError(f"config key '{name}': is a section; set its keys ({name}.KEY=VALUE), got {value!r}")


def _merge(base, *layers):
    for layer in layers:
        _check_sections(layer)
    try:
        return OmegaConf.merge(base, *layers)
    except ConfigKeyError as err:
        raise ConfigError(f"unknown config key '{err.full_key}'") from None
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        where = f"config key '{err.full_key}'" if err.full_key else "config"
        raise ConfigError(f"{where}: {message}") from None


def from_dict(values: dict, overrides: list[str] | tuple[str, ...] = (), data_root_needed: bool = True) -> RunConfig:
    """Validate a plain nested dict (e.g. one read back from a checkpoint), then ``key=value`` overrides.

    ``data_root_needed=False`` accepts a folder dataset without data.root: a model's weights and config (an export
    of an official file made with ``--dataset folder``) sample without any images; reading them still needs it."""
    return _build([values], overrides, data_root_needed)


def load_config(name_or_path: str = "digits", overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Preset or YAML file, then ``key=value`` overrides (``training.lr=2e-4``), validated."""
    return _build([_read_yaml(name_or_path)], overrides)


def _sectioned(layer, moved: list) -> dict:
    """A layer (plain dict or DictConfig) with a flat-layout ``sampling`` mapped onto the sampler sections (the flat
    keys moved are added to ``moved``), and every sampler section's keys checked (one line naming who reads one)."""
    layer = OmegaConf.to_container(layer) if OmegaConf.is_config(layer) else dict(layer)
    sampling = layer.get("sampling")
    if not isinstance(sampling, dict):
        return layer
    sampling, flat_keys = nest_flat_keys(sampling)
    moved += flat_keys
    for name, spec in SPECS.items():
        section = sampling.get(name)
        for key in section if isinstance(section, dict) else ():
            if key not in spec.keys():
                raise ConfigError(f"config key 'sampling.{name}.{key}': {not_read(key, name, key)}")
    return {**layer, "sampling": sampling}


def _build(layers: list, overrides, data_root_needed: bool = True) -> RunConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        layers.append(OmegaConf.from_dotlist([item]))
    for layer in layers:
        _check_sections(layer)
    moved: list = []
    layers = [_sectioned(layer, moved) for layer in layers]
    if moved:
        keys = list(dict.fromkeys(moved))
        keys = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        warnings.warn(f"flat sampling keys ({keys}) are deprecated: mapped onto the sampler sections "
                      "(sampling.<sampler>.<key>, e.g. sampling.ald.step_lr)", FlatSamplingWarning, stacklevel=3)
    config = _resolve(OmegaConf.to_object(_merge(OmegaConf.structured(RunConfig), *layers)))
    validate(config, data_root_needed)
    return config


def _resolve(config: RunConfig) -> RunConfig:
    """Folder images are converted to the model's channels unless data.channels is set (then the two must agree);
    NCSN++ is built for data.image_size unless model.ncsnpp.image_size is set (then the two must agree)."""
    if config.data.dataset == "folder" and config.data.channels is None:
        config.data.channels = config.model.in_channels
    if config.model.arch == "ncsnpp" and config.model.ncsnpp.image_size is None:
        config.model.ncsnpp.image_size = config.data.image_size
    return config


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def flat(config: RunConfig) -> dict:
    """{'section.key': value} for every field (nested sections as 'section.sub.key')."""
    def walk(prefix: str, values: dict):
        for key, value in values.items():
            yield from walk(f"{prefix}{key}.", value) if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    return dict(walk("", to_dict(config)))


def changes(old: RunConfig, new: RunConfig) -> dict[str, list]:
    """{'section.key': [old, new]} for every field that differs, in field order."""
    a, b = flat(old), flat(new)
    return {key: [a[key], b[key]] for key in a if a[key] != b[key]}


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _validate_data(d, m, root_needed: bool = True) -> None:
    """Channels the images can give, the folder dataset's root, crop, split and memory settings."""
    if d.dataset == "folder":
        _check(d.root is not None or not root_needed, "data.root", "the folder dataset needs data.root=DIR (a folder of images)")
        _check(m.in_channels in FOLDER_CHANNELS, "model.in_channels",
               f"folder images convert to 1 (grey) or 3 (RGB) channels, got {m.in_channels}")
        _check(d.channels == m.in_channels, "data.channels",
               f"must equal model.in_channels ({m.in_channels}), got {d.channels}")
    else:
        channels = DATASETS[d.dataset].channels
        has = f"{d.dataset} has {channels} channel(s)"
        _check(m.in_channels == channels, "model.in_channels", f"{has}, got {m.in_channels}")
        _check(d.channels in (None, channels), "data.channels", f"{has}, got {d.channels}")
    _check(d.center_crop is None or d.center_crop >= 1, "data.center_crop",
           f"must be >= 1 or null, got {d.center_crop}")
    _check(d.center_crop is None or d.dataset in ("folder", "celeba"), "data.center_crop",
           f"applies to image files (folder, celeba), not {d.dataset}")
    _check(0 < d.test_fraction < 1, "data.test_fraction", f"must lie in (0, 1), got {d.test_fraction}")
    _check(d.memory_budget_gb >= 0, "data.memory_budget_gb", f"must be >= 0, got {d.memory_budget_gb}")
    _check(d.max_unpacked_gb > 0, "data.max_unpacked_gb", f"must be > 0, got {d.max_unpacked_gb}")
    _check(d.max_unpack_ratio >= 1, "data.max_unpack_ratio", f"must be >= 1, got {d.max_unpack_ratio}")


def _validate_objective(t, m) -> None:
    """The objective exists, its keys are in range, and a σ off the ladder reaches a network that can take it."""
    _check(t.objective in OBJECTIVES, "training.objective",
           f"unknown {t.objective!r}; choose from {', '.join(OBJECTIVES)}")
    _check(t.objective == "ladder" or not getattr(ARCHITECTURES[m.arch], "level_conditioned", True),
           "training.objective",
           f"{t.objective} draws sigma off the ladder, but {m.arch} is conditioned on ladder levels; use ladder")
    _check(not t.likelihood_weighting or t.objective == "ve", "training.likelihood_weighting",
           f"applies to objective ve, not {t.objective}")
    _check(0 < t.t_eps < 1, "training.t_eps", f"must lie in (0, 1), got {t.t_eps}")
    _check(t.p_std > 0, "training.p_std", f"must be positive, got {t.p_std}")


def _validate_ncsnpp(d, m) -> None:
    """model.ncsnpp: only for arch ncsnpp, at the data's image size, with settings NCSN++ can be built with."""
    if m.arch != "ncsnpp":
        _check(m.ncsnpp == NCSNppConfig(), "model.ncsnpp", f"applies to model.arch ncsnpp only, not {m.arch}")
        return
    p = m.ncsnpp
    _check(p.image_size == d.image_size, "model.ncsnpp.image_size",
           f"must equal data.image_size ({d.image_size}) or be null, got {p.image_size}")
    for key, value in dataclasses.asdict(p).items():
        _check(not isinstance(value, float) or math.isfinite(value), f"model.ncsnpp.{key}",
               f"must be a finite number, got {value}")
    for key, message in ncsnpp_problems(**dataclasses.asdict(p), nf=m.ngf)[:1]:
        _check(False, "model.ngf" if key == "nf" else f"model.ncsnpp.{key}", message)


def validate(config: RunConfig, data_root_needed: bool = True) -> None:
    """Values that types alone cannot rule out: impossible sigmas, sizes, rates and cadences (``from_dict`` says
    when a folder dataset may lack its root)."""
    for key, value in flat(config).items():
        _check(not isinstance(value, float) or math.isfinite(value), key, f"must be a finite number, got {value}")
    d, m, t, s = config.data, config.model, config.training, config.sampling
    _check(d.dataset in DATASETS, "data.dataset", f"unknown dataset {d.dataset!r}; choose from {sorted(DATASETS)}")
    _check(d.image_size >= 4 and d.image_size % 2 == 0, "data.image_size", f"must be even and >= 4, got {d.image_size}")
    _check(m.arch in ARCHITECTURES, "model.arch", f"unknown architecture {m.arch!r}; choose from {sorted(ARCHITECTURES)}")
    how = "divides its output by sigma" if m.arch == "ncsnpp" else "is unconditional and conditions by s = f(x)/sigma"
    _check(m.scale_by_sigma or ARCHITECTURES[m.arch].level_conditioned or m.preconditioning == "edm",
           "model.scale_by_sigma",
           f"{m.arch} {how}: set it to true")
    _validate_data(d, m, data_root_needed)
    _check(m.ngf >= 1, "model.ngf", f"must be >= 1, got {m.ngf}")
    _check(m.sigma_min > 0, "model.sigma_min", f"must be positive, got {m.sigma_min}")
    _check(m.sigma_max > m.sigma_min, "model.sigma_max", f"must exceed model.sigma_min ({m.sigma_min}), got {m.sigma_max}")
    _check(m.num_scales >= 2, "model.num_scales", f"must be >= 2, got {m.num_scales}")
    _check(m.preconditioning in PRECONDITIONINGS, "model.preconditioning",
           f"unknown {m.preconditioning!r}; choose from {', '.join(PRECONDITIONINGS)}")
    _check(m.sigma_data > 0, "model.sigma_data", f"must be positive, got {m.sigma_data}")
    _validate_objective(t, m)
    _validate_ncsnpp(d, m)
    for key in ("n_iters", "batch_size", "log_every", "eval_every", "eval_batch_size", "checkpoint_every",
                "snapshot_every", "keep_last", "sample_every", "sample_n"):
        _check(getattr(t, key) >= 1, f"training.{key}", f"must be >= 1, got {getattr(t, key)}")
    _check(t.lr > 0, "training.lr", f"must be positive, got {t.lr}")
    _check(t.lr_schedule in LR_SCHEDULES, "training.lr_schedule",
           f"unknown {t.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
    _check(t.lr_warmup >= 0, "training.lr_warmup", f"must be >= 0, got {t.lr_warmup}")
    _check(0 <= t.lr_min <= t.lr, "training.lr_min", f"must lie in [0, lr], got {t.lr_min}")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "training.beta1", f"betas must lie in [0, 1), got {t.beta1}, {t.beta2}")
    _check(t.eps > 0, "training.eps", f"must be positive, got {t.eps}")
    _check(t.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(t.time_budget_s is None or t.time_budget_s > 0, "training.time_budget_s",
           f"must be positive or null, got {t.time_budget_s}")
    _check(t.grad_clip is None or t.grad_clip > 0, "training.grad_clip", f"must be positive or null, got {t.grad_clip}")
    _check(0 < t.ema_rate < 1, "training.ema_rate", f"must lie in (0, 1), got {t.ema_rate}")
    for key, message in sampler_problems(s)[:1]:
        _check(False, f"sampling.{key}", message)
    _check(s.batch_size >= 1, "sampling.batch_size", f"must be >= 1, got {s.batch_size}")
