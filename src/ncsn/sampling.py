"""The samplers' former home, kept so ``from ncsn.sampling import ...`` goes on working; they live in ``ncsn.samplers``."""

from .samplers.common import Generators, ScoreFn, per_example_generators, randn, uniform_init
from .samplers.langevin import CONVENTIONS, annealed_langevin, langevin_update, step_sizes

__all__ = ["CONVENTIONS", "Generators", "ScoreFn", "annealed_langevin", "langevin_update", "per_example_generators",
           "randn", "step_sizes", "uniform_init"]
