"""The wrapper that owns the noise ladder around a raw network: level indices, sigma lookup, optional 1/sigma."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nets import CondRefineNetDilated
from .sigmas import geometric_sigmas, sigma_to_level

ARCHITECTURES = {"ncsn_v1": CondRefineNetDilated}


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


class ScoreModel(nn.Module):
    """s(x, level) = net(x, level), divided by sigma_level when ``scale_by_sigma`` (the NCSNv2 conditioning).

    ``forward(x, labels)`` is the score function the losses and samplers take; ``score_at_sigma`` looks up the
    nearest level for a sigma value.
    """

    def __init__(self, net: nn.Module, sigmas: torch.Tensor, scale_by_sigma: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", sigmas.detach().clone().float())
        self.scale_by_sigma = scale_by_sigma

    @property
    def num_scales(self) -> int:
        return len(self.sigmas)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.net(x, labels)
        if self.scale_by_sigma:
            out = out / self.sigmas[labels].to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
        return out

    def score_at_sigma(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Score at the ladder level nearest to ``sigma`` (a float or one value per example)."""
        levels = sigma_to_level(self.sigmas, sigma).to(x.device)
        if levels.dim() == 0:
            levels = levels.expand(x.shape[0])
        return self(x, levels)


def build_score_model(config: ModelConfig) -> ScoreModel:
    """Build the network and the ladder a ModelConfig describes (fresh initialisation)."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"model.arch: unknown architecture {config.arch!r}; choose from {sorted(ARCHITECTURES)}")
    net = ARCHITECTURES[config.arch](config.in_channels, config.ngf, config.num_scales)
    sigmas = geometric_sigmas(config.sigma_max, config.sigma_min, config.num_scales)
    return ScoreModel(net, sigmas, config.scale_by_sigma)

