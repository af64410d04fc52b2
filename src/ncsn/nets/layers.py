"""Building blocks of the paper's CondRefineNetDilated (SPEC §3).

Attribute names follow the official checkpoints, so their state_dicts load by name into these modules.
Every block takes ``(x, y)`` where ``y`` holds one noise-level index per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cond_norm import cond_instance_norm


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
        gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
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


class CondResidualBlock(nn.Module):
    """Pre-activation residual block: norm -> ELU -> conv -> norm -> ELU -> conv, plus shortcut.

    ``down`` with no dilation halves the resolution (conv-then-mean-pool); ``down`` with a dilation keeps the size
    and only gives the block a dilated 3x3 shortcut conv, as in the reference network.
    """

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, down: bool = False, dilation: int = 1):
        super().__init__()
        self.normalize1 = CondInstanceNormPlusPlus(in_ch, num_classes)
        if down:
            self.conv1 = conv3x3(in_ch, in_ch, dilation=dilation)
            self.normalize2 = CondInstanceNormPlusPlus(in_ch, num_classes)
            if dilation > 1:
                self.conv2 = conv3x3(in_ch, out_ch, dilation=dilation)
                self.shortcut = conv3x3(in_ch, out_ch, dilation=dilation)
            else:
                self.conv2 = ConvMeanPool(in_ch, out_ch, 3)
                self.shortcut = ConvMeanPool(in_ch, out_ch, 1)
        else:
            self.conv1 = conv3x3(in_ch, out_ch, dilation=dilation)
            self.normalize2 = CondInstanceNormPlusPlus(out_ch, num_classes)
            self.conv2 = conv3x3(out_ch, out_ch, dilation=dilation)
            if in_ch != out_ch:
                self.shortcut = conv3x3(in_ch, out_ch, dilation=dilation) if dilation > 1 else nn.Conv2d(in_ch, out_ch, 1)
            else:
                self.shortcut = None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.normalize1(x, y, activation=True))
        h = self.conv2(self.normalize2(h, y, activation=True))
        return h.add_(x if self.shortcut is None else self.shortcut(x))  # conv outputs are not saved for backward


class CondRCUBlock(nn.Module):
    """Residual conv unit: n_blocks residual blocks of n_stages (norm -> ELU -> bias-free conv3x3)."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, num_classes: int):
        super().__init__()
        self.n_blocks, self.n_stages = n_blocks, n_stages
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                setattr(self, f"{i}_{j}_norm", CondInstanceNormPlusPlus(features, num_classes))
                setattr(self, f"{i}_{j}_conv", conv3x3(features, features, bias=False))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = getattr(self, f"{i}_{j}_conv")(getattr(self, f"{i}_{j}_norm")(x, y, activation=True))
            x = x.add_(residual)
        return x


class CondMSFBlock(nn.Module):
    """Multi-resolution fusion: norm -> conv3x3 (with bias) per input, bilinear resize to one size, then sum."""

    def __init__(self, in_planes: list[int], features: int, num_classes: int):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, features, bias=True) for c in in_planes)
        self.norms = nn.ModuleList(CondInstanceNormPlusPlus(c, num_classes) for c in in_planes)

    def forward(self, xs: list[torch.Tensor], y: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        total = None
        for x, norm, conv in zip(xs, self.norms, self.convs):
            h = conv(norm(x, y))
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


class CondCRPBlock(nn.Module):
    """Chained residual pooling: ELU, then n_stages of norm -> 5x5 average pool -> bias-free conv, each summed in."""

    def __init__(self, features: int, n_stages: int, num_classes: int):
        super().__init__()
        self.act = nn.ELU()
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))
        self.norms = nn.ModuleList(CondInstanceNormPlusPlus(features, num_classes) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for norm, conv in zip(self.norms, self.convs):
            path = conv(mean_pool5(norm(path, y)))
            x = path + x
        return x


class CondRefineBlock(nn.Module):
    """RefineNet block: an RCU per input, fusion of several inputs, chained residual pooling, output RCU."""

    def __init__(self, in_planes: list[int], features: int, num_classes: int, end: bool = False):
        super().__init__()
        self.adapt_convs = nn.ModuleList(CondRCUBlock(c, 2, 2, num_classes) for c in in_planes)
        self.output_convs = CondRCUBlock(features, 3 if end else 1, 2, num_classes)
        self.msf = CondMSFBlock(in_planes, features, num_classes) if len(in_planes) > 1 else None
        self.crp = CondCRPBlock(features, 2, num_classes)

    def forward(self, xs: list[torch.Tensor], y: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
        h = hs[0] if self.msf is None else self.msf(hs, y, shape)
        return self.output_convs(self.crp(h, y), y)
