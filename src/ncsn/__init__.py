"""ncsn: noise-conditional score networks (Song & Ermon, 2019) and their published follow-ups, in PyTorch."""

from .losses import dsm_loss, ssm_loss
from .nets import CondInstanceNormPlusPlus, CondRefineNetDilated
from .sampling import annealed_langevin, per_example_generators, uniform_init
from .score_model import ModelConfig, ScoreModel, build_score_model
from .sigmas import geometric_sigmas, sigma_to_level

__version__ = "0.1.0"

__all__ = [
    "CondInstanceNormPlusPlus",
    "CondRefineNetDilated",
    "ModelConfig",
    "ScoreModel",
    "annealed_langevin",
    "build_score_model",
    "dsm_loss",
    "geometric_sigmas",
    "per_example_generators",
    "sigma_to_level",
    "ssm_loss",
    "uniform_init",
]
