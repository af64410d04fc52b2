"""The RefineNet score network as a table of encoder stages, and the paper's CondRefineNetDilated (SPEC §3)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from .layers import CondInstanceNormPlusPlus, Norm, RefineBlock, ResidualBlock


@dataclass(frozen=True)
class Stage:
    """One encoder stage (two residual blocks) and the refine block that decodes it; names are checkpoint names."""

    name: str  # the encoder's attribute, e.g. "res2"
    refine: str  # the decoder's attribute for this stage's skip connection, e.g. "refine3"
    mult: int  # channels = mult * ngf
    down: bool = False  # the first block is a "down" block (halves the size unless dilated)
    dilation: int = 1


# NCSN's encoder: only res2 halves the size; res3/res4 are "down" blocks that dilate instead.
NCSN_STAGES = (
    Stage("res1", "refine4", 1),
    Stage("res2", "refine3", 2, down=True),
    Stage("res3", "refine2", 2, down=True, dilation=2),
    Stage("res4", "refine1", 2, down=True, dilation=4),
)


class RefineNet(nn.Module):
    """begin conv -> encoder stages -> one refine block per stage, deepest first -> norm -> ELU -> end conv.

    The refine block of a stage fuses that stage's output with the deeper refine output and has as many
    channels as the next shallower stage (ngf at the top). Input is fed as 2x - 1; the output is not divided by
    sigma (that is the wrapper's business). ``norm`` builds every norm; ``refine_norms=False`` leaves the refine
    blocks without norms and ``pool`` picks the chained residual pooling ("mean" or "max").
    """

    level_conditioned = False

    def __init__(self, in_channels: int, ngf: int, stages: tuple[Stage, ...], norm: Norm, refine_norms: bool,
                 pool: str):
        super().__init__()
        self.in_channels, self.ngf, self.stages = in_channels, ngf, stages
        self.size_multiple = 2 ** sum(s.down and s.dilation == 1 for s in stages)
        self.begin_conv = nn.Conv2d(in_channels, ngf, 3, padding=1)
        self.normalizer = norm(ngf)
        self.end_conv = nn.Conv2d(ngf, in_channels, 3, padding=1)
        prev = ngf
        for s in stages:
            ch = s.mult * ngf
            blocks = [ResidualBlock(prev, ch, norm, down=s.down, dilation=s.dilation),
                      ResidualBlock(ch, ch, norm, dilation=s.dilation)]
            setattr(self, s.name, nn.ModuleList(blocks))
            prev = ch
        refine_norm = norm if refine_norms else None
        widths = [s.mult * ngf for s in stages]
        for i in reversed(range(len(stages))):
            deepest, top = i == len(stages) - 1, i == 0
            in_planes = [widths[i]] if deepest else [widths[i], widths[i]]
            out = ngf if top else widths[i - 1]
            setattr(self, stages[i].refine, RefineBlock(in_planes, out, refine_norm, pool, end=top))

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            need = "even" if m == 2 else f"multiples of {m} for {type(self).__name__}"
            raise ValueError(f"image height and width must be {need}, got {tuple(x.shape[-2:])}")

    def features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The raw network output for images x in [0, 1] (y: level indices, or None for unconditional norms)."""
        self.check_input(x)
        h = self.begin_conv(2 * x - 1)
        skips = []
        for s in self.stages:
            for block in getattr(self, s.name):
                h = block(h, y)
            skips.append(h)
        out = None
        for s, skip in zip(reversed(self.stages), reversed(skips)):
            out = getattr(self, s.refine)([skip] if out is None else [skip, out], y, skip.shape[-2:])
        return self.end_conv(self.normalizer(out, y, activation=True))


class CondRefineNetDilated(RefineNet):
    """The paper's network: maps images in [0, 1] and level indices to raw scores of the same shape.

    CondInstanceNorm++ everywhere (refine blocks included), mean pooling in the chained residual pooling. Any
    even image size works (8, 16, 28, 32, 64).
    """

    level_conditioned = True

    def __init__(self, in_channels: int = 3, ngf: int = 128, num_classes: int = 10):
        super().__init__(in_channels, ngf, NCSN_STAGES, partial(CondInstanceNormPlusPlus, num_classes=num_classes),
                         refine_norms=True, pool="mean")
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Raw scores for images x in [0, 1] at level indices y (int64, one per example)."""
        return self.features(x, y)
