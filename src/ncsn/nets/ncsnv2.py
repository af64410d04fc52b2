"""The NCSNv2 networks (Song & Ermon, 2020): the RefineNet of NCSN made unconditional, in three depths.

InstanceNorm++ without conditioning, no norms inside the refine blocks, max pooling in the chained residual
pooling. The network sees only x (fed as 2x - 1, as the official configs do with ``rescaled: false``); the wrapper
divides its output by sigma. ``NCSNv2`` is for images up to 64 px (CIFAR-10, CelebA-64), ``NCSNv2Deeper`` adds a
stage for LSUN at 96-128 px and ``NCSNv2Deepest`` another for FFHQ at 256 px. State_dict names are the official
ones (the official ``sigmas`` buffer lives in the wrapper).
"""

from __future__ import annotations

import torch

from .layers import InstanceNormPlusPlus
from .refinenet import NCSN_STAGES, RefineNet, Stage

# The deeper encoders halve the size in res2 and res3 (and res31), then dilate by 2 and 4 at 4 * ngf channels.
DEEPER_STAGES = (
    Stage("res1", "refine5", 1),
    Stage("res2", "refine4", 2, down=True),
    Stage("res3", "refine3", 2, down=True),
    Stage("res4", "refine2", 4, down=True, dilation=2),
    Stage("res5", "refine1", 4, down=True, dilation=4),
)
DEEPEST_STAGES = DEEPER_STAGES[:3] + (Stage("res31", "refine31", 2, down=True),) + DEEPER_STAGES[3:]


class _Unconditional(RefineNet):
    """An NCSNv2 network: ``net(x)`` with x in [0, 1]; the score at sigma is ``net(x) / sigma``."""

    level_conditioned = False
    STAGES: tuple[Stage, ...] = ()

    def __init__(self, in_channels: int = 3, ngf: int = 128):
        super().__init__(in_channels, ngf, self.STAGES, InstanceNormPlusPlus, refine_norms=False, pool="max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, None)


class NCSNv2(_Unconditional):
    """CIFAR-10 / CelebA-64 network: NCSN's stages (29,694,083 parameters at ngf 128, 3 channels)."""

    STAGES = NCSN_STAGES


class NCSNv2Deeper(_Unconditional):
    """LSUN 96-128 px network: five stages, two of them halving (83,445,379 parameters at ngf 128, 3 channels)."""

    STAGES = DEEPER_STAGES


class NCSNv2Deepest(_Unconditional):
    """FFHQ 256 px network: six stages, three of them halving (94,132,611 parameters at ngf 128, 3 channels)."""

    STAGES = DEEPEST_STAGES
