"""ncsn: noise-conditional score networks (Song & Ermon, 2019) and their published follow-ups, in PyTorch."""

from .losses import dsm_loss, ssm_loss
from .nets import (
    CondInstanceNormPlusPlus,
    CondRefineNetDilated,
    InstanceNormPlusPlus,
    NCSNv2,
    NCSNv2Deeper,
    NCSNv2Deepest,
)
from .sampling import annealed_langevin, per_example_generators, uniform_init
from .score_model import ModelConfig, ScoreModel, build_score_model
from .sigmas import SigmaOffLadderError, geometric_sigmas, ladder_levels

__version__ = "0.1.0"

__all__ = [
    "CondInstanceNormPlusPlus",
    "CondRefineNetDilated",
    "InstanceNormPlusPlus",
    "ModelConfig",
    "NCSNv2",
    "NCSNv2Deeper",
    "NCSNv2Deepest",
    "ScoreModel",
    "SigmaOffLadderError",
    "annealed_langevin",
    "build_score_model",
    "dsm_loss",
    "geometric_sigmas",
    "ladder_levels",
    "per_example_generators",
    "ssm_loss",
    "uniform_init",
]
