"""Score-matching objectives. Each returns one value per example; the caller reduces (training takes the mean).

The three denoising objectives a run can train with (``training.objective``) share one form. With x~ = x + σ z,

    loss_n = w(σ_n) · reduce_dims (σ_n s(x~, σ_n) + z)²

and they differ only in how σ is drawn and in the weight w (each objective's published form; ``Objective``):

- ``ladder``, the paper's DSM (SPEC §2): σ uniform over the model's ladder, reduce = ½·sum, w = σ^(p − 2) with
  p = ``anneal_power``, i.e. ½ σ^p ‖s + z/σ‖².
- ``ve``, Score-SDE's continuous VE: t ~ U(ε, 1), σ = σ_min (σ_max/σ_min)^t, reduce = ½·sum or, with
  ``reduce_mean``, the mean (Score-SDE's mean carries no ½), w = 1. Likelihood weighting multiplies ‖s + z/σ‖² by
  g(t)² = σ² · 2 ln(σ_max/σ_min), the VE SDE's squared diffusion: here that is the constant w = 2 ln(σ_max/σ_min).
- ``edm`` (Karras et al. 2022): ln σ ~ N(P_mean, P_std²), reduce = sum (or mean), w = λ(σ) σ² = (σ² + σ_d²)/σ_d²,
  which is EDM's λ(σ) ‖D − x‖² because the denoiser D = x~ + σ² s gives D − x = σ (σ s + z).
  The network's parameterisation (``model.preconditioning: edm``) is the wrapper's business, not the loss's:
  ``ncsn.preconditioning`` holds it and the units (EDM's constants in the library's [0, 1] data and σ).

Any network that takes any σ trains with any of them; the ladder objective also suits level-conditioned ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .preconditioning import EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OBJECTIVES = ("ladder", "ve", "edm")


def denoising_loss(score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
                   weight: torch.Tensor | float | None = None, reduce: str = "half_sum") -> torch.Tensor:
    """w · reduce_dims (σ s(x + σ z, σ) + z)² per example; ``reduce`` is "half_sum", "sum" or "mean".

    σ s + z is one fused expression: no division by a small σ.
    """
    s = sigma.view(-1, *([1] * (x.dim() - 1)))
    score = score_fn(x + s * noise, sigma).float()
    squares = (s * score + noise).square().flatten(1)
    if reduce == "half_sum":
        per_example = 0.5 * squares.sum(dim=1)
    elif reduce == "sum":
        per_example = squares.sum(dim=1)
    elif reduce == "mean":
        per_example = squares.mean(dim=1)
    else:
        raise ValueError(f"reduce must be half_sum, sum or mean, got {reduce!r}")
    return per_example if weight is None else per_example * weight


@dataclass(frozen=True)
class Objective:
    """How a training step draws σ and weights each example (module docstring); ``objective_for`` builds it from a
    run's config. ``sigmas`` is the model's ladder (used by ``ladder``); ``sigma_min`` and ``sigma_max`` bound
    ``ve`` (the ladder's ends when not given)."""

    kind: str
    sigmas: torch.Tensor
    sigma_min: float | None = None
    sigma_max: float | None = None
    anneal_power: float = 2.0
    reduce_mean: bool = False
    likelihood_weighting: bool = False
    t_eps: float = 1e-5
    p_mean: float = EDM_P_MEAN
    p_std: float = EDM_P_STD
    sigma_data: float = EDM_SIGMA_DATA

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.kind!r}")
        if self.sigma_min is None:
            object.__setattr__(self, "sigma_min", float(self.sigmas.min()))
        if self.sigma_max is None:
            object.__setattr__(self, "sigma_max", float(self.sigmas.max()))

    def draw_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """σ for ``n`` examples (float32, shape (n,)), drawn from ``generator`` with one call."""
        if self.kind == "ladder":
            sigmas = self.sigmas.to(device=device, dtype=torch.float32)
            return sigmas[torch.randint(0, len(sigmas), (n,), generator=generator, device=device)]
        if self.kind == "ve":
            t = torch.rand(n, generator=generator, device=device) * (1.0 - self.t_eps) + self.t_eps
            return self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return (torch.randn(n, generator=generator, device=device) * self.p_std + self.p_mean).exp()

    def weight(self, sigma: torch.Tensor) -> torch.Tensor | float | None:
        """w(σ) of the module docstring (None: 1)."""
        if self.kind == "ladder":
            return sigma ** (self.anneal_power - 2.0)
        if self.kind == "ve":
            return 2.0 * math.log(self.sigma_max / self.sigma_min) if self.likelihood_weighting else None
        return (sigma.square() + self.sigma_data**2) / self.sigma_data**2

    @property
    def reduce(self) -> str:
        """How a per-example loss sums its dimensions: "half_sum" (½ Σ), "sum" (EDM's λ‖D − y‖²) or "mean"."""
        if self.reduce_mean:
            return "mean"
        return "sum" if self.kind == "edm" else "half_sum"

    def loss(self, score_fn: ScoreFn, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-example loss at the given σ (float32, (N,)) and noise z (x's shape)."""
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        return denoising_loss(score_fn, x, sigma, noise, self.weight(sigma), self.reduce)


def objective_for(config, sigmas: torch.Tensor) -> Objective:
    """The objective a run's config asks for (``training.objective`` and its keys, ``model.sigma_data``)."""
    t, m = config.training, config.model
    return Objective(t.objective, sigmas.detach().float(), m.sigma_min, m.sigma_max, anneal_power=t.anneal_power,
                     reduce_mean=t.reduce_mean, likelihood_weighting=t.likelihood_weighting, t_eps=t.t_eps,
                     p_mean=t.p_mean, p_std=t.p_std, sigma_data=m.sigma_data)


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
    # sigma^p * (s + z/sigma)^2 == sigma^(p-2) * (sigma s + z)^2
    return denoising_loss(score_fn, x, per_example, noise, per_example ** (anneal_power - 2.0))


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
