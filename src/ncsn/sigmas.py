"""Noise ladders: descending sigma sequences and the sigma <-> level-index helpers.

The NCSNv2 rules (Song & Ermon 2020, "Improved techniques") pick sigma_1, the ladder's ratio and the Langevin step
size from the data's dimension and spread instead of by hand.
"""

from __future__ import annotations

import math

import torch


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int, device=None, dtype=None) -> torch.Tensor:
    """Descending geometric ladder sigma_max = s_1 > ... > s_L = sigma_min (the paper's noise levels)."""
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"sigmas must be positive, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    if num_scales > 1 and not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
    if num_scales == 1:
        return torch.tensor([sigma_max], device=device, dtype=dtype or torch.float32)
    ladder = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), num_scales, dtype=torch.float64)
    return ladder.to(device=device, dtype=dtype or torch.float32)


class SigmaOffLadderError(ValueError):
    """A level-conditioned network was asked for a sigma it was not trained on."""


def ladder_levels(sigmas: torch.Tensor, sigma: torch.Tensor, rtol: float = 1e-4) -> torch.Tensor:
    """Ladder index of each sigma (int64, on sigma's device); every sigma must be on the ladder within ``rtol``.

    This is what a level-conditioned (v1) network needs: a sigma between two levels has no index, so it is refused
    with a message naming it and the ladder instead of being rounded to a neighbour. On CUDA the check runs on the
    device (no host sync); it fails there as a device-side assertion.
    """
    ladder = sigmas.to(device=sigma.device, dtype=torch.float32)
    rel = (sigma.float().unsqueeze(-1) - ladder).abs() / ladder
    err, levels = rel.min(dim=-1)
    if not sigma.is_cuda:
        worst = int(err.argmax()) if err.numel() else 0
        if err.numel() and float(err[worst]) > rtol:
            shown = ", ".join(f"{v:.4g}" for v in ladder.tolist())
            raise SigmaOffLadderError(
                f"sigma {float(sigma[worst]):.6g} is not on this level-conditioned network's ladder [{shown}]: "
                "sample on its own ladder (ald or pc), or use a sigma-scaled network (NCSNv2) for other sigmas"
            )
    else:
        torch._assert_async((err <= rtol).all(), "sigma is not on the level-conditioned network's ladder")
    return levels


def max_pairwise_distance(data: torch.Tensor, max_points: int = 10_000, generator=None) -> float:
    """NCSNv2 technique 1: sigma_1 = the largest Euclidean distance between two training points.

    Above ``max_points`` examples a random subsample of that size is used, as the NCSNv2 paper suggests.
    """
    flat = data.reshape(data.shape[0], -1).double()
    if flat.shape[0] > max_points:
        flat = flat[torch.randperm(flat.shape[0], generator=generator)[:max_points]]
    best = 0.0
    for chunk in flat.split(1024):
        best = max(best, torch.cdist(chunk, flat).max().item())
    return best


def ncsnv2_ratio(dim: int, target: float = 0.5) -> float:
    """NCSNv2 technique 2: ratio gamma = s_{i-1}/s_i with Phi(sqrt(2D)(g-1)+3g) - Phi(sqrt(2D)(g-1)-3g) = target."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    root = math.sqrt(2 * dim)

    def gap(g: float) -> float:
        return norm.cdf(root * (g - 1) + 3 * g) - norm.cdf(root * (g - 1) - 3 * g) - target

    return brentq(gap, 1.0 + 1e-9, 10.0)


def ncsnv2_num_scales(sigma_max: float, sigma_min: float, dim: int, target: float = 0.5) -> int:
    """Number of geometric levels from sigma_max to sigma_min whose ratio meets the NCSNv2 rule."""
    ratio = ncsnv2_ratio(dim, target)
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(ratio)) + 1


def ncsnv2_step_criterion(step_lr: float, n_steps_each: int, sigma_min: float, ratio: float) -> float:
    """NCSNv2 technique 4: the quantity that should be ~1 for a good (step_lr, n_steps_each) pair (SPEC §9.4)."""
    s2 = sigma_min**2
    decay = 1 - step_lr / s2
    tail = 2 * step_lr / (s2 - s2 * decay**2)
    return decay ** (2 * n_steps_each) * (ratio**2 - tail) + tail


def ncsnv2_step_lr(n_steps_each: int, sigma_min: float, ratio: float) -> float:
    """Step size epsilon whose NCSNv2 criterion is closest to 1 for the given number of steps per level.

    The criterion often stays above 1 (CIFAR-10: minimum 1.055 at eps ~ 6.2e-6), so this minimises |criterion - 1|
    over log(eps) in (0, sigma_min^2).
    """
    from scipy.optimize import minimize_scalar

    hi = math.log(sigma_min**2 * (1 - 1e-9))
    lo = hi - 30.0

    def distance(log_eps: float) -> float:
        return abs(ncsnv2_step_criterion(math.exp(log_eps), n_steps_each, sigma_min, ratio) - 1.0)

    grid = [lo + (hi - lo) * k / 300 for k in range(301)]
    best = min(grid, key=distance)
    step = (hi - lo) / 300
    res = minimize_scalar(distance, bounds=(max(lo, best - step), min(hi, best + step)), method="bounded")
    return math.exp(res.x)
