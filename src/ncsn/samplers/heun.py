"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 2; SPEC §10), a pure function.

The probability-flow ODE in sigma has slope d = (x - D(x, sigma)) / sigma = -sigma s(x, sigma) (D the denoiser
x + sigma^2 s). Each step is Euler from sigma_i to sigma_{i+1}, corrected with the slope there (Heun) unless
sigma_{i+1} = 0: 2N - 1 evaluations for N steps on ``karras_sigmas``. Churn (``s_churn`` > 0) first raises sigma_i
to sigma_hat = sigma_i (1 + gamma), gamma = min(s_churn / N, sqrt(2) - 1) for sigma_i in [s_min, s_max], adding
noise of std sqrt(sigma_hat^2 - sigma_i^2) s_noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..schedules import check_schedule
from .common import Counted, Generators, ScoreFn, check_noise_range, randn, report, require_any_sigma


def _check(s_churn: float, s_min: float, s_max: float, s_noise: float) -> None:
    if not s_churn >= 0:
        raise ValueError(f"s_churn must be >= 0, got {s_churn}")
    check_noise_range(s_noise, s_min, s_max)


@torch.no_grad()
def heun_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
    generator: Generators = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Integrate from x at sigmas[0] through the descending ``sigmas`` (last may be 0); returns float32 x.

    Deterministic unless ``s_churn`` > 0 (then the noise comes from ``generator``). ``callback(i, sigma_{i+1}, x)``
    runs after every step. ``info`` receives ``nfe`` (2N - 1 when the schedule ends at 0, else 2N).
    """
    require_any_sigma(score_fn, "the heun sampler")
    check_schedule(sigmas, "heun sigmas", final_zero=True, min_len=2)
    _check(s_churn, s_min, s_max, s_noise)
    score_fn = Counted(score_fn)
    x = x.detach().to(torch.float32).clone()
    sigma = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    levels = [float(s) for s in sigmas.detach().float().cpu()]
    n = len(levels) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)

    def slope(x: torch.Tensor, at: float) -> torch.Tensor:
        sigma.fill_(at)
        # a new tensor, never the score's own: a CUDA-graph (compiled) score hands back one buffer that its next call
        # overwrites, and d must survive the evaluation at the next sigma
        return score_fn(x, sigma).float() * -at

    for i in range(n):
        cur, nxt = levels[i], levels[i + 1]
        gamma = gamma_max if s_churn > 0 and s_min <= cur <= s_max else 0.0
        hat = cur * (1 + gamma)
        if gamma > 0:
            x.add_(randn(x.shape, generator, x.device), alpha=math.sqrt(hat**2 - cur**2) * s_noise)
        d = slope(x, hat)
        euler = x + (nxt - hat) * d
        if nxt > 0:
            x = x.add_(d.add_(slope(euler, nxt)), alpha=(nxt - hat) / 2)
        else:
            x = euler
        if callback is not None:
            callback(i, nxt, x)
    report(info, nfe=score_fn.calls)
    return x
