"""EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 2; SPEC §10), a pure function.

The probability-flow ODE in sigma has slope d = (x - D(x, sigma)) / sigma = -sigma s(x, sigma) (D the denoiser
x + sigma^2 s). Each step is Euler from sigma_i to sigma_{i+1}, corrected with the slope there (Heun) unless
sigma_{i+1} = 0: 2N - 1 evaluations for N steps on ``karras_sigmas``. Churn (``s_churn`` > 0) first raises sigma_i
to sigma_hat = sigma_i (1 + gamma), gamma = min(s_churn / N, sqrt(2) - 1) for sigma_i in [s_min, s_max], adding
noise of std sqrt(sigma_hat^2 - sigma_i^2) s_noise. ``SPEC`` is the sampler as the registry knows it (settings
``sampling.heun``: EDM's 18 steps and rho = 7 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import check_schedule, karras_sigmas
from .common import Counted, Generators, ScoreFn, check_noise_range, randn, report, require_any_sigma
from .spec import Callback, SamplerSpec, check, field_problems, option


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
    callback: Callback | None = None,
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


@dataclass
class HeunSettings:
    """``sampling.heun``: EDM's Algorithm 2 (18 steps, rho = 7; deterministic unless s_churn > 0)."""

    n_steps: int = option(18, min=1, help="steps N of the rho-schedule (2N - 1 evaluations)")
    rho: float = option(7.0, min=0, min_open=True, help="rho-schedule exponent")
    s_churn: float = option(0.0, min=0, help="churn (0 = deterministic)")
    s_min: float = option(0.0, min=0, help="lowest sigma churned")
    s_max: float | None = option(None, min=0, help="highest sigma churned (none = no bound)")
    s_noise: float = option(1.0, min=0, min_open=True, help="scale of the churn noise")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range."""
        found = field_problems(self)
        check(found, self.s_max is None or self.s_min is None or self.s_max >= self.s_min, "s_max",
              f"must be >= s_min ({self.s_min}) or none, got {self.s_max}")
        return found


def _run(score_fn, x, *, sigmas, settings: HeunSettings, generator=None, callback=None, constraint=None, info=None):
    s = settings
    s_max = math.inf if s.s_max is None else s.s_max
    return heun_sampler(score_fn, x, sigmas, s.s_churn, s.s_min, s_max, s.s_noise, generator, callback, info)


SPEC = SamplerSpec(
    name="heun",
    summary="EDM's second-order Heun sampler on the rho-schedule, optionally with churn",
    settings=HeunSettings,
    run=_run,
    schedule=lambda s, ladder, frames=False: karras_sigmas(float(ladder[0]), float(ladder[-1]), s.n_steps, s.rho,
                                                           device=ladder.device),
    expected_nfe=lambda s, ladder: 2 * s.n_steps - 1,
    callback_count=lambda s, ladder: s.n_steps,
    needs="any_sigma",
    inpainting=False,
    init="prior",
)
