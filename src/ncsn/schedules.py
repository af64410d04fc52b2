"""Sigma schedules for the samplers: tiny pure functions returning descending float32 sigmas, and their check.

- ``geometric_sigmas``: the NCSN ladder, which is also the VE SDE's discretisation: Score-SDE's
  sigma(t) = sigma_min (sigma_max / sigma_min)^t at N evenly spaced t from 1 to 0 is this geometric sequence.
- ``karras_sigmas``: EDM's rho-schedule (SPEC §10) with the final sigma = 0 appended.
"""

from __future__ import annotations

import math

import torch

from .sigmas import geometric_sigmas

__all__ = ["append_zero", "check_schedule", "geometric_sigmas", "karras_sigmas", "ve_sde_sigmas"]


def _check_range(sigma_max: float, sigma_min: float, n: int) -> None:
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min) and sigma_min > 0):
        raise ValueError(f"sigmas must be positive and finite, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be below sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}")
    if n < 1:
        raise ValueError(f"the number of steps N must be >= 1, got {n}")


def ve_sde_sigmas(sigma_max: float, sigma_min: float, n: int, device=None) -> torch.Tensor:
    """N levels of the VE SDE sigma(t) = sigma_min (sigma_max/sigma_min)^t at t = 1, ..., 0 (Score-SDE's grid)."""
    _check_range(sigma_max, sigma_min, n)
    return geometric_sigmas(sigma_max, sigma_min, n, device=device)


def karras_sigmas(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0, device=None) -> torch.Tensor:
    """EDM: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, then sigma_N = 0.

    Returns N + 1 values (N steps); N = 1 is the single step from sigma_max to 0.
    """
    _check_range(sigma_max, sigma_min, n)
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho  # float64 on the CPU; the device gets float32 (MPS has no float64)
    return append_zero(sigmas.to(torch.float32).to(device))


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def check_schedule(sigmas: torch.Tensor, what: str = "sigma schedule", final_zero: bool = False,
                   min_len: int = 1) -> None:
    """A schedule is 1-D, finite, strictly descending and positive (its last value may be 0 if ``final_zero``)."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < min_len:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"{what}: need a 1-D tensor of at least {min_len} sigmas, got {shape}")
    values = sigmas.detach().cpu().double()  # float64 on the CPU: MPS has none
    if not torch.isfinite(values).all():
        raise ValueError(f"{what}: sigmas must be finite, got {values.tolist()}")
    positive = values[:-1] if final_zero else values
    if (positive <= 0).any() or values[-1] < 0:
        raise ValueError(f"{what}: sigmas must be positive{' (the last may be 0)' if final_zero else ''}, "
                         f"got minimum {float(values.min()):.4g}")
    steps = values[1:] - values[:-1]
    if (steps >= 0).any():
        i = int((steps >= 0).nonzero()[0])
        raise ValueError(f"{what}: sigmas must be strictly descending, but sigma[{i + 1}] = {float(values[i + 1]):.6g} "
                         f">= sigma[{i}] = {float(values[i]):.6g}")
