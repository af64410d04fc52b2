"""CondRefineNetDilated: the noise-conditional score network of Song & Ermon (2019), SPEC §3."""

from __future__ import annotations

import torch
from torch import nn

from .layers import CondInstanceNormPlusPlus, CondRefineBlock, CondResidualBlock


class CondRefineNetDilated(nn.Module):
    """The paper's network: maps images in [0, 1] and level indices to raw scores of the same shape.

    Encoder: four stages of two residual blocks (only res2 halves the resolution; res3/res4 are dilated).
    Decoder: four RefineNet blocks back to full resolution. Input is fed as 2x - 1; the output is not divided
    by sigma (that is the wrapper's business). Any even image size works (8, 16, 28, 32, 64).
    """

    def __init__(self, in_channels: int = 3, ngf: int = 128, num_classes: int = 10):
        super().__init__()
        self.in_channels, self.ngf, self.num_classes = in_channels, ngf, num_classes
        self.begin_conv = nn.Conv2d(in_channels, ngf, 3, padding=1)
        self.normalizer = CondInstanceNormPlusPlus(ngf, num_classes)
        self.end_conv = nn.Conv2d(ngf, in_channels, 3, padding=1)
        g2 = 2 * ngf
        self.res1 = nn.ModuleList([CondResidualBlock(ngf, ngf, num_classes), CondResidualBlock(ngf, ngf, num_classes)])
        self.res2 = nn.ModuleList(
            [CondResidualBlock(ngf, g2, num_classes, down=True), CondResidualBlock(g2, g2, num_classes)]
        )
        self.res3 = nn.ModuleList(
            [
                CondResidualBlock(g2, g2, num_classes, down=True, dilation=2),
                CondResidualBlock(g2, g2, num_classes, dilation=2),
            ]
        )
        self.res4 = nn.ModuleList(
            [
                CondResidualBlock(g2, g2, num_classes, down=True, dilation=4),
                CondResidualBlock(g2, g2, num_classes, dilation=4),
            ]
        )
        self.refine1 = CondRefineBlock([g2], g2, num_classes)
        self.refine2 = CondRefineBlock([g2, g2], g2, num_classes)
        self.refine3 = CondRefineBlock([g2, g2], ngf, num_classes)
        self.refine4 = CondRefineBlock([ngf, ngf], ngf, num_classes, end=True)

    @staticmethod
    def _stage(blocks: nn.ModuleList, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block(x, y)
        return x

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"image height and width must be even, got {tuple(x.shape[-2:])}")
        h = self.begin_conv(2 * x - 1)
        layer1 = self._stage(self.res1, h, y)
        layer2 = self._stage(self.res2, layer1, y)
        layer3 = self._stage(self.res3, layer2, y)
        layer4 = self._stage(self.res4, layer3, y)
        ref1 = self.refine1([layer4], y, layer4.shape[-2:])
        ref2 = self.refine2([layer3, ref1], y, layer3.shape[-2:])
        ref3 = self.refine3([layer2, ref2], y, layer2.shape[-2:])
        out = self.refine4([layer1, ref3], y, layer1.shape[-2:])
        return self.end_conv(self.normalizer(out, y, activation=True))
