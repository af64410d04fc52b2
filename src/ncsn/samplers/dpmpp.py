"""DPM-Solver++(2M) and its SDE variant (Lu et al. 2022, "DPM-Solver++"; as k-diffusion's ``sample_dpmpp_2m`` and
``sample_dpmpp_2m_sde``), pure functions.

Both work on the data prediction D(x, sigma) = x + sigma^2 s(x, sigma) in the half-log-SNR t = -log sigma, which for
the VE process solves the linear part of the ODE (and SDE) exactly. With h = t_{i+1} - t_i and H = (1 + eta) h a step
is

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-H}) D_i + c_i (D_i - D_{i-1})
              + sigma_{i+1} sqrt(1 - e^{-2 eta h}) s_noise z,

where the multistep term extrapolates D linearly from the previous step (r = h_{i-1} / h): c = (1 - e^{-H}) / (2r)
('midpoint', the paper's form) or c = (1 - (1 - e^{-H}) / H) / r ('heun', the exact integral of the linear
extrapolation). The first step has no previous D and is first order; a last step to sigma = 0 is the denoise
x = D(x, sigma_last). eta = 0 is the probability-flow ODE (with 'midpoint': DPM-Solver++(2M)), eta = 1 the reverse
SDE; any eta >= 0 keeps the marginals. One evaluation per step, always at a sigma > 0. ``SPEC_2M`` and
``SPEC_2M_SDE`` are the samplers as the registry knows them (settings ``sampling.dpmpp_2m``, ``sampling.dpmpp_2m_sde``:
EDM's rho-schedule of 20 steps from the ladder's ends, k-diffusion's eta = 1, s_noise = 1, 'midpoint').
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import check_schedule, karras_sigmas
from .common import Counted, Generators, ScoreFn, randn, report, require_any_sigma
from .spec import Callback, SamplerSpec, check, field_problems, option

SOLVER_TYPES = ("midpoint", "heun")
DEFAULT_STEPS = 20  # the DPM-Solver++ paper samples well in 15 to 20 steps


def check_sde_settings(eta: float, s_noise: float, solver_type: str) -> None:
    """The range checks of ``Dpmpp2mSdeSettings`` on these values, the first failure a ValueError ('eta must be
    >= 0, got -1')."""
    for key, message in Dpmpp2mSdeSettings(eta=eta, s_noise=s_noise, solver_type=solver_type).problems()[:1]:
        raise ValueError(f"{key} {message}")


def _multistep(score_fn: ScoreFn, x: torch.Tensor, sigmas: torch.Tensor, eta: float, s_noise: float,
               solver_type: str, generator: Generators, callback: Callback | None, info: dict | None,
               what: str) -> torch.Tensor:
    """The step above over the whole schedule (shared by both samplers; eta = 0 draws no noise)."""
    require_any_sigma(score_fn, what)
    check_schedule(sigmas, f"{what} sigmas", final_zero=True, min_len=2)
    check_sde_settings(eta, s_noise, solver_type)
    score_fn = Counted(score_fn)
    x = x.detach().to(torch.float32).clone()
    sigma = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    levels = [float(s) for s in sigmas.detach().float().cpu()]
    previous, h_last = None, None  # D and h of the step before
    for i in range(len(levels) - 1):
        cur, nxt = levels[i], levels[i + 1]
        sigma.fill_(cur)
        # D is a new tensor, never the score's own buffer (a CUDA-graph score overwrites it at its next call), and it
        # must survive that call as the next step's D_{i-1}
        denoised = torch.add(x, score_fn(x, sigma).float(), alpha=cur**2)
        if nxt == 0:
            x = denoised
        else:
            h = math.log(cur / nxt)
            big = (1 + eta) * h
            toward = -math.expm1(-big)  # 1 - e^{-H}
            new = torch.mul(denoised, toward).add_(x, alpha=nxt / cur * math.exp(-eta * h))
            if previous is not None:
                r = h_last / h
                c = (0.5 * toward if solver_type == "midpoint" else 1 - toward / big) / r
                new.add_(denoised, alpha=c).add_(previous, alpha=-c)
            if eta > 0:
                spread = nxt * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise
                new.add_(randn(x.shape, generator, x.device), alpha=spread)
            x, h_last = new, h
        previous = denoised
        if callback is not None:
            callback(i, nxt, x)
    report(info, nfe=score_fn.calls)
    return x


@torch.no_grad()
def dpmpp_2m_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Callback | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): deterministic, second order, from x at sigmas[0] through the descending ``sigmas`` (the last
    may be 0: a denoise); returns float32 x. ``callback(i, sigma_{i+1}, x)`` runs after every step; ``info`` receives
    ``nfe`` (one per step)."""
    return _multistep(score_fn, x, sigmas, 0.0, 1.0, "midpoint", None, callback, info, "the dpmpp_2m sampler")


@torch.no_grad()
def dpmpp_2m_sde_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    generator: Generators = None,
    callback: Callback | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: like ``dpmpp_2m_sampler`` with noise of std sigma_{i+1} sqrt(1 - e^{-2 eta h}) s_noise
    from ``generator`` at every step that does not end at 0 (k-diffusion's defaults eta = 1, 'midpoint'; its
    Brownian tree gives the same law on a fixed schedule, here the draws are plain seeded normals)."""
    return _multistep(score_fn, x, sigmas, eta, s_noise, solver_type, generator, callback, info,
                      "the dpmpp_2m_sde sampler")


@dataclass
class Dpmpp2mSettings:
    """``sampling.dpmpp_2m``: DPM-Solver++(2M) on EDM's rho-schedule (N steps, N evaluations, the last a denoise)."""

    n_steps: int = option(DEFAULT_STEPS, min=1, help="steps N of the rho-schedule (N evaluations)")
    rho: float = option(7.0, min=0, min_open=True, help="rho-schedule exponent")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range."""
        return field_problems(self)


@dataclass
class Dpmpp2mSdeSettings(Dpmpp2mSettings):
    """``sampling.dpmpp_2m_sde``: DPM-Solver++(2M) SDE, k-diffusion's defaults (eta = 1: the reverse SDE; midpoint)."""

    eta: float = option(1.0, min=0, help="noise level of the steps (0 = the ODE, 1 = the reverse SDE)")
    s_noise: float = option(1.0, min=0, min_open=True, help="scale of the noise added at every step")
    solver_type: str = option("midpoint", choices=SOLVER_TYPES,
                              help="second-order term: midpoint (the paper's) or heun (the exact integral)")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range (eta also finite: e^{-eta h} of an infinite eta is 0)."""
        found = field_problems(self)
        check(found, not isinstance(self.eta, int | float) or math.isfinite(self.eta), "eta",
              f"must be finite, got {self.eta}")
        return found


def _schedule(s: Dpmpp2mSettings, ladder: torch.Tensor, frames: bool = False) -> torch.Tensor:
    """EDM's rho-schedule of n_steps from the ladder's sigma_max to its sigma_min, then 0."""
    return karras_sigmas(float(ladder[0]), float(ladder[-1]), s.n_steps, s.rho, device=ladder.device)


def _run_2m(score_fn, x, *, sigmas, settings: Dpmpp2mSettings, generator=None, callback=None, constraint=None,
            info=None):
    return dpmpp_2m_sampler(score_fn, x, sigmas, callback, info)


def _run_2m_sde(score_fn, x, *, sigmas, settings: Dpmpp2mSdeSettings, generator=None, callback=None,
                constraint=None, info=None):
    s = settings
    return dpmpp_2m_sde_sampler(score_fn, x, sigmas, s.eta, s.s_noise, s.solver_type, generator, callback, info)


def _spec(name: str, summary: str, settings: type, run) -> SamplerSpec:
    """Both samplers' spec: the rho-schedule, one evaluation (and one callback) per step, any sigma, the prior."""
    return SamplerSpec(name=name, summary=summary, settings=settings, run=run, schedule=_schedule,
                       expected_nfe=lambda s, ladder: s.n_steps, callback_count=lambda s, ladder: s.n_steps,
                       needs="any_sigma", inpainting=False, init="prior")


SPEC_2M = _spec("dpmpp_2m", "DPM-Solver++(2M): second-order multistep ODE solver, one evaluation per step "
                "(rho-schedule)", Dpmpp2mSettings, _run_2m)
SPEC_2M_SDE = _spec("dpmpp_2m_sde", "DPM-Solver++(2M) SDE: the multistep solver with fresh noise at every step, one "
                    "evaluation per step", Dpmpp2mSdeSettings, _run_2m_sde)
