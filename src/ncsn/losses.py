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

    loss_n = 1/2 * sum_dims (s(x~, sigma_i) + z / sigma_i)^2 * sigma_i^anneal_power, with x~ = x + sigma_i z.
    ``score_fn(x~, sigma)`` gets one sigma per example. ``labels`` fixes the level of each example (positions in
    ``sigmas``); ``noise`` fixes z (both are drawn from ``generator`` otherwise).
    """
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    if labels is None:
        labels = torch.randint(0, len(sigmas), (x.shape[0],), device=x.device, generator=generator)
    if noise is None:
        noise = torch.randn(x.shape, device=x.device, dtype=torch.float32, generator=generator)
    per_example = sigmas[labels]
    sigma = per_example.view(-1, *([1] * (x.dim() - 1)))
    perturbed = x + sigma * noise
    score = score_fn(perturbed, per_example).float()
    # sigma^p * (s + z/sigma)^2 == sigma^(p-2) * (sigma s + z)^2: one fused expression, no division by small sigma.
    residual = sigma * score + noise
    weight = sigma.flatten() ** (anneal_power - 2.0)
    return 0.5 * residual.square().flatten(1).sum(dim=1) * weight


PROJECTIONS = ("gaussian", "rademacher")


def _projection_vectors(shape, kind: str, generator, device) -> torch.Tensor:
    """Random slicing directions v with E[v v^T] = I: standard normal or uniform random signs."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


def ssm_loss(
    score_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigma: torch.Tensor | None = None,
    n_projections: int = 1,
    projection: str = "gaussian",
    variance_reduced: bool = False,
    generator: torch.Generator | None = None,
    projections: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sliced score matching (Song et al. 2019), an unbiased estimate of E[1/2 ||s||^2 + tr(grad s)] per example.

    loss_n = mean over v of 1/2 (v^T s)^2 + v^T grad_x(v^T s); ``variance_reduced`` replaces 1/2 (v^T s)^2 by its
    expectation 1/2 ||s||^2. ``score_fn(x)`` is called when ``sigma`` is None, ``score_fn(x, sigma)`` otherwise
    (one noise level per example, as every score function takes it).
    ``projections`` fixes v (shape ``(n_projections, *x.shape)``); it is drawn from ``generator`` otherwise.
    The input gradient keeps its graph, so the result trains the model; it works under ``torch.no_grad`` too.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    batch = x.shape[0]
    if projections is None:
        projections = _projection_vectors((n_projections, *x.shape), projection, generator, x.device)
    elif projections.shape != (n_projections, *x.shape):
        raise ValueError(f"projections must have shape {(n_projections, *x.shape)}, got {tuple(projections.shape)}")
    vectors = projections.to(device=x.device, dtype=torch.float32).flatten(0, 1)
    with torch.enable_grad():
        repeated = x.detach().float().repeat(n_projections, *([1] * (x.dim() - 1))).requires_grad_(True)
        if sigma is None:
            score = score_fn(repeated)
        else:
            score = score_fn(repeated, torch.as_tensor(sigma, dtype=torch.float32, device=x.device).repeat(n_projections))
        score = score.float()
        projected = (score * vectors).flatten(1).sum(dim=1)
        (grad_projected,) = torch.autograd.grad(projected.sum(), repeated, create_graph=True)
    trace_term = (vectors * grad_projected).flatten(1).sum(dim=1)
    if variance_reduced:
        norm_term = 0.5 * score.square().flatten(1).sum(dim=1)
    else:
        norm_term = 0.5 * projected.square()
    return (norm_term + trace_term).view(n_projections, batch).mean(dim=0)
