"""Annealed Langevin dynamics (SPEC §5) as a pure function of (score function, x, sigmas, settings, generator).

Two step conventions exist: the image code's x + a*s + sqrt(2a)*z ("code", the default, reproduces the paper's
images with eps = 2e-5) and the paper's Algorithm 1, x + (a/2)*s + sqrt(a)*z ("paper", used by the toy code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
CONVENTIONS = ("code", "paper")


def randn(shape, generator: Generators = None, device=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal float32 noise; a list of generators draws each example from its own generator.

    One generator per example makes a sample depend on its own seed only, not on the batch it was drawn in.
    ``out`` (contiguous float32 of ``shape``) is filled in place instead of allocating; the values are the same.
    """
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    if out is None:
        out = torch.empty(shape, device=device, dtype=torch.float32)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(out.shape, generator=generator, device=out.device, dtype=torch.float32, out=out)
    for k, g in enumerate(generator):
        torch.randn(out.shape[1:], generator=g, device=out.device, dtype=torch.float32, out=out[k])
    return out


def uniform_init(shape, generator: Generators = None, device=None) -> torch.Tensor:
    """The reference initialisation of the chains: x ~ Uniform[0, 1]^D."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=device) for g in generator])


def per_example_generators(seed: int, count: int, start: int = 0, device="cpu") -> list[torch.Generator]:
    """Generators seeded ``seed + start``, ..., so example k of a run always gets the same noise."""
    return [torch.Generator(device=device).manual_seed(seed + start + k) for k in range(count)]


def step_sizes(sigmas: torch.Tensor, step_lr: float) -> list[float]:
    """alpha_i = eps * (sigma_i / sigma_L)^2 for every level."""
    last = float(sigmas[-1])
    return [step_lr * (float(s) / last) ** 2 for s in sigmas]


def langevin_update(x: torch.Tensor, score: torch.Tensor, noise: torch.Tensor, alpha: float, convention: str):
    """One Langevin move in place: x += drift * score + scale * noise, computed in x's dtype (float32)."""
    if convention == "code":
        drift, scale = alpha, math.sqrt(2.0 * alpha)
    else:
        drift, scale = alpha / 2.0, math.sqrt(alpha)
    return x.add_(score, alpha=drift).add_(noise, alpha=scale)


@torch.no_grad()
def annealed_langevin(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = False,
    convention: str = "code",
    generator: Generators = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    constraint: Callable[[torch.Tensor, int, int], None] | None = None,
) -> torch.Tensor:
    """Run Langevin at each level from the largest sigma down and return the final x (float32, unclamped).

    ``score_fn(x, sigma)`` gives the score at noise level ``sigma`` (float32, one per example). ``callback(level, step, x)`` sees every
    step (keep frames there; nothing is hoarded here). ``constraint(x, level, step)`` may edit x in place before
    each level (step = -1) and after every step; inpainting uses it to hold known pixels.
    ``denoise`` adds the final Tweedie step x + sigma_L^2 * s(x, L).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if n_steps_each < 1 or step_lr <= 0:
        raise ValueError(f"need n_steps_each >= 1 and step_lr > 0, got {n_steps_each} and {step_lr}")
    x = x.detach().to(torch.float32).clone()
    noise = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # one buffer, refilled in place every step
    sigma = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    levels = sigmas.detach().float().cpu()
    for level, alpha in enumerate(step_sizes(sigmas, step_lr)):
        sigma.fill_(levels[level])
        if constraint is not None:
            constraint(x, level, -1)
        for step in range(n_steps_each):
            # a bf16 score is added into the float32 chain without a float32 copy; the arithmetic is float32
            langevin_update(x, score_fn(x, sigma), randn(x.shape, generator, out=noise), alpha, convention)
            if constraint is not None:
                constraint(x, level, step)
            if callback is not None:
                callback(level, step, x)
    if denoise:
        sigma.fill_(levels[-1])
        x.add_(score_fn(x, sigma).float(), alpha=float(levels[-1]) ** 2)
    return x
