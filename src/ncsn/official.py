"""The checkpoint layouts of the official NCSN (ermongroup/ncsn) and NCSNv2 (ermongroup/ncsnv2) code, by name.

NCSN's annealed runner saves ``[model_state_dict, optimizer_state_dict]``; NCSNv2's saves ``[model, optimizer,
epoch, step]`` plus the EMA shadow (parameters only, without ``module.`` and without ``sigmas``) when EMA is on.
Model names carry DataParallel's ``module.`` prefix; NCSNv2 keeps its noise ladder in ``module.sigmas``. The
network and its width are read off the names and shapes. Neither layout records its dataset or image size, so the
caller names them; the official config.yml is never read (it needs an unsafe YAML loader).
"""

from __future__ import annotations

import torch

from .checkpoint import CheckpointError, check_finite
from .config import RunConfig, SamplingConfig
from .data import DATASETS, DataConfig
from .score_model import ModelConfig, ScoreModel, build_score_model
from .sigmas import ncsnv2_step_lr

KINDS = {
    "ncsn_v1": "NCSN v1 (CondRefineNetDilated)",
    "ncsnv2": "NCSNv2",
    "ncsnv2_deeper": "NCSNv2Deeper",
    "ncsnv2_deepest": "NCSNv2Deepest",
    "baseline": "NCSN BaselineRunner (unconditional RefineNetDilated)",
}
# Image sizes of the official releases, for the datasets this package reads; other pairs need --image-size.
OFFICIAL_SIZES = {
    ("ncsn_v1", "mnist"): 28,
    ("ncsn_v1", "fashion_mnist"): 28,
    ("ncsn_v1", "cifar10"): 32,
    ("ncsn_v1", "celeba"): 32,
    ("ncsnv2", "cifar10"): 32,
    ("ncsnv2", "celeba"): 64,
}
# NCSNv2's sampling settings (T, eps) per released ladder (L, sigma_1): CIFAR-10, CelebA, church, bedroom/tower, FFHQ.
V2_SAMPLING = {(232, 50): (5, 6.2e-6), (500, 90): (5, 3.3e-6), (788, 140): (4, 4.9e-6), (1086, 190): (3, 1.8e-6),
               (2311, 348): (3, 9e-7)}
V2_DEFAULT_STEPS = 5


def network_kind(weights: dict) -> str | None:
    """Which official network a state_dict (names without ``module.``) belongs to, or None."""
    if not torch.is_tensor(weights.get("begin_conv.weight")) or weights["begin_conv.weight"].dim() != 4:
        return None
    if "normalizer.embed.weight" in weights:
        return "ncsn_v1"
    if "normalizer.alpha" not in weights:
        return None
    if "refine1.adapt_convs.0.1_1_norm.alpha" in weights:
        return "baseline"
    if "res31.0.conv1.weight" in weights:
        return "ncsnv2_deepest"
    return "ncsnv2_deeper" if "res5.0.conv1.weight" in weights else "ncsnv2"


def _strip(weights: dict) -> dict:
    return {(k.removeprefix("module.") if isinstance(k, str) else k): v for k, v in weights.items()}


def official_state_dict(model: ScoreModel, prefix: str = "module.") -> dict:
    """The model's tensors under the official names: the network's, plus ``sigmas`` for NCSNv2 networks."""
    names = {} if model.net.level_conditioned else {"sigmas": model.sigmas}
    return {f"{prefix}{k}": v for k, v in {**names, **model.net.state_dict()}.items()}


def describe_state_dict(weights: dict) -> str:
    """A bare state_dict, described for an error message: which network, and how to make it loadable."""
    kind = network_kind(_strip(weights))
    if kind in ("ncsn_v1", "ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest"):
        layout = "[state_dict, {}]" if kind == "ncsn_v1" else "[state_dict, {}, 0, 0] (with its sigmas entry)"
        return (f"a bare state_dict of an official {KINDS[kind]} network ({len(weights)} tensors), not a checkpoint; "
                f"torch.save({layout}) makes it the official layout, which loads")
    if kind == "baseline":
        return f"a bare state_dict of the {KINDS[kind]} ({len(weights)} tensors), not a noise-conditional model"
    names = ", ".join(repr(k) for k in list(weights)[:3])
    more = ", ..." if len(weights) > 3 else ""
    return f"a bare state_dict of {len(weights)} tensor(s) ({names}{more}), not an ncsn or official NCSN checkpoint"


def load_official(state: list, source, ema: bool | None, dataset: str | None,
                  image_size: int | None) -> tuple[ScoreModel, RunConfig, dict]:
    """Model, config and info from an official checkpoint (a list); EMA weights by default where the file has them."""
    weights = _strip(state[0]) if state and isinstance(state[0], dict) else {}
    kind = network_kind(weights)
    if kind == "baseline":
        raise CheckpointError(
            f"{source}: an official {KINDS[kind]} checkpoint: one network for the single noise level 0.01, not a "
            "noise-conditional score model, so annealed Langevin dynamics cannot sample it"
        )
    v1, v2 = kind == "ncsn_v1" and len(state) == 2, kind not in (None, "ncsn_v1") and len(state) in (4, 5)
    if not (v1 or v2):
        names = list(state[0])[:2] if state and isinstance(state[0], dict) else []
        found = KINDS.get(kind, f"names like {', '.join(map(repr, names))}" if names else "no model state_dict first")
        raise CheckpointError(
            f"{source}: a list of {len(state)} entries in no official layout known here ({found}); expected NCSN's "
            "[model, optimizer] or NCSNv2's [model, optimizer, epoch, step(, ema)]"
        )
    ngf, channels = (int(v) for v in weights["begin_conv.weight"].shape[:2])
    if v1:
        model_config = ModelConfig(arch=kind, in_channels=channels, ngf=ngf,
                                   num_scales=int(weights["normalizer.embed.weight"].shape[0]))
        if ema:
            raise CheckpointError(f"{source}: official NCSN v1 checkpoints hold no EMA weights; use --no-ema")
        net_weights, use_ema, sampling = weights, False, SamplingConfig()
    else:
        sigmas = _ladder(weights.pop("sigmas", None), source)
        model_config = ModelConfig(arch=kind, in_channels=channels, ngf=ngf, sigma_max=float(sigmas[0]),
                                   sigma_min=float(sigmas[-1]), num_scales=len(sigmas), scale_by_sigma=True)
        has_ema = len(state) == 5 and isinstance(state[4], dict)
        if ema and not has_ema:
            raise CheckpointError(f"{source}: this official NCSNv2 checkpoint has no EMA weights; use --no-ema")
        use_ema = has_ema if ema is None else ema
        net_weights = _strip(state[4]) if use_ema else weights
        sampling = v2_sampling(sigmas)
    config = RunConfig(data=_data_config(source, kind, channels, dataset, image_size), model=model_config,
                       sampling=sampling)
    check_finite(net_weights, source, "EMA weights" if use_ema else "weights")
    model = build_score_model(model_config)
    try:
        model.net.load_state_dict(net_weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])[:200]
        which = "EMA weights" if use_ema else "weights"
        raise CheckpointError(f"{source}: its {which} do not fit the {KINDS[kind]} network ({detail})") from None
    if not v1:
        model.sigmas.copy_(sigmas)
    if config.data.image_size % model.net.size_multiple:
        raise CheckpointError(f"{source}: --image-size {config.data.image_size} does not fit {KINDS[kind]}: "
                              f"it must be a multiple of {model.net.size_multiple}")
    label = "official-v1" if v1 else ("official-v2-ema" if use_ema else "official-v2")
    step = None if v1 else state[3]
    return model, config, {"weights": label, "step": int(step) if isinstance(step, int) else None}


def _ladder(sigmas, source) -> torch.Tensor:
    """The ladder stored in ``module.sigmas``: 1-D, at least two levels, positive and decreasing."""
    if sigmas is None:
        raise CheckpointError(f"{source}: an NCSNv2 network without its module.sigmas ladder; not an official file")
    ok = torch.is_tensor(sigmas) and sigmas.dim() == 1 and len(sigmas) >= 2
    if not ok or not bool((sigmas > 0).all() and (sigmas[1:] < sigmas[:-1]).all()):
        raise CheckpointError(f"{source}: module.sigmas is not a decreasing ladder of positive noise levels")
    return sigmas.detach().float()


def v2_sampling(sigmas: torch.Tensor) -> SamplingConfig:
    """NCSNv2's defaults: final denoising on, and T and eps of the official config for a released ladder; for any
    other ladder T = 5 and eps from the step-size rule (technique 4) at its mean ratio."""
    released = V2_SAMPLING.get((len(sigmas), round(float(sigmas[0]))))
    if released is None:
        ratio = (float(sigmas[0]) / float(sigmas[-1])) ** (1 / (len(sigmas) - 1))
        released = V2_DEFAULT_STEPS, ncsnv2_step_lr(V2_DEFAULT_STEPS, float(sigmas[-1]), ratio)
    return SamplingConfig.of("ald", n_steps_each=released[0], step_lr=released[1], denoise=True)


def _data_config(source, kind: str, channels: int, dataset: str | None, image_size: int | None) -> DataConfig:
    """The data section an official file cannot say: the dataset named by the caller, at its official size."""
    if dataset is None:
        raise CheckpointError(
            f"{source}: official {KINDS[kind]} checkpoints do not record their dataset: pass --dataset NAME "
            f"({', '.join(sorted(DATASETS))})"
        )
    if dataset not in DATASETS:
        raise CheckpointError(f"--dataset: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if DATASETS[dataset].channels != channels:
        raise CheckpointError(f"{source}: --dataset {dataset} has {DATASETS[dataset].channels} channel(s) but the "
                              f"checkpoint's network takes {channels}")
    size = image_size or OFFICIAL_SIZES.get((kind, dataset))
    if size is None:
        raise CheckpointError(f"{source}: pass --image-size: {KINDS[kind]} weights do not record one and there is no "
                              f"official {dataset} release of this network to take it from")
    if size < 4 or size % 2:
        raise CheckpointError(f"--image-size must be even and >= 4, got {size}")
    return DataConfig(dataset=dataset, image_size=size, random_flip=channels == 3, dequantize=kind == "ncsn_v1")
