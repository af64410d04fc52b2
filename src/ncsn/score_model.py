"""The wrapper that owns the noise ladder around a raw network and speaks sigma to losses and samplers.

Callers give one sigma per example; the wrapper decides how the network is conditioned: a level-conditioned network
(NCSN v1) gets the index of that sigma on its ladder, and a sigma off the ladder is refused, never snapped; an
unconditional network (NCSNv2) gets x alone and its output is divided by sigma, so any sigma > 0 works; a
sigma-conditioned network (NCSN++, ``conditioning = "sigma"``) gets sigma itself and its output is divided by sigma.
With ``preconditioning="edm"`` the network is EDM's F instead: the score is (D − x)/σ² with
D = m + c_skip (x − m) + c_out F(c_in (x − m), c_noise) (``ncsn.preconditioning``); a network that takes σ is given
σ^(1/4), so that the ln it embeds is c_noise = ln(σ)/4; an unconditional one ignores c_noise, a level-conditioned
one gets its level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .nets import CondRefineNetDilated, NCSNpp, NCSNv2, NCSNv2Deeper, NCSNv2Deepest
from .preconditioning import (DATA_MEAN, EDM_SIGMA_DATA, PRECONDITIONINGS, edm_coefficients, edm_denoise,
                              edm_network_sigma, edm_score)
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
    preconditioning: str = "none"  # none, or edm: the net is EDM's F in D (ncsn.preconditioning); edm replaces
    # the s = f(x)/sigma scaling, so scale_by_sigma does not apply to it
    sigma_data: float = EDM_SIGMA_DATA  # EDM's σ_data in the library's [0, 1] units (0.5 on [−1, 1])
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
    A network whose weights are not float32 (bf16, say) gets x in its own dtype and answers in x's.
    """

    conditioning = "sigma"  # what forward's second argument is, whatever the inner network takes (ncsn.runtime)

    def __init__(self, net: nn.Module, sigmas: torch.Tensor, scale_by_sigma: bool = False,
                 preconditioning: str = "none", sigma_data: float = EDM_SIGMA_DATA):
        super().__init__()
        self.net = net
        self.register_buffer("sigmas", sigmas.detach().clone().float())
        self.level_conditioned = bool(getattr(net, "level_conditioned", True))
        self.sigma_conditioned = getattr(net, "conditioning", None) == "sigma"
        if preconditioning not in PRECONDITIONINGS:
            raise ValueError(f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}")
        if not self.level_conditioned and not scale_by_sigma and preconditioning == "none":
            what = "returns sigma x score" if self.sigma_conditioned else "is unconditional"
            raise ValueError(f"{type(net).__name__} {what}: it needs scale_by_sigma=True (s = f(x)/sigma)")
        self.scale_by_sigma = scale_by_sigma
        self.preconditioning, self.sigma_data = preconditioning, float(sigma_data)

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
        """The number of levels L on the ladder."""
        return len(self.sigmas)

    def levels_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """Ladder index of each sigma; a sigma that is not on the ladder (rel. tol. 1e-4) is an error."""
        return ladder_levels(self.sigmas, sigma)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score s(x, sigma); sigma is a float or a float32 (N,) tensor, one level per example."""
        sigma = _per_example(sigma, x)
        dtype = self._net_dtype(x)
        if self.preconditioning == "edm":
            raw = self._edm_raw(x, sigma)
            out = edm_score(x, sigma, raw, self.sigma_data).to(raw.dtype)
            return out.to(x.dtype) if dtype != x.dtype else out
        out = self._run_net(x.to(dtype), sigma, sigma)  # samplers hand float32 x to every network
        if dtype != x.dtype:
            out = out.to(x.dtype)
        if self.scale_by_sigma:  # divided in float32 whatever the network's precision, then back to its dtype
            out = (out.float() / sigma.view(-1, *([1] * (out.dim() - 1)))).to(out.dtype)
        return out

    def _net_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype of the network's weights (x's own for a network without floating-point weights)."""
        return next((p.dtype for p in self.net.parameters() if p.is_floating_point()), x.dtype)

    def _edm_raw(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """F(c_in (x − m), c_noise): the network's output under EDM's preconditioning."""
        _, _, c_in, _ = edm_coefficients(sigma, self.sigma_data)
        u = (c_in.view(-1, *([1] * (x.dim() - 1))) * (x - DATA_MEAN)).to(self._net_dtype(x))
        return self._run_net(u, sigma, edm_network_sigma(sigma))

    def _run_net(self, u: torch.Tensor, sigma: torch.Tensor, sigma_in: torch.Tensor) -> torch.Tensor:
        """The raw network on ``u`` as it is conditioned: the ladder level of sigma, ``sigma_in``, or nothing."""
        if self.level_conditioned:
            return self.net(u, self.levels_of(sigma))
        return self.net(u, sigma_in) if self.sigma_conditioned else self.net(u)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """D(x; σ) = x + σ² s(x, σ), the denoiser the score implies (EDM's own D under its preconditioning)."""
        sigma = _per_example(sigma, x)
        if self.preconditioning == "edm":
            return edm_denoise(x, sigma, self._edm_raw(x, sigma), self.sigma_data)
        return x.float() + sigma.view(-1, *([1] * (x.dim() - 1))).square() * self(x, sigma).float()

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
    return ScoreModel(net, sigmas, config.scale_by_sigma or not cls.level_conditioned, config.preconditioning,
                      config.sigma_data)
