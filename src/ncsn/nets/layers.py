"""Building blocks of the RefineNet score networks: NCSN's CondRefineNetDilated (SPEC §3) and NCSNv2's three.

Attribute names follow the official checkpoints, so their state_dicts load by name into these modules.
Every block takes ``(x, y)``: ``y`` holds one noise-level index per example for the level-conditioned norm and is
None for the unconditional one. A network picks its norm as a factory ``norm(channels) -> module``; the refine
blocks take ``norm=None`` for "no norms" (NCSNv2) and a pooling kind for the chained residual pooling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cond_norm import cond_instance_norm

Norm = Callable[[int], nn.Module]


def conv3x3(in_ch: int, out_ch: int, bias: bool = True, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution that keeps the spatial size (padding = dilation)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias)


class CondInstanceNormPlusPlus(nn.Module):
    """Conditional InstanceNorm++: out = gamma * (instnorm(x) + alpha * normalised channel means) + beta.

    One embedding row of [gamma | alpha | beta] per noise level; gamma, alpha ~ N(1, 0.02), beta = 0 at init.
    The arithmetic lives in ``cond_norm.py`` (one autograd function, few full-size passes); ``activation=True``
    applies the ELU that follows the norm in most blocks inside it, in place.
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_features = num_features
        self.embed = nn.Embedding(num_classes, 3 * num_features)
        with torch.no_grad():
            self.embed.weight[:, : 2 * num_features].normal_(1.0, 0.02)
            self.embed.weight[:, 2 * num_features :].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor, activation: bool = False) -> torch.Tensor:
        """Normalise x with the parameters of levels y; ``activation`` applies the ELU in the same pass."""
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        return cond_instance_norm(x, gamma, alpha, beta, activation)


class InstanceNormPlusPlus(nn.Module):
    """InstanceNorm++ without conditioning (NCSNv2): one per-channel alpha, gamma ~ N(1, 0.02) and beta = 0.

    The same arithmetic as the conditional norm with the parameters shared by every example; ``y`` is ignored,
    so the blocks take either norm.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, activation: bool = False) -> torch.Tensor:
        """Normalise x (``y`` is ignored: one signature for both norms); ``activation`` applies the ELU too."""
        n = x.shape[0]
        gamma, alpha, beta = (p.expand(n, -1) for p in (self.gamma, self.alpha, self.beta))
        return cond_instance_norm(x, gamma, alpha, beta, activation)


class ConvMeanPool(nn.Module):
    """Convolution (same padding) followed by 2x2 mean pooling: the downsampling of res2.

    Both steps are linear, so a k x k kernel (k > 1) runs as one stride-2 convolution with the (k+1) x (k+1)
    kernel averaged over the four pooling offsets: the same map with 2.25x fewer multiply-adds for k = 3.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if w.shape[-1] == 1:
            return F.avg_pool2d(self.conv(x), 2)
        pooled = sum(F.pad(w, (left, 1 - left, top, 1 - top)) for top in (0, 1) for left in (0, 1)) * 0.25
        if not w.is_contiguous():  # keep the layout the weights were given (channels_last)
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, pooled, self.conv.bias, stride=2, padding=self.conv.padding)




class ResidualBlock(nn.Module):
    """Pre-activation residual block: norm -> ELU -> conv -> norm -> ELU -> conv, plus shortcut.

    ``down`` with no dilation halves the resolution (conv-then-mean-pool); ``down`` with a dilation keeps the size
    and only gives the block a dilated 3x3 shortcut conv, as in the reference networks. (Their 28-px case, an
    ``adjust_padding`` flag on res4, changes nothing: it only acts in the undilated branch and res4 is dilated.)
    """

    def __init__(self, in_ch: int, out_ch: int, norm: Norm, down: bool = False, dilation: int = 1):
        super().__init__()
        self.normalize1 = norm(in_ch)
        if down:
            self.conv1 = conv3x3(in_ch, in_ch, dilation=dilation)
            self.normalize2 = norm(in_ch)
            if dilation > 1:
                self.conv2 = conv3x3(in_ch, out_ch, dilation=dilation)
                self.shortcut = conv3x3(in_ch, out_ch, dilation=dilation)
            else:
                self.conv2 = ConvMeanPool(in_ch, out_ch, 3)
                self.shortcut = ConvMeanPool(in_ch, out_ch, 1)
        else:
            self.conv1 = conv3x3(in_ch, out_ch, dilation=dilation)
            self.normalize2 = norm(out_ch)
            self.conv2 = conv3x3(out_ch, out_ch, dilation=dilation)
            if in_ch != out_ch:
                self.shortcut = conv3x3(in_ch, out_ch, dilation=dilation) if dilation > 1 else nn.Conv2d(in_ch, out_ch, 1)
            else:
                self.shortcut = None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(self.normalize1(x, y, activation=True))
        h = self.conv2(self.normalize2(h, y, activation=True))
        return h.add_(x if self.shortcut is None else self.shortcut(x))  # conv outputs are not saved for backward


def _norm_elu(norm: nn.Module | None, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """norm then ELU (fused), or ELU alone where the block has no norms."""
    return F.elu(x) if norm is None else norm(x, y, activation=True)


class RCUBlock(nn.Module):
    """Residual conv unit: n_blocks residual blocks of n_stages ([norm] -> ELU -> bias-free conv3x3)."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, norm: Norm | None):
        super().__init__()
        self.n_blocks, self.n_stages, self.has_norms = n_blocks, n_stages, norm is not None
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                if norm is not None:
                    setattr(self, f"{i}_{j}_norm", norm(features))
                setattr(self, f"{i}_{j}_conv", conv3x3(features, features, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                norm = getattr(self, f"{i}_{j}_norm") if self.has_norms else None
                x = getattr(self, f"{i}_{j}_conv")(_norm_elu(norm, x, y))
            x = x.add_(residual)
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: [norm ->] conv3x3 (with bias) per input, bilinear resize to one size, then sum."""

    def __init__(self, in_planes: list[int], features: int, norm: Norm | None):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, features, bias=True) for c in in_planes)
        self.norms = None if norm is None else nn.ModuleList(norm(c) for c in in_planes)

    def forward(self, xs: list[torch.Tensor], y: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        total = None
        for i, (x, conv) in enumerate(zip(xs, self.convs)):
            h = conv(x if self.norms is None else self.norms[i](x, y))
            if tuple(h.shape[-2:]) != tuple(shape):
                h = F.interpolate(h, size=shape, mode="bilinear", align_corners=True)
            total = h if total is None else total.add_(h)
        return total


def mean_pool5(x: torch.Tensor) -> torch.Tensor:
    """5x5 stride-1 average pool with zero padding 2 (divisor always 25), as two depthwise 5-tap convolutions.

    The same map as ``nn.AvgPool2d(5, stride=1, padding=2)``; on CPUs its backward pass is ~20x faster in NCHW.
    """
    c = x.shape[1]
    taps = torch.full((c, 1, 5, 1), 0.2, dtype=x.dtype, device=x.device)
    x = F.conv2d(x, taps, padding=(2, 0), groups=c)
    return F.conv2d(x, taps.transpose(2, 3), padding=(0, 2), groups=c)


def max_pool5(x: torch.Tensor) -> torch.Tensor:
    """5x5 stride-1 max pool, padding 2 (the padding never wins): NCSNv2's chained residual pooling."""
    return F.max_pool2d(x, 5, stride=1, padding=2)


POOLS = {"mean": mean_pool5, "max": max_pool5}


class CRPBlock(nn.Module):
    """Chained residual pooling: ELU, then n_stages of [norm ->] 5x5 pool -> bias-free conv, each summed in."""

    def __init__(self, features: int, n_stages: int, norm: Norm | None, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
        self.act = nn.ELU()
        self.pool = POOLS[pool]
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.norms = None if norm is None else nn.ModuleList(norm(features) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.act(x)
        path = x
        for i, conv in enumerate(self.convs):
            path = conv(self.pool(path if self.norms is None else self.norms[i](path, y)))
            x = path + x
        return x


class RefineBlock(nn.Module):
    """RefineNet block: an RCU per input, fusion of several inputs, chained residual pooling, output RCU."""

    def __init__(self, in_planes: list[int], features: int, norm: Norm | None, pool: str = "mean", end: bool = False):
        super().__init__()
        self.adapt_convs = nn.ModuleList(RCUBlock(c, 2, 2, norm) for c in in_planes)
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, norm)
        self.msf = MSFBlock(in_planes, features, norm) if len(in_planes) > 1 else None
        self.crp = CRPBlock(features, 2, norm, pool)

    def forward(self, xs: list[torch.Tensor], y: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
        h = hs[0] if self.msf is None else self.msf(hs, y, shape)
        return self.output_convs(self.crp(h, y), y)
