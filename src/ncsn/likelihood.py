"""Exact likelihood under the probability-flow ODE (Score-SDE; SPEC §9): log-density and bits/dim of images.

The ODE dx/dt = f(x, t) = -sigma^2 s(x, sigma) in t = log sigma carries x from sigma_min to sigma_max, and by the
instantaneous change of variables log p_min(x) = log N(x(sigma_max); 0, sigma_max^2 I) + integral of div f dt.
The divergence is Hutchinson's estimate e^T (df/dx) e with one probe e per image (Rademacher or Gaussian), drawn once
and held for the whole solve (so the ODE stays smooth), through one vector-Jacobian product per evaluation. Images
are uniformly dequantised, x = (k + u)/256 for 8-bit values k, and bits/dim = -log2 p(x) / D + 8: the 8 converts the
density on [0, 1]^D into the probability of a 1/256-wide bin per value, the numbers the literature reports.
The solve is ``ncsn.samplers.ode``'s: torchdiffeq's dopri5, float32, the worst example controlling the steps; the
network runs as given (the command line runs it eager in float32: the divergence needs its gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import InputError
from .samplers.common import Counted, Generators, ScoreFn, randn, report, require_any_sigma, uniform_init
from .samplers.ode import Flow, check_tolerances, log_times, probability_flow, solve

PROBES = ("rademacher", "gaussian")
BITS_OFFSET = 8.0  # log2(256): a density on [0, 1] to the probability of one of 256 bins


def draw_probes(shape, kind: str, generator: Generators = None, device=None) -> torch.Tensor:
    """Hutchinson probes with E[e e^T] = I: Rademacher signs +-1 or standard normal values (float32)."""
    if kind not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {kind!r}")
    noise = randn(shape, generator, device)
    return torch.where(noise >= 0, 1.0, -1.0) if kind == "rademacher" else noise


def hutchinson_divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), e^T (d fn / dx) e per example): an unbiased estimate of the divergence, one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        (vjp,) = torch.autograd.grad(out, x, probe)
    return out.detach(), (vjp * probe).flatten(1).sum(dim=1)


def log_density(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probe: str = "rademacher",
    method: str = "dopri5",
    generator: Generators = None,
    info: dict | None = None,
) -> torch.Tensor:
    """log p(x) in nats per example (float32, (N,)) of the model's density at sigma_min, prior N(0, sigma_max^2 I).

    ``info`` receives ``nfe`` (evaluations, each with one backward pass) and ``solver_steps``.
    """
    require_any_sigma(score_fn, "the likelihood")
    if not 0 < sigma_min < sigma_max < math.inf:
        raise InputError(f"likelihood: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    check_tolerances(rtol, atol, method)
    x = x.detach().to(torch.float32)
    probes = draw_probes(x.shape, probe, generator, x.device)
    counted = Counted(score_fn)
    drift = probability_flow(counted, x)

    def rhs(t, state):
        return hutchinson_divergence(lambda y: drift(t, y), state[0], probes)

    flow = Flow(rhs)
    with torch.no_grad():
        path, delta = solve(flow, (x, x.new_zeros(x.shape[0])), log_times([sigma_min, sigma_max], x.device), rtol,
                            atol, method)
    end, dim = path[-1], x[0].numel()
    prior = -0.5 * dim * math.log(2 * math.pi * sigma_max**2) - end.flatten(1).pow(2).sum(dim=1) / (2 * sigma_max**2)
    report(info, nfe=counted.calls, solver_steps=flow.steps)
    return prior + delta[-1]


def eight_bit_values(images, image_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """8-bit values k in {0..255} (float32) from uint8 (N, C, H, W) images or floats in [0, 1] (= k / 255)."""
    images = torch.as_tensor(images)
    if images.dim() != 4:
        raise InputError(f"likelihood: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise InputError(f"likelihood: images of shape {tuple(images.shape[1:])}, the model takes {tuple(image_shape)}")
    if images.dtype == torch.uint8:
        return images.float()
    if not images.is_floating_point():
        raise InputError(f"likelihood: images must be uint8 or floats in [0, 1], got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0 and hi <= 1):
        raise InputError(f"likelihood: float images must lie in [0, 1] (8-bit values / 255), got values in "
                         f"[{lo:.4g}, {hi:.4g}]")
    return (images.float() * 255).round()


def bits_per_dim(
    score_fn: ScoreFn,
    images,
    sigma_min: float,
    sigma_max: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    probe: str = "rademacher",
    method: str = "dopri5",
    generator: Generators = None,
    image_shape: tuple[int, ...] | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Bits per dimension (N,) of 8-bit images: uniform dequantisation (from ``generator``), then the ODE likelihood.

    ``images``: uint8 (N, C, H, W), or floats in [0, 1] on the 8-bit grid, on the model's device; the shape must be
    ``image_shape`` if given.
    """
    values = eight_bit_values(images, image_shape)
    x = (values + uniform_init(values.shape, generator, values.device)) / 256.0
    logp = log_density(score_fn, x, sigma_min, sigma_max, rtol, atol, probe, method, generator, info)
    return -logp / (x[0].numel() * math.log(2)) + BITS_OFFSET
