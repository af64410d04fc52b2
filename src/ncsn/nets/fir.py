"""FIR up- and down-sampling (StyleGAN2's upfirdn2d) as plain PyTorch convolutions, for NCSN++.

``upfirdn2d`` zero-stuffs each image by ``up``, pads it, correlates it with the flipped 2-D filter and keeps every
``down``-th sample: a depthwise ``conv2d``, so it runs on any device, with autograd, and needs no compiled op. The
resamplers below use Score-SDE's paddings for a separable kernel (default [1, 3, 3, 1]) normalised to sum to 1
(times factor² when upsampling, so a constant image stays constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fir_kernel_2d(kernel: Sequence[float], gain: float = 1.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """The outer product of a 1-D kernel with itself, normalised to sum to ``gain``. Plain Python arithmetic (in
    double precision) on the kernel's numbers, so torch.compile folds it into a constant instead of breaking its
    graph at every resampling."""
    try:
        k = [float(v) for v in kernel]
    except (TypeError, ValueError):
        k = []
    if not k or sum(k) == 0:
        raise ValueError(f"fir kernel must be a non-empty 1-D list with a non-zero sum, got {list(kernel)}")
    scale = gain / sum(k) ** 2
    return torch.tensor([[a * b * scale for b in k] for a in k], dtype=dtype, device=device)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (before, after; negative crops) on both axes, FIR filter, then decimate."""
    n, c, h, w = x.shape
    if up > 1:  # each sample followed by up - 1 zeros along both axes
        x = F.pad(x.reshape(n, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: torch.Tensor, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, factor·H, factor·W) through the FIR filter."""
    k = fir_kernel_2d(kernel, factor**2, x.device)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/factor, W/factor) through the FIR filter."""
    k = fir_kernel_2d(kernel, 1.0, x.device)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def conv_downsample_2d(x: torch.Tensor, weight: torch.Tensor, kernel: Sequence[float] = (1, 3, 3, 1),
                       factor: int = 2) -> torch.Tensor:
    """The FIR filter followed by a strided convolution, padded once (StyleGAN2's fused conv-down)."""
    k = fir_kernel_2d(kernel, 1.0, x.device)
    p = (k.shape[0] - factor) + (weight.shape[-1] - 1)
    return F.conv2d(upfirdn2d(x, k, pad=((p + 1) // 2, p // 2)), weight, stride=factor)


class FIRDownConv2d(nn.Module):
    """A k×k convolution that halves the image through the FIR filter (Score-SDE's ``Conv2d(down=True)``);
    ``weight`` (out, in, k, k) and ``bias`` keep the official names."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.fir_kernel = tuple(float(v) for v in fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_downsample_2d(x, self.weight, self.fir_kernel) + self.bias.view(1, -1, 1, 1)
