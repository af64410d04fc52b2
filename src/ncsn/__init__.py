"""ncsn: noise-conditional score networks (Song & Ermon, 2019) and their published follow-ups, in PyTorch."""

from .likelihood import bits_per_dim, log_density
from .losses import Objective, dsm_loss, ssm_loss
from .nets import (
    CondInstanceNormPlusPlus,
    CondRefineNetDilated,
    InstanceNormPlusPlus,
    NCSNpp,
    NCSNv2,
    NCSNv2Deeper,
    NCSNv2Deepest,
)
from .samplers import (
    SamplerSettings,
    annealed_langevin,
    heun_sampler,
    ode_sampler,
    pc_sampler,
    per_example_generators,
    run_sampler,
    uniform_init,
)
from .schedules import karras_sigmas, ve_sde_sigmas
from .score_model import ModelConfig, NCSNppConfig, ScoreModel, build_score_model
from .sigmas import SigmaOffLadderError, geometric_sigmas, ladder_levels

__version__ = "0.1.0"

__all__ = [
    "CondInstanceNormPlusPlus",
    "CondRefineNetDilated",
    "InstanceNormPlusPlus",
    "ModelConfig",
    "NCSNpp",
    "NCSNppConfig",
    "NCSNv2",
    "NCSNv2Deeper",
    "NCSNv2Deepest",
    "Objective",
    "SamplerSettings",
    "ScoreModel",
    "SigmaOffLadderError",
    "annealed_langevin",
    "bits_per_dim",
    "build_score_model",
    "dsm_loss",
    "geometric_sigmas",
    "heun_sampler",
    "karras_sigmas",
    "ladder_levels",
    "log_density",
    "ode_sampler",
    "pc_sampler",
    "per_example_generators",
    "run_sampler",
    "ssm_loss",
    "uniform_init",
    "ve_sde_sigmas",
]
