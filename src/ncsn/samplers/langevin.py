"""Annealed Langevin dynamics (SPEC §5) as a pure function of (score function, x, sigmas, settings, generator).

Two step conventions exist: the image code's x + a*s + sqrt(2a)*z ("code", the default, reproduces the paper's
images with eps = 2e-5) and the paper's Algorithm 1, x + (a/2)*s + sqrt(a)*z ("paper", used by the toy code).
``langevin_update`` is also the step of the predictor-corrector sampler's correctors. ``SPEC`` is the sampler as the
registry knows it (settings ``sampling.ald``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import check_schedule
from .common import Counted, Generators, ScoreFn, check_noise_range, randn, report, tweedie
from .spec import Callback, Constraint, SamplerSpec, check, field_problems, option

CONVENTIONS = ("code", "paper")


def step_sizes(sigmas: torch.Tensor, step_lr: float) -> list[float]:
    """alpha_i = eps * (sigma_i / sigma_L)^2 for every level."""
    last = float(sigmas[-1])
    return [step_lr * (float(s) / last) ** 2 for s in sigmas]


def langevin_update(x: torch.Tensor, score: torch.Tensor, noise: torch.Tensor | None, alpha: float,
                    convention: str = "code", noise_scale: float = 1.0) -> torch.Tensor:
    """One Langevin move in place: x += drift * score + noise_scale * scale * noise, computed in x's dtype (float32).

    ``noise=None`` makes the noise-free mean x + drift * score (the last step of a sampler that ends on its mean).
    """
    if convention == "code":
        drift, scale = alpha, math.sqrt(2.0 * alpha)
    else:
        drift, scale = alpha / 2.0, math.sqrt(alpha)
    x.add_(score, alpha=drift)
    return x if noise is None else x.add_(noise, alpha=scale * noise_scale)


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
    callback: Callback | None = None,
    constraint: Constraint | None = None,
    info: dict | None = None,
    s_noise: float = 1.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
) -> torch.Tensor:
    """Run Langevin at each level from the largest sigma down and return the final x (float32, unclamped).

    ``score_fn(x, sigma)`` gives the score at noise level ``sigma`` (float32, one per example). ``callback(i,
    sigma_i, x)`` sees every step i = level * n_steps_each + step, and the final Tweedie step (sigma 0) if any (keep
    frames there; nothing is hoarded here). ``constraint(x, level, step)`` may edit
    x in place before each level (step = -1) and after every step; inpainting uses it to hold known pixels.
    ``denoise`` adds the final Tweedie step x + sigma_L^2 * s(x, L) (off by default, as NCSN; NCSNv2 turns it on).
    ``info``, if given, receives ``nfe`` (L * n_steps_each, plus 1 with ``denoise``). ``s_noise`` scales every
    step's noise: above 1 it samples each level at temperature s_noise^2 (the stationary spread grows by s_noise), as
    EDM's S_noise offsets a learned score that pulls too hard toward the training images; 1 is the paper's sampler.
    Like EDM's S_tmin/S_tmax, ``s_min`` and ``s_max`` confine it to the levels with s_min <= sigma_i <= s_max; the
    others run at 1.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if n_steps_each < 1 or step_lr <= 0:
        raise ValueError(f"need n_steps_each >= 1 and step_lr > 0, got {n_steps_each} and {step_lr}")
    check_noise_range(s_noise, s_min, s_max)
    check_schedule(sigmas, "annealed_langevin sigmas")
    score_fn = Counted(score_fn)
    x = x.detach().to(torch.float32).clone()
    noise = torch.empty(x.shape, dtype=torch.float32, device=x.device)  # one buffer, refilled in place every step
    sigma = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    levels = sigmas.detach().float().cpu()
    for level, alpha in enumerate(step_sizes(sigmas, step_lr)):
        sigma.fill_(levels[level])
        scale = s_noise if s_min <= float(levels[level]) <= s_max else 1.0
        if constraint is not None:
            constraint(x, level, -1)
        for step in range(n_steps_each):
            # a bf16 score is added into the float32 chain without a float32 copy; the arithmetic is float32
            langevin_update(x, score_fn(x, sigma), randn(x.shape, generator, out=noise), alpha, convention, scale)
            if constraint is not None:
                constraint(x, level, step)
            if callback is not None:
                callback(level * n_steps_each + step, float(levels[level]), x)
    if denoise:
        tweedie(score_fn, x, sigma, float(levels[-1]))
        if callback is not None:
            callback(len(levels) * n_steps_each, 0.0, x)
    report(info, nfe=score_fn.calls)
    return x


@dataclass
class AldSettings:
    """``sampling.ald``: annealed Langevin as NCSN samples (T = 100, eps = 2e-5, no final step; the v2 presets set
    T, eps and denoise as NCSNv2 does)."""

    n_steps_each: int = option(100, flag="--steps-each", min=1, help="Langevin steps T per level")
    step_lr: float = option(2e-5, min=0, min_open=True, help="step size eps (alpha_i = eps (sigma_i / sigma_L)^2)")
    denoise: bool = option(False, help="end with the Tweedie step x + sigma_L^2 s(x, sigma_L) (NCSNv2)")
    convention: str = option("code", choices=CONVENTIONS,
                             help="step form: code (x + a s + sqrt(2a) z) or paper (x + a/2 s + sqrt(a) z)")
    s_noise: float = option(1.0, min=0, min_open=True,
                            help="noise scale (temperature s_noise^2) on the levels in [s_min, s_max]")
    s_min: float = option(0.0, min=0, help="lowest sigma s_noise applies to")
    s_max: float | None = option(None, min=0, help="highest sigma s_noise applies to (none = no bound)")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range."""
        found = field_problems(self)
        check(found, self.s_max is None or self.s_min is None or self.s_max >= self.s_min, "s_max",
              f"must be >= s_min ({self.s_min}) or none, got {self.s_max}")
        return found


def _run(score_fn, x, *, sigmas, settings: AldSettings, generator=None, callback=None, constraint=None, info=None):
    s = settings
    s_max = math.inf if s.s_max is None else s.s_max
    return annealed_langevin(score_fn, x, sigmas, s.n_steps_each, s.step_lr, s.denoise, s.convention, generator,
                             callback, constraint, info, s.s_noise, s.s_min, s_max)


SPEC = SamplerSpec(
    name="ald",
    summary="annealed Langevin dynamics on the model's ladder (NCSN)",
    settings=AldSettings,
    run=_run,
    schedule=lambda s, ladder, frames=False: ladder,
    expected_nfe=lambda s, ladder: len(ladder) * s.n_steps_each + int(s.denoise),
    callback_count=lambda s, ladder: len(ladder) * s.n_steps_each + int(s.denoise),
    needs="ladder",
    inpainting=True,
    init="uniform",
    frame_steps=lambda s, ladder: {s.n_steps_each * (level + 1) for level in range(len(ladder))},
)
