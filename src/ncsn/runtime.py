"""How a model runs (torch.compile, bf16 autocast, channels_last), kept apart from what the model is (its config).

Every option leaves results statistically the same: autocast touches the network only, and the Langevin and
loss arithmetic stay in float32. Left to the library (precision "auto", channels_last None) each is decided for the
device and the shapes at the first use (``resolve``); compile is used only when asked.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from . import autotune
from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
_announced: set[str] = set()


@dataclass(frozen=True)
class RuntimeOptions:
    """``compile``: torch.compile the network; ``precision``: "fp32", "bf16" (autocast for the network) or "auto"
    (see ``resolve``); ``channels_last``: True/False, or None to decide per use (see ``wants_channels_last``)."""

    compile: bool = False
    precision: str = "auto"
    channels_last: bool | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def _device_type(device) -> str:
    return torch.device(device).type


def autocast(options: RuntimeOptions, device) -> contextlib.AbstractContextManager:
    """bf16 autocast on devices that support it; a no-op for fp32 and elsewhere. "auto" must be resolved first."""
    if options.precision == "auto":
        raise ValueError("precision 'auto' is decided by ncsn.runtime.resolve before the network runs")
    device_type = _device_type(device)
    if options.precision == "bf16" and torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wants_channels_last(options: RuntimeOptions, device, image_size: int, training: bool) -> bool:
    """An explicit choice wins. Left to us (None): channels_last for sampling on a CPU from 16x16 images up, where
    oneDNN's forward convolutions run ~1.3x faster in it; not for training on a CPU (its backward convolutions are
    slower there) nor for tiny images (8x8 digits sample 1.5x slower); not on CUDA until measured there."""
    if options.channels_last is not None:
        return options.channels_last
    return not training and _device_type(device) == "cpu" and image_size >= 16


def uses_cuda_graphs(options: RuntimeOptions, device) -> bool:
    """Compiled sampling on CUDA replays the network as CUDA graphs (inductor's ``reduce-overhead`` mode)."""
    return options.compile and _device_type(device) == "cuda"


def autotunes(device) -> bool:
    """Whether training on ``device`` uses cuDNN's autotuner: on CUDA (fixed shapes, and GPU training is not bit-exact
    anyway). Sampling never does, so a seed gives the same samples from run to run."""
    return _device_type(device) == "cuda"


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """``torch.backends.cudnn.benchmark = enabled`` inside the block only; the previous value comes back after it."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def prepare_model(model, options: RuntimeOptions, device, sampling: bool = False) -> nn.Module:
    """Apply an explicit channels_last in place and return the module to call (compiled when asked; parameters are
    shared). For sampling on CUDA the compiled network is captured as CUDA graphs: the sampler calls it with fixed
    shapes. Global switches are left alone (training scopes cuDNN's autotuner with ``cudnn_benchmark``)."""
    if options.channels_last and isinstance(model, nn.Module):
        model.to(memory_format=torch.channels_last)
    if not options.compile:
        return model
    use_persistent_compile_cache()
    mode = "reduce-overhead" if sampling and uses_cuda_graphs(options, device) else None
    return torch.compile(model, mode=mode)


def use_persistent_compile_cache() -> Path:
    """Keep torch.compile's on-disk caches (inductor's FX graphs, AOT autograd's) under the ncsn cache folder
    (``$NCSN_CACHE/inductor``, default ~/.cache/ncsn/inductor) instead of inductor's default in the temp folder,
    which a reboot empties: a later run of the same network and shapes then loads its kernels instead of compiling
    them again. A ``$TORCHINDUCTOR_CACHE_DIR`` the user set wins; inductor writes its own default into that variable
    when torch._dynamo is first imported, so that value counts as unset. Returns the folder in use."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(_inductor_default_cache()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(autotune.cache_folder() / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _inductor_default_cache() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # a torch without it: nothing to tell apart
        return ""
    return default_cache_dir()


def score_function(model, options: RuntimeOptions, device):
    """The sampler's ``score_fn(x, sigma)``: the prepared network (or any score callable) under autocast.

    The score comes back in the network's dtype; the sampler adds it into its float32 chain. What is left to us
    (precision "auto", channels_last None) is settled at the first call, from x's shape (``resolve``). The wrapper
    carries the model's ``level_conditioned`` and ``sigmas``, so samplers that need sigmas off a v1 ladder refuse it
    up front, and its ``conditioning``: the second argument is passed on as it is (level indices for a raw v1
    network). A raw unconditional network gives no score without its sigma scaling, and is refused.
    """
    kind = conditioning(model)
    if kind == "none":
        raise InputError(f"{type(model).__name__} is unconditional: net(x) is not a score; sample from "
                         "ScoreModel(net, sigmas, scale_by_sigma=True), which divides it by sigma")
    state = {}

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if not state:
            state["options"] = resolved = resolve(options, model, x.device, tuple(x.shape), training=False)
            state["format"] = torch.channels_last if resolved.channels_last else torch.contiguous_format
            state["net"] = prepare_model(model, resolved, device, sampling=True)
        with autocast(state["options"], x.device):
            return state["net"](x.contiguous(memory_format=state["format"]), sigma)

    score.level_conditioned = bool(getattr(model, "level_conditioned", False))  # what the samplers check
    score.conditioning = kind
    score.sigmas = getattr(model, "sigmas", None)
    return score


def native_bf16(device) -> bool:
    """Whether ``device`` has bf16 arithmetic in hardware (see ``autotune.cpu_has_native_bf16`` for CPUs)."""
    device = torch.device(device)
    if device.type == "cpu":
        return autotune.cpu_has_native_bf16()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def announce(line: str) -> None:
    """Print a line to stderr once per process (a choice made, or a warning about one)."""
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)


def trial_key(model, shape, training: bool, channels_last: bool) -> str:
    """What a timed trial is valid for besides the machine: the work, the network, the shape, the layout, threads."""
    net = getattr(model, "net", model)
    params = sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else 0
    layout = "channels_last" if channels_last else "nchw"
    return (f"{'train' if training else 'sample'} {type(net).__name__} {params} params "
            f"{'x'.join(map(str, shape))} {layout} {torch.get_num_threads()} threads")


CONDITIONINGS = ("sigma", "levels", "none")


def conditioning(model) -> str:
    """What a network's second argument is, as it declares it: "sigma" (one float sigma per example: ``ScoreModel``,
    NCSN++-style networks, score functions), "levels" (one ladder index per example: a raw NCSN v1 network, whose
    ``level_conditioned`` is True) or "none" (``net(x)`` alone: a raw NCSNv2 network, ``level_conditioned`` False).
    A ``conditioning`` attribute wins; a callable that is not a module (a score function: there the flag only says
    which sigmas it knows) or that declares neither takes sigma."""
    declared = getattr(model, "conditioning", None)
    if declared is not None:
        if declared not in CONDITIONINGS:
            raise ValueError(f"{type(model).__name__}.conditioning must be one of {CONDITIONINGS}, got {declared!r}")
        return declared
    if not isinstance(model, nn.Module) or not hasattr(model, "level_conditioned"):
        return "sigma"
    return "levels" if model.level_conditioned else "none"


def weight_dtype(model) -> torch.dtype:
    """The floating dtype of a network's weights (float32 for a callable without any)."""
    params = model.parameters() if isinstance(model, nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def trial_workload(model, device, shape, training: bool, channels_last: bool):
    """``run(precision)``: one iteration of the run's work on a copy of the network (the run's own weights,
    gradients and layout stay untouched): forward + backward of a squared-output loss for training, a no-grad
    forward for sampling. The network is called the way it declares (``conditioning``): with ladder sigmas, level
    indices or x alone. Inputs come from a private generator, so the global random state is not used."""
    net = copy.deepcopy(model) if isinstance(model, nn.Module) else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(net, nn.Module):
        net.train(training)
        if channels_last:
            net.to(memory_format=fmt)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(shape, generator=gen, device=device).to(weight_dtype(model)).contiguous(memory_format=fmt)
    kind, sigmas = conditioning(model), getattr(model, "sigmas", None)
    if kind == "levels":
        levels = getattr(model, "num_classes", None) or (len(sigmas) if sigmas is not None else 1)
        args = (x, torch.randint(levels, (shape[0],), generator=gen, device=device))
    elif kind == "sigma" and sigmas is not None:  # on the ladder: a level-conditioned wrapper refuses any other
        args = (x, sigmas.to(device=device, dtype=torch.float32)[
            torch.randint(len(sigmas), (shape[0],), generator=gen, device=device)])
    elif kind == "sigma":
        args = (x, torch.ones(shape[0], device=device))
    else:
        args = (x,)

    def run(precision: str) -> None:
        with torch.set_grad_enabled(training), autocast(RuntimeOptions(precision=precision), device):
            out = net(*args)
        if training and out.requires_grad:  # a score function without weights has nothing to differentiate
            out.float().square().mean().backward()
            for p in net.parameters() if isinstance(net, nn.Module) else ():
                p.grad = None

    return run


def choose_precision(model, device, shape, training: bool, channels_last: bool) -> autotune.Choice:
    """The rule behind precision "auto". CPU: fp32 unless it has native bf16 dot products, then the faster of the
    two in a timed trial of this network at this shape (cached per machine). CUDA: fp32, conservatively, until bf16
    is measured on a GPU (PyTorch's own TF32 setting for cuDNN convolutions is left as it is); elsewhere fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return autotune.Choice("fp32", "CUDA keeps float32 until bf16 is measured on a GPU; --precision bf16 opts in")
    if device.type != "cpu":
        return autotune.Choice("fp32", f"no bf16 rule for {device.type} devices")
    key = trial_key(model, shape, training, channels_last)
    return autotune.choose_cpu_precision(key, lambda: trial_workload(model, device, shape, training, channels_last))


def resolve_with_reason(options: RuntimeOptions, model, device, shape, training: bool) -> tuple[RuntimeOptions, str]:
    """``resolve`` and the reason for its precision (for the run's record)."""
    device = torch.device(device)
    resolved = replace(options, channels_last=wants_channels_last(options, device, shape[-1], training))
    if options.precision == "bf16" and not native_bf16(device):
        announce(f"warning: --precision bf16 on a {device.type} without native bf16 arithmetic (on CPUs: no "
                 "avx512_bf16/amx_bf16): it is emulated, expect it slower than fp32; proceeding as asked")
    if options.precision != "auto":
        return resolved, "asked for"
    choice = choose_precision(model, device, shape, training, resolved.channels_last)
    announce(f"precision auto -> {choice.precision}: {choice.reason}")
    return replace(resolved, precision=choice.precision), choice.reason


def resolve(options: RuntimeOptions, model, device, shape, training: bool) -> RuntimeOptions:
    """The concrete options for running ``model`` on batches of ``shape`` (N, C, H, W) on ``device``: channels_last
    None by ``wants_channels_last``, precision "auto" by ``choose_precision`` (printed once per process). Explicit
    choices win; an explicit bf16 where the device has no native bf16 runs as asked, with a one-line warning."""
    return resolve_with_reason(options, model, device, shape, training)[0]
