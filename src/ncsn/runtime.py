"""How a model runs (torch.compile, bf16 autocast, channels_last), kept apart from what the model is (its config).

Every option leaves results statistically the same: autocast touches the network only, and the Langevin and
loss arithmetic stay in float32. The defaults (fp32, eager, channels_last decided per use) are the fastest on CPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class RuntimeOptions:
    """``compile``: torch.compile the network; ``precision``: bf16 autocast for the network; ``channels_last``:
    True/False, or None to decide per use (see ``wants_channels_last``)."""

    compile: bool = False
    precision: str = "fp32"
    channels_last: bool | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def _device_type(device) -> str:
    return torch.device(device).type


def autocast(options: RuntimeOptions, device) -> contextlib.AbstractContextManager:
    """bf16 autocast on devices that support it; a no-op for fp32 and elsewhere."""
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
    mode = "reduce-overhead" if sampling and uses_cuda_graphs(options, device) else None
    return torch.compile(model, mode=mode)


def score_function(model, options: RuntimeOptions, device):
    """The sampler's ``score_fn(x, sigma)``: the prepared network (or any score callable) under autocast.

    The score comes back in the network's dtype; the sampler adds it into its float32 chain. channels_last left to
    us is settled at the first call, from the image size (``wants_channels_last``). The wrapper carries the model's
    ``level_conditioned`` and ``sigmas``, so samplers that need sigmas off a v1 ladder refuse it up front.
    """
    state = {}

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if not state:
            last = wants_channels_last(options, x.device, x.shape[-1], training=False)
            state["format"] = torch.channels_last if last else torch.contiguous_format
            state["net"] = prepare_model(model, replace(options, channels_last=last), device, sampling=True)
        with autocast(options, x.device):
            return state["net"](x.contiguous(memory_format=state["format"]), sigma)

    score.level_conditioned = bool(getattr(model, "level_conditioned", False))  # what the samplers check
    score.sigmas = getattr(model, "sigmas", None)
    return score
