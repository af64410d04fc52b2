"""Score-matching objectives. Each returns one value per example; the caller reduces (the paper takes the mean)."""

from __future__ import annotations

from collections.abc import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dsm_loss(
    score_fn: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    labels: torch.Tensor | None = None,
    anneal_power: float = 2.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising score matching at one random level per example (SPEC §2).

    loss_n = 1/2 * sum_dims (s(x~, i) + z / sigma_i)^2 * sigma_i^anneal_power, with x~ = x + sigma_i z.
    ``labels`` fixes the level of each example; ``noise`` fixes z (both are drawn from ``generator`` otherwise).
    """
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    if labels is None:
        labels = torch.randint(0, len(sigmas), (x.shape[0],), device=x.device, generator=generator)
    if noise is None:
        noise = torch.randn(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    sigma = sigmas[labels].view(-1, *([1] * (x.dim() - 1)))
    perturbed = x + sigma * noise
    score = score_fn(perturbed, labels).float()
    # sigma^p * (s + z/sigma)^2 == sigma^(p-2) * (sigma s + z)^2: one fused expression, no division by small sigma.
    residual = sigma * score + noise
    weight = sigma.flatten() ** (anneal_power - 2.0)
    return 0.5 * residual.square().flatten(1).sum(dim=1) * weight
