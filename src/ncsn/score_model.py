"""The wrapper that owns the noise ladder around a raw network and speaks sigma to losses and samplers.

Callers give one sigma per example; the wrapper decides how the network is conditioned: a level-conditioned network
(NCSN v1) gets the index of that sigma on its ladder, and a sigma off the ladder is refused, never snapped; an
unconditional network (NCSNv2) gets x alone and its output is divided by sigma, so any sigma > 0 works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nets import CondRefineNetDilated, NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from .sigmas import geometric_sigmas, ladder_levels

ARCHITECTURES = {
    "ncsn_v1": CondRefineNetDilated,
    "ncsnv2": NCSNv2,
    "ncsnv2_deeper": NCSNv2Deeper,
    "ncsnv2_deepest": NCSNv2Deepest,
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a score model; stored in every checkpoint and export."""

    arch: str = "ncsn_v1"
    in_channels: int = 3
    ngf: int = 128
    sigma_max: float = 1.0
    sigma_min: float = 0.01
    num_scales: int = 10
    scale_by_sigma: bool = False


def _per_example(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a float32 (N,) tensor on x's device (a float or 0-d tensor is broadcast to the batch)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


class ScoreModel(nn.Module):
    """s(x, sigma): the raw network conditioned the way it was trained, divided by sigma for σ-scaled models.

    ``forward(x, sigma)`` is the score function losses and samplers call (sigma: float32, shape (N,)).
    ``at_levels(x, labels)`` is the same score at ladder positions, for code that speaks level indices.
    ``scale_by_sigma`` (NCSNv2's s = f(x)/sigma) is implied by an unconditional network and optional for v1.
    A network whose weights are not float32 (bf16, say) gets x in its own dtype and answers in x's.
    """

    conditioning = "sigma"  # what forward's second argument is, whatever the inner network takes (ncsn.runtime)

    def __init__(self, net: nn.Module, sigmas: torch.Tensor, scale_by_sigma: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", sigmas.detach().clone().float())
        self.level_conditioned = bool(getattr(net, "level_conditioned", True))
        if not self.level_conditioned and not scale_by_sigma:
            raise ValueError(f"{type(net).__name__} is unconditional: it needs scale_by_sigma=True (s = f(x)/sigma)")
        self.scale_by_sigma = scale_by_sigma

    def _apply(self, fn, recurse=True):
        """``.to(torch.bfloat16)`` and the like cast the network; the ladder keeps its float32 values (samplers
        compute in them, and a v1 network's levels are found by them)."""
        ladder = self.sigmas
        super()._apply(fn, recurse)
        if self.sigmas.dtype != ladder.dtype:
            self.sigmas = ladder.to(self.sigmas.device)
        return self

    @property
    def num_scales(self) -> int:
        return len(self.sigmas)

    def levels_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """Ladder index of each sigma; a sigma that is not on the ladder (rel. tol. 1e-4) is an error."""
        return ladder_levels(self.sigmas, sigma)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _per_example(sigma, x)
        dtype = next((p.dtype for p in self.net.parameters() if p.is_floating_point()), x.dtype)
        inp = x.to(dtype)  # samplers hand float32 x to every network
        out = self.net(inp, self.levels_of(sigma)) if self.level_conditioned else self.net(inp)
        if dtype != x.dtype:
            out = out.to(x.dtype)
        if self.scale_by_sigma:  # divided in float32 whatever the network's precision, then back to its dtype
            out = (out.float() / sigma.view(-1, *([1] * (out.dim() - 1)))).to(out.dtype)
        return out

    def at_levels(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The score at ladder positions ``labels`` (int64, one per example)."""
        return self(x, self.sigmas[labels.to(self.sigmas.device)].to(x.device))


def build_score_model(config: ModelConfig) -> ScoreModel:
    """Build the network and the ladder a ModelConfig describes (fresh initialisation)."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown architecture {config.arch!r}; choose from {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[config.arch]
    if cls.level_conditioned:
        net = cls(config.in_channels, config.ngf, config.num_scales)
    else:
        net = cls(config.in_channels, config.ngf)
    sigmas = geometric_sigmas(config.sigma_max, config.sigma_min, config.num_scales)
    return ScoreModel(net, sigmas, config.scale_by_sigma or not cls.level_conditioned)
