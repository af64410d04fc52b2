"""The wrapper that owns the noise ladder around a raw network and speaks sigma to losses and samplers.

Callers give one sigma per example; the wrapper decides how the network is conditioned: a level-conditioned network
(NCSN v1) gets the index of that sigma on its ladder, and a sigma off the ladder is refused, never snapped; an
unconditional network (NCSNv2) gets x alone and its output is divided by sigma, so any sigma > 0 works; a
sigma-conditioned network (NCSN++, ``conditioning = "sigma"``) gets sigma itself and its output is divided by sigma.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .nets import CondRefineNetDilated, NCSNpp, NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from .sigmas import geometric_sigmas, ladder_levels

ARCHITECTURES = {
    "ncsn_v1": CondRefineNetDilated,
    "ncsnv2": NCSNv2,
    "ncsnv2_deeper": NCSNv2Deeper,
    "ncsnv2_deepest": NCSNv2Deepest,
    "ncsnpp": NCSNpp,
}


@dataclass
class NCSNppConfig:
    """NCSN++'s settings (``model.arch: ncsnpp``; its width nf is ``model.ngf``). Defaults: CIFAR-10 continuous.
    ``image_size`` is taken from ``data.image_size`` when null. The 256 px models use ch_mult [1, 1, 2, 2, 2, 2, 2],
    2 blocks, dropout 0, progressive output_skip and input input_skip."""

    image_size: int | None = None
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 4
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1
    progressive: str = "none"  # output pyramid: none or output_skip
    progressive_input: str = "residual"  # input pyramid: none, input_skip or residual
    progressive_combine: str = "sum"  # how input_skip joins the pyramid: sum or cat
    embedding: str = "fourier"  # fourier (of log sigma, any sigma) or positional (of the ladder index)
    fourier_scale: float = 16.0
    fir_kernel: list[float] = field(default_factory=lambda: [1.0, 3.0, 3.0, 1.0])
    skip_rescale: bool = True
    init_scale: float = 0.0


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
    ncsnpp: NCSNppConfig = field(default_factory=NCSNppConfig)


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
    ``scale_by_sigma`` (s = f(x)/sigma) is implied by an unconditional (NCSNv2) or sigma-conditioned (NCSN++) network
    and optional for v1.
    """

    def __init__(self, net: nn.Module, sigmas: torch.Tensor, scale_by_sigma: bool = False):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", sigmas.detach().clone().float())
        self.level_conditioned = bool(getattr(net, "level_conditioned", True))
        self.sigma_conditioned = getattr(net, "conditioning", None) == "sigma"
        if not self.level_conditioned and not scale_by_sigma:
            what = "returns sigma x score" if self.sigma_conditioned else "is unconditional"
            raise ValueError(f"{type(net).__name__} {what}: it needs scale_by_sigma=True (s = f(x)/sigma)")
        self.scale_by_sigma = scale_by_sigma

    @property
    def num_scales(self) -> int:
        return len(self.sigmas)

    def levels_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """Ladder index of each sigma; a sigma that is not on the ladder (rel. tol. 1e-4) is an error."""
        return ladder_levels(self.sigmas, sigma)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = _per_example(sigma, x)
        if self.level_conditioned:
            out = self.net(x, self.levels_of(sigma))
        else:
            out = self.net(x, sigma) if self.sigma_conditioned else self.net(x)
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
    if cls is NCSNpp:
        net = cls(config.in_channels, config.ngf, **asdict(config.ncsnpp))
    elif cls.level_conditioned:
        net = cls(config.in_channels, config.ngf, config.num_scales)
    else:
        net = cls(config.in_channels, config.ngf)
    sigmas = geometric_sigmas(config.sigma_max, config.sigma_min, config.num_scales)
    return ScoreModel(net, sigmas, config.scale_by_sigma or not cls.level_conditioned)
