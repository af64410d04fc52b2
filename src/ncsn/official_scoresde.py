"""Score-SDE's checkpoints (yang-song/score_sde_pytorch): NCSN++ weights, with their EMA, loaded without running code.

The layout is ``torch.save({'optimizer': ..., 'model': DataParallel state_dict ('module.' names), 'ema': {'decay',
'num_updates', 'shadow_params': [tensors]}, 'step': int})``. ``shadow_params`` lists the model's trainable
parameters in registration order (not the fixed Fourier W, not the ``sigmas`` buffer); the EMA weights are the
default. The optimizer entry can hold numpy scalars (the official warm-up writes the learning rate as
numpy.float64), so loading admits numpy's scalar and dtype types, under numpy 1's pickled name
(``numpy.core.multiarray.scalar``) and numpy 2's (``numpy._core.multiarray.scalar``), and nothing else beyond what
``weights_only`` allows. The network's settings are read off its names and shapes (attention sits at 16 px in every
release, which gives the image size); its noise ladder, hence sigma_max, is the file's own ``sigmas``.
"""

from __future__ import annotations

import re
from dataclasses import asdict

import torch

from .config import RunConfig, SamplingConfig
from .data import DATASETS, DataConfig
from .errors import CheckpointError
from .score_model import ModelConfig, NCSNppConfig, ScoreModel, build_score_model

ATTENTION_PX = 16  # every Score-SDE NCSN++ release attends at 16 px
SNR = {32: 0.16, 256: 0.075, 1024: 0.15}  # the official PC corrector's snr per image size


def is_scoresde(state) -> bool:
    """Whether a loaded object has Score-SDE's checkpoint layout."""
    return (isinstance(state, dict) and {"model", "ema", "step"} <= set(state) and isinstance(state["model"], dict)
            and any(isinstance(k, str) and re.match(r"^(module\.)?all_modules\.", k) for k in state["model"]))


def _blocks(weights: dict) -> list[tuple[int, str, tuple]]:
    """(index, kind, shapes) of each entry of ``all_modules``: res(net), attn, combine, down (FIR conv), or plain."""
    found: dict[int, dict] = {}
    for name, value in weights.items():
        m = re.match(r"^all_modules\.(\d+)\.(.+)$", name)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = tuple(value.shape)
    out = []
    for index in sorted(found):
        keys = found[index]
        if "Conv_1.weight" in keys:
            out.append((index, "res", keys["Conv_0.weight"][:2] + (("Conv_2.weight" in keys),)))
        elif "NIN_0.W" in keys:
            out.append((index, "attn", ()))
        elif "Conv2d_0.weight" in keys:
            out.append((index, "down", ()))
        elif "Conv_0.weight" in keys:
            out.append((index, "combine", keys["Conv_0.weight"][:2]))
        else:
            out.append((index, "plain", keys.get("weight", ())))
    return out


def infer_model(weights: dict, sigmas: torch.Tensor, source) -> ModelConfig:
    """The ModelConfig of an NCSN++ state_dict (names without ``module.``) and its ladder."""
    fourier = "all_modules.0.W" in weights
    first = weights.get("all_modules.0.weight" if not fourier else "all_modules.1.weight")
    if first is None or first.dim() != 2:
        raise CheckpointError(f"{source}: no NCSN++ embedding layers at all_modules.0/1; not a Score-SDE NCSN++ file")
    nf = first.shape[0] // 4
    blocks = _blocks(weights)
    res = [b for b in blocks if b[1] == "res"]
    # a block with a 1x1 skip but equal channels resamples: L - 1 of them down, L - 1 up
    resampling = [i for i, (_, _, (out, inp, skip)) in enumerate(res) if skip and out == inp]
    levels = len(resampling) // 2 + 1
    per_level = (len(res) - 3 * levels) // (2 * levels) if levels else 0
    if per_level < 1 or 2 * levels * per_level + 3 * levels != len(res):
        raise CheckpointError(f"{source}: {len(res)} residual blocks fit no NCSN++ layout")
    ch_mult = [res[level * (per_level + 1)][2][0] // nf for level in range(levels)]
    attn_level, seen = None, 0  # the level after whose blocks the first attention sits
    for _, kind, _ in blocks:
        if kind == "res":
            seen += 1
        elif kind == "attn":
            attn_level = (seen - 1) // (per_level + 1)
            break
    if attn_level is None:
        raise CheckpointError(f"{source}: no attention block; every Score-SDE NCSN++ attends at {ATTENTION_PX} px")
    kinds = {kind for _, kind, _ in blocks}
    in_channels = next(shape[1] for _, kind, shape in blocks if kind == "plain" and len(shape) == 4)
    heads = [shape for _, kind, shape in blocks if kind == "plain" and len(shape) == 4 and shape[0] == in_channels]
    settings = NCSNppConfig(
        image_size=ATTENTION_PX * 2**attn_level, ch_mult=ch_mult, num_res_blocks=per_level,
        attn_resolutions=[ATTENTION_PX], dropout=0.0 if "combine" in kinds else 0.1,
        progressive="output_skip" if len(heads) > 1 else "none",
        progressive_input="residual" if "down" in kinds else ("input_skip" if "combine" in kinds else "none"),
        embedding="fourier" if fourier else "positional",
    )
    ends = [float(f"{float(v):.6g}") for v in (sigmas[0], sigmas[-1])]  # exp(log 0.01) is 0.01 give or take an ulp
    return ModelConfig(arch="ncsnpp", in_channels=int(in_channels), ngf=int(nf), sigma_max=ends[0], sigma_min=ends[1],
                       num_scales=len(sigmas), scale_by_sigma=True, ncsnpp=settings)


def variant_name(m: ModelConfig) -> str:
    p = m.ncsnpp
    known = {(32, 4): "CIFAR-10 cont.", (32, 8): "CIFAR-10 cont. deep", (256, 2): "256 px", (1024, 1): "FFHQ-1024"}
    name = known.get((p.image_size, p.num_res_blocks), f"{p.image_size} px")
    return name.replace("cont.", "discrete") if p.embedding == "positional" else name


def _ladder(sigmas, source) -> torch.Tensor:
    ok = torch.is_tensor(sigmas) and sigmas.dim() == 1 and len(sigmas) >= 2
    if not ok or not bool((sigmas > 0).all() and (sigmas[1:] < sigmas[:-1]).all()):
        raise CheckpointError(f"{source}: module.sigmas is missing or not a decreasing ladder of positive noise levels")
    return sigmas.detach().double()


def ema_weights(model: ScoreModel, raw: dict, ema, source) -> dict:
    """The raw state_dict with the trainable parameters replaced, in registration order, by ``shadow_params``."""
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if not isinstance(shadow, list) or not all(torch.is_tensor(t) for t in shadow):
        raise CheckpointError(f"{source}: its ema entry has no shadow_params list of tensors; use --no-ema")
    trainable = [(name, p) for name, p in model.net.named_parameters() if p.requires_grad]
    if len(shadow) != len(trainable):
        raise CheckpointError(f"{source}: ema shadow_params holds {len(shadow)} tensors but this NCSN++ has "
                            f"{len(trainable)} trainable parameters; the EMA does not belong to these weights")
    out = dict(raw)
    for i, ((name, p), t) in enumerate(zip(trainable, shadow)):
        if t.shape != p.shape:
            raise CheckpointError(f"{source}: ema shadow_params[{i}] has shape {list(t.shape)}, but {name} is "
                                f"{list(p.shape)}; the EMA does not belong to these weights")
        out[name] = t
    return out


def _data_config(source, m: ModelConfig, dataset: str | None, image_size: int | None) -> DataConfig:
    size = m.ncsnpp.image_size
    if dataset is None:
        raise CheckpointError(f"{source}: a Score-SDE checkpoint does not record its dataset: pass --dataset NAME "
                            f"({', '.join(sorted(DATASETS))}; folder for the 256 and 1024 px models)")
    if dataset not in DATASETS:
        raise CheckpointError(f"--dataset: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    info = DATASETS[dataset]
    if info.channels != m.in_channels:
        raise CheckpointError(f"{source}: --dataset {dataset} has {info.channels} channel(s) but the checkpoint's "
                            f"network takes {m.in_channels}")
    if info.native_size and info.native_size < size:
        raise CheckpointError(f"{source}: --dataset {dataset} ({info.native_size} px images) is not this checkpoint's: "
                            f"it is Score-SDE's {variant_name(m)} NCSN++ at {size} px (sigma_max {m.sigma_max:g}); "
                            "use --dataset folder with its images")
    if image_size is not None and image_size != size:
        raise CheckpointError(f"{source}: --image-size {image_size}, but this NCSN++ was built for {size} px "
                            f"(it attends at {ATTENTION_PX} px)")
    return DataConfig(dataset=dataset, image_size=size, random_flip=True)


def load_scoresde(state: dict, source, ema: bool | None, dataset: str | None,
                  image_size: int | None) -> tuple[ScoreModel, RunConfig, dict]:
    """Model, config and info from a Score-SDE checkpoint; EMA weights unless ``ema`` is False."""
    raw = {k.removeprefix("module."): v for k, v in state["model"].items() if isinstance(k, str)}
    sigmas = _ladder(raw.pop("sigmas", None), source)
    model_config = infer_model(raw, sigmas, source)
    config = RunConfig(data=_data_config(source, model_config, dataset, image_size), model=model_config,
                       sampling=SamplingConfig.of("pc", snr=SNR.get(model_config.ncsnpp.image_size, 0.16),
                                                  denoise=True))
    try:
        model = build_score_model(model_config)
    except ValueError as err:
        raise CheckpointError(f"{source}: the NCSN++ its names describe cannot be built ({err})") from None
    expected = {k: tuple(v.shape) for k, v in model.net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in raw.items()}
    if expected != found:
        odd = sorted(set(expected.items()) ^ set(found.items()))[:2]
        raise CheckpointError(f"{source}: its weights do not fit the inferred NCSN++ ({asdict(model_config.ncsnpp)}); "
                            f"first differences {odd}")
    if ema and state.get("ema") is None:
        raise CheckpointError(f"{source}: this Score-SDE checkpoint has no EMA weights; use --no-ema")
    use_ema = state.get("ema") is not None if ema is None else ema
    weights = ema_weights(model, raw, state["ema"], source) if use_ema else raw
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        which = "EMA weights" if use_ema else "weights"
        raise CheckpointError(f"{source}: its {which} hold non-finite values (first in {bad}); the run had diverged")
    model.net.load_state_dict(weights, strict=True)
    model.sigmas.copy_(sigmas.float())
    step = state.get("step")
    info = {"weights": "scoresde-ema" if use_ema else "scoresde", "step": int(step) if isinstance(step, int) else None,
            "variant": variant_name(model_config)}
    return model, config, info
