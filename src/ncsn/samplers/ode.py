"""The probability-flow ODE of the VE SDE, dx/dsigma = -sigma s(x, sigma) (Score-SDE; SPEC §9), and its sampler.

Solved with torchdiffeq's adaptive Dormand-Prince RK45 (``dopri5``): the same 5(4) pair as scipy's ``solve_ivp``
RK45 that Score-SDE uses, but torch-native, so the state stays on the GPU (scipy would copy it to the host and back
at every evaluation) and runs in float32. The solver works in t = log sigma, dx/dt = -sigma^2 s(x, sigma) (the same
ODE; Score-SDE's time is also linear in log sigma), which spreads its steps evenly over the scales. The error
control takes the worst example of the batch, so every example meets rtol/atol; the batch shares the steps.
``SPEC`` is the sampler as the registry knows it (settings ``sampling.ode``, also the likelihood's solver settings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..schedules import check_schedule, ve_sde_sigmas
from .common import Counted, Generators, ScoreFn, report, require_any_sigma, tweedie
from .spec import Callback, SamplerSpec, field_problems, option

METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
DEVICES_WITHOUT_FLOAT64 = frozenset({"mps"})


def check_tolerances(rtol: float, atol: float, method: str) -> None:
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if method not in METHODS:
        raise ValueError(f"method must be an adaptive torchdiffeq solver {METHODS}, got {method!r}")


def worst_example_norm(state) -> torch.Tensor:
    """The error norm: RMS over each example's values, then the maximum over examples and over state parts."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.stack([p.reshape(p.shape[0], -1).pow(2).mean(dim=1).sqrt().max() for p in parts]).max()


class Flow:
    """The right-hand side in t = log sigma for torchdiffeq, counting the solver's accepted steps."""

    def __init__(self, rhs: Callable):
        self.rhs, self.steps = rhs, 0

    def __call__(self, t: torch.Tensor, state):
        return self.rhs(t, state)

    def callback_accept_step(self, t0, state, dt) -> None:
        self.steps += 1


def log_times(sigmas, device) -> torch.Tensor:
    """The solver's times t = log sigma: computed in float64 on the CPU, then on ``device`` in float64, or in float32
    on MPS, which has no float64."""
    values = sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else torch.tensor(sigmas)
    times = values.double().log()
    no_float64 = torch.device(device).type in DEVICES_WITHOUT_FLOAT64
    return times.to(torch.float32 if no_float64 else torch.float64).to(device)


def solve(flow: Flow, state, log_sigmas: torch.Tensor, rtol: float, atol: float, method: str):
    """torchdiffeq's odeint through ``log_sigmas`` (in order), the worst example's error controlling the steps.

    The solver keeps its step sizes and error ratios in the times' dtype (``log_times``: float64 but on MPS).
    """
    from torchdiffeq import odeint

    return odeint(flow, state, log_sigmas, rtol=rtol, atol=atol, method=method,
                  options={"norm": worst_example_norm, "dtype": log_sigmas.dtype})


def probability_flow(score_fn: ScoreFn, like: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """dx/dt at t = log sigma: -sigma^2 s(x, sigma), float32 whatever the network's precision."""
    sigma = torch.empty(like.shape[0], dtype=torch.float32, device=like.device)

    def rhs(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        level = t.exp().to(torch.float32)
        sigma.copy_(level.expand_as(sigma))
        return score_fn(x, sigma).float() * -(level**2)  # not in place: the likelihood differentiates through it

    return rhs


@torch.no_grad()
def ode_sampler(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = True,
    method: str = "dopri5",
    generator: Generators = None,
    callback: Callback | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Carry x from sigmas[0] to sigmas[-1] along the probability-flow ODE; returns float32 x.

    Deterministic (``generator`` is unused; it is taken for a uniform sampler signature). Intermediate sigmas of the
    schedule are only output points: ``callback(i, sigmas[i + 1], x)`` sees the solution there (dense output, no extra
    evaluations). ``denoise`` (on by default, as Score-SDE's noise_removal) adds the Tweedie step at sigmas[-1]
    (called back with sigma 0).
    ``info`` receives ``nfe`` and ``solver_steps``.
    """
    require_any_sigma(score_fn, "the ode sampler")
    check_schedule(sigmas, "ode sigmas", min_len=2)
    check_tolerances(rtol, atol, method)
    counted = Counted(score_fn)
    x = x.detach().to(torch.float32)
    flow = Flow(probability_flow(counted, x))
    path = solve(flow, x, log_times(sigmas, x.device), rtol, atol, method)
    if callback is not None:
        for i in range(1, len(sigmas)):
            callback(i - 1, float(sigmas[i]), path[i])
    x = path[-1].clone()
    del path
    if denoise:
        tweedie(counted, x, torch.empty(x.shape[0], device=x.device), float(sigmas[-1]))
        if callback is not None:
            callback(len(sigmas) - 1, 0.0, x)
    report(info, nfe=counted.calls, solver_steps=flow.steps)
    return x



FRAMES = 10  # output points of the ode sampler when a callback watches (free: dense output)


@dataclass
class ODESettings:
    """``sampling.ode``: the probability-flow ODE as Score-SDE solves it (RK45 at rtol = atol = 1e-5, then the
    Tweedie step); the likelihood uses the same solver settings."""

    rtol: float = option(1e-5, min=0, min_open=True, help="relative tolerance of the adaptive solver")
    atol: float = option(1e-5, min=0, min_open=True, help="absolute tolerance of the adaptive solver")
    method: str = option("dopri5", flag="--ode-method", choices=METHODS, help="torchdiffeq adaptive solver")
    denoise: bool = option(True, help="end with the Tweedie step at sigma_min")

    def problems(self) -> list[tuple[str, str]]:
        """(key, message) for every setting out of range."""
        return field_problems(self)


def _schedule(s: ODESettings, ladder: torch.Tensor, frames: bool = False) -> torch.Tensor:
    """From sigma_max to sigma_min; with ``frames``, FRAMES geometric output points in between (no extra cost)."""
    return ve_sde_sigmas(float(ladder[0]), float(ladder[-1]), FRAMES + 1 if frames else 2, device=ladder.device)


def _run(score_fn, x, *, sigmas, settings: ODESettings, generator=None, callback=None, constraint=None, info=None):
    s = settings
    return ode_sampler(score_fn, x, sigmas, s.rtol, s.atol, s.denoise, s.method, generator, callback, info)


SPEC = SamplerSpec(
    name="ode",
    summary="the probability-flow ODE with an adaptive solver (Score-SDE)",
    settings=ODESettings,
    run=_run,
    schedule=_schedule,
    expected_nfe=lambda s, ladder: None,
    callback_count=lambda s, ladder: FRAMES + int(s.denoise),
    needs="any_sigma",
    inpainting=False,
    init="prior",
    legacy={"ode_method": "method"},
)
