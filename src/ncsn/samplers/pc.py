"""Score-SDE's predictor-corrector sampler for the VE SDE (Song et al. 2021; SPEC §9), a pure function.

At every level sigma_i of a descending schedule (sigma_N = 0 after the last), first ``corrector_steps`` corrector
moves at sigma_i, then one predictor move from sigma_i to sigma_{i+1}:

- predictor ``reverse_diffusion``: x_mean = x + (s_i^2 - s_{i+1}^2) s(x, s_i), x = x_mean + sqrt(s_i^2 - s_{i+1}^2) z
  (its last move, to sigma = 0, is the Tweedie step); ``euler_maruyama``: the reverse SDE's Euler-Maruyama step in
  t = log sigma, x_mean = x + 2 s_i^2 dt s, x = x_mean + s_i sqrt(2 dt) z with dt = log(s_i / s_{i+1}) (the last
  level reuses the previous dt, as Score-SDE's constant dt does on its geometric grid);
- corrector ``langevin``: Langevin with step 2 (snr ||z|| / ||s||)^2, ``ald``: annealed Langevin's step 2 (snr s_i)^2.
  Corrector-only with ``ald`` and snr = sqrt(eps / (2 sigma_L^2)) is ``annealed_langevin`` (alpha_i = eps (s_i/s_L)^2).

``denoise`` (on by default) returns the noise-free mean of the last move, as Score-SDE's noise_removal does. The
Langevin corrector's norms are per example (Score-SDE averages them over the batch), so a sample does not depend on
the rest of its batch. ``SPEC`` is the sampler as the registry knows it (settings ``sampling.pc``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import check_schedule, ve_sde_sigmas
from .common import Counted, Generators, ScoreFn, per_example, randn, report, require_on_ladder
from .langevin import langevin_update
from .spec import Callback, Constraint, SamplerSpec, check, field_problems, option

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "none")
CORRECTORS = ("langevin", "ald", "none")


def predictor_variance(levels: list[float], i: int, predictor: str) -> float:
    """The variance added (and the score's step) of the predictor's move from level i to level i + 1."""
    sigma = levels[i]
    if predictor == "reverse_diffusion":
        below = levels[i + 1] if i + 1 < len(levels) else 0.0
        return sigma**2 - below**2
    j = min(i, len(levels) - 2)  # the last level has no next one in log sigma: reuse the previous spacing
    return 2 * sigma**2 * math.log(levels[j] / levels[j + 1])


def _check(predictor: str, corrector: str, corrector_steps: int, snr: float, n_levels: int) -> None:
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if corrector not in CORRECTORS:
        raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
    if predictor == "none" and (corrector == "none" or corrector_steps == 0):
        raise ValueError("pc needs a predictor or a corrector; both are off")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    if corrector != "none" and not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if predictor == "euler_maruyama" and n_levels < 2:
        raise ValueError("the euler_maruyama predictor needs at least 2 levels (its step is log(s_i / s_i+1))")


@torch.no_grad()
def pc_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    corrector_steps: int = 1,
    snr: float = 0.16,
    denoise: bool = True,
    generator: Generators = None,
    callback: Callback | None = None,
    constraint: Constraint | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Predictor-corrector sampling over the descending levels ``sigmas``; returns float32 x (unclamped).

    ``callback(i, sigma_next, x)`` runs after every level i: sigma_next is the level the predictor moved x to (0
    after the last), or sigma_i itself without a predictor. ``constraint(x, level, step)`` edits x in place before each
    level (step = -1) and after every corrector move (step = 0, 1, ...), as in ``annealed_langevin``; inpainting
    uses it. ``info`` receives ``nfe`` = N * (corrector_steps + 1) with both parts on.
    """
    check_schedule(sigmas, "pc sigmas")
    corrector_steps = 0 if corrector == "none" else corrector_steps
    _check(predictor, corrector, corrector_steps, snr, len(sigmas))
    require_on_ladder(score_fn, sigmas, "pc")
    score_fn = Counted(score_fn)
    x = x.detach().to(torch.float32).clone()
    noise = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    sigma = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    levels = [float(s) for s in sigmas.detach().float().cpu()]
    for i, level in enumerate(levels):
        sigma.fill_(level)
        if constraint is not None:
            constraint(x, i, -1)
        for step in range(corrector_steps):
            last = denoise and predictor == "none" and i == len(levels) - 1 and step == corrector_steps - 1
            score = score_fn(x, sigma)
            z = randn(x.shape, generator, out=noise)
            if corrector == "ald":
                langevin_update(x, score, None if last else z, 2 * (snr * level) ** 2)
            else:
                score = score.float()
                ratio = z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)
                step_size = per_example(2 * (snr * ratio) ** 2, x)
                x.addcmul_(score, step_size)
                if not last:
                    x.addcmul_(z, step_size.mul_(2).sqrt_())
            if constraint is not None:
                constraint(x, i, step)
        if predictor != "none":
            variance = predictor_variance(levels, i, predictor)
            score = score_fn(x, sigma)
            z = randn(x.shape, generator, out=noise)
            x.add_(score, alpha=variance)
            if not (denoise and i == len(levels) - 1):
                x.add_(z, alpha=math.sqrt(variance))
        if callback is not None:
            below = levels[i + 1] if i + 1 < len(levels) else 0.0
            callback(i, level if predictor == "none" else below, x)
    report(info, nfe=score_fn.calls)
    return x


@dataclass
class PCSettings:
    """``sampling.pc``: Score-SDE's VE sampler (reverse diffusion + one Langevin corrector move, snr 0.16, ending on
    the last mean)."""

    n_steps: int | None = option(None, min=1,
                                 help="levels N of the geometric VE grid (none = the model's own ladder)")
    predictor: str = option("reverse_diffusion", choices=PREDICTORS, help="predictor")
    corrector: str = option("langevin", choices=CORRECTORS,
                            help="corrector: langevin (step 2(snr |z|/|s|)^2) or ald (step 2(snr sigma)^2)")
    corrector_steps: int = option(1, min=0, help="corrector moves per level")
    snr: float = option(0.16, min=0, min_open=True, help="corrector signal-to-noise ratio")
    denoise: bool = option(True, help="return the last move's noise-free mean (Score-SDE's noise_removal)")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range."""
        found = field_problems(self)
        check(found, self.predictor != "none" or (self.corrector != "none" and self.corrector_steps > 0),
              "predictor", "pc needs a predictor or a corrector; both are off")
        return found


def _schedule(s: PCSettings, ladder: torch.Tensor, frames: bool = False) -> torch.Tensor:
    """The model's ladder, or N levels of the VE SDE's geometric grid between its ends."""
    if s.n_steps is None:
        return ladder
    return ve_sde_sigmas(float(ladder[0]), float(ladder[-1]), s.n_steps, device=ladder.device)


def _levels(s: PCSettings, ladder: torch.Tensor) -> int:
    return len(ladder) if s.n_steps is None else s.n_steps


def _nfe(s: PCSettings, ladder: torch.Tensor) -> int:
    corrector = 0 if s.corrector == "none" else s.corrector_steps
    return _levels(s, ladder) * (corrector + int(s.predictor != "none"))


def _run(score_fn, x, *, sigmas, settings: PCSettings, generator=None, callback=None, constraint=None, info=None):
    s = settings
    return pc_sampler(score_fn, x, sigmas, s.predictor, s.corrector, s.corrector_steps, s.snr, s.denoise, generator,
                      callback, constraint, info)


SPEC = SamplerSpec(
    name="pc",
    summary="Score-SDE's VE predictor-corrector, on the ladder or a geometric grid",
    settings=PCSettings,
    run=_run,
    schedule=_schedule,
    expected_nfe=_nfe,
    callback_count=_levels,
    needs="ladder",
    inpainting=True,
    init="prior",
)
