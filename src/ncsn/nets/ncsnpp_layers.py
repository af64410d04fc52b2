"""NCSN++'s layers: DDPM initialisation, σ embeddings, BigGAN residual blocks, self-attention and pyramid combiners.

Attribute names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0`` with ``W``/``b``, ``Conv2d_0``...) are Score-SDE's,
so official state_dicts load by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fir import FIRDownConv2d, downsample_2d, upsample_2d


def ddpm_init_(tensor: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM's variance scaling in place: uniform, variance scale / fan_avg (dims 1 and 0 are fan in and out);
    a scale of 0 means 1e-10, so zero-initialised layers still pass gradients."""
    scale = 1e-10 if scale == 0 else scale
    receptive = tensor[0, 0].numel() if tensor.dim() > 2 else 1
    fan_avg = (tensor.shape[0] + tensor.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def conv(in_ch: int, out_ch: int, kernel_size: int = 3, init_scale: float = 1.0) -> nn.Conv2d:
    """A same-size convolution with DDPM initialisation and a zero bias."""
    layer = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    ddpm_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def dense(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    ddpm_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


class GaussianFourierProjection(nn.Module):
    """[sin 2πWv, cos 2πWv] of a value v per example, with fixed random frequencies W ~ N(0, scale²)
    (a parameter that is not trained, so it travels in the state_dict)."""

    def __init__(self, embedding_size: int = 256, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        proj = v[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def positional_embedding(steps: torch.Tensor, dim: int, max_positions: int = 10_000) -> torch.Tensor:
    """The transformer's sinusoidal embedding of (N,) step indices: [sin, cos] at geometric frequencies, zero-padded
    to an odd ``dim``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=steps.device)
                      * -(math.log(max_positions) / (half - 1)))
    args = steps.float()[:, None] * freqs[None, :]
    return F.pad(torch.cat([torch.sin(args), torch.cos(args)], dim=1), (0, dim % 2))


class NIN(nn.Module):
    """A 1×1 linear map over channels with Score-SDE's parameter layout (W: in × out, b)."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(ddpm_init_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,cd->ndhw", x, self.W) + self.b.view(1, -1, 1, 1)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, added back to x (scaled by 1/√2 with skip_rescale)."""

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = (nin(h).reshape(n, c, hgt * wid).transpose(1, 2) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # scale 1/√c
        h = self.NIN_3(h.transpose(1, 2).reshape(n, c, hgt, wid))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """GroupNorm, SiLU, (FIR resampling), conv, + dense(SiLU(emb)), GroupNorm, SiLU, dropout, zero-initialised conv;
    a 1×1 skip when the channels change or the block resamples; (x + h)/√2 with skip_rescale."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, up: bool = False,
                 down: bool = False, dropout: float = 0.1, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv(in_ch, out_ch, kernel_size=1)
        self.up, self.down, self.fir_kernel, self.skip_rescale = up, down, tuple(fir_kernel), skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.GroupNorm_0(x))
        if self.up:
            h, x = upsample_2d(h, self.fir_kernel), upsample_2d(x, self.fir_kernel)
        elif self.down:
            h, x = downsample_2d(h, self.fir_kernel), downsample_2d(x, self.fir_kernel)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Joins the input pyramid's image x to features y: a 1×1 conv of x, then summed with y or concatenated."""

    def __init__(self, dim1: int, dim2: int, method: str = "sum"):
        super().__init__()
        self.Conv_0 = conv(dim1, dim2, kernel_size=1)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return h + y if self.method == "sum" else torch.cat([h, y], dim=1)


class PyramidDownsample(nn.Module):
    """The residual input pyramid's step: a 3×3 conv that halves the image through the FIR filter, DDPM-initialised
    (held as ``Conv2d_0``, the official name)."""

    def __init__(self, in_ch: int, out_ch: int, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.Conv2d_0 = FIRDownConv2d(in_ch, out_ch, 3, fir_kernel)
        ddpm_init_(self.Conv2d_0.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Conv2d_0(x)
