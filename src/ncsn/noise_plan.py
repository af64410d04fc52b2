"""NCSNv2's techniques computed for a dataset: sigma_1 from the data, the number of levels from the dimension, and
the Langevin step size from the steps per level (Song & Ermon 2020, techniques 1, 2 and 4; SPEC §9).

The official v2 code types these numbers into YAML per dataset; here they come from the training images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import InputError
from .sigmas import (
    OVERLAP_TARGET, max_pairwise_distance, ncsnv2_num_scales, ncsnv2_overlap, ncsnv2_ratio, ncsnv2_step_criterion,
    ncsnv2_step_lr, subsample_index,
)


@dataclass(frozen=True)
class NoisePlan:
    """A geometric ladder sigma_max -> sigma_min with num_scales levels and the step size for steps_each steps."""

    dim: int
    n_images: int
    n_compared: int
    farthest_pair: tuple[int, int]
    sigma_max: float
    sigma_min: float
    target: float
    gamma_rule: float
    num_scales: int
    gamma: float
    overlap: float
    steps_each: int
    step_lr: float
    step_criterion: float

    def as_dict(self) -> dict:
        return asdict(self)

    def config_overrides(self) -> dict:
        """The config keys this plan sets (model ladder and sampler step)."""
        return {
            "model": {"sigma_max": self.sigma_max, "sigma_min": self.sigma_min, "num_scales": self.num_scales},
            "sampling": {"ald": {"n_steps_each": self.steps_each, "step_lr": self.step_lr}},
        }

    def describe(self) -> str:
        """A few lines for a terminal: each number and where it came from."""
        i, j = self.farthest_pair
        return "\n".join([
            f"data: {self.n_images} images of D = {self.dim}; pairs compared over {self.n_compared} of them",
            f"sigma_1 (technique 1): {self.sigma_max:.4f} = distance between training images {i} and {j}",
            f"ratio (technique 2): gamma = {self.gamma_rule:.6f} solves overlap(gamma) = {self.target}",
            f"levels: L = {self.num_scales} from sigma_1 to sigma_L = {self.sigma_min} "
            f"(actual gamma {self.gamma:.6f}, overlap {self.overlap:.4f})",
            f"step size (technique 4): eps = {self.step_lr:.4g} for T = {self.steps_each} steps per level "
            f"(criterion {self.step_criterion:.4f}; 1 is ideal)",
            f"sampling cost: {self.num_scales * self.steps_each} network evaluations per sample",
        ])


def ladder_plan(sigma_max: float, dim: int, steps_each: int, sigma_min: float = 0.01, target: float = OVERLAP_TARGET,
                num_scales: int | None = None) -> dict:
    """Techniques 2 and 4 for a given sigma_1 and dimension; ``num_scales`` overrides the rule's L (as a shipped
    config does) and the step size then follows from that ladder's actual ratio."""
    if not sigma_max > sigma_min > 0:
        raise InputError(f"need sigma_max > sigma_min > 0, got {sigma_max} and {sigma_min}")
    if steps_each < 1:
        raise InputError(f"steps_each must be >= 1, got {steps_each}")
    gamma_rule = ncsnv2_ratio(dim, target)
    levels = num_scales or ncsnv2_num_scales(sigma_max, sigma_min, dim, target)
    gamma = (sigma_max / sigma_min) ** (1 / (levels - 1))
    step_lr = ncsnv2_step_lr(steps_each, sigma_min, gamma)
    return {
        "sigma_max": sigma_max, "sigma_min": sigma_min, "target": target, "gamma_rule": gamma_rule,
        "num_scales": levels, "gamma": gamma, "overlap": ncsnv2_overlap(dim, gamma), "steps_each": steps_each,
        "step_lr": step_lr, "step_criterion": ncsnv2_step_criterion(step_lr, steps_each, sigma_min, gamma),
    }


def noise_plan(images: torch.Tensor | np.ndarray, steps_each: int = 5, sigma_min: float = 0.01,
               target: float = OVERLAP_TARGET, max_points: int = 10_000, seed: int = 0) -> NoisePlan:
    """The full NCSNv2 plan for training images (uint8 in [0, 255] or float in [0, 1], shape (N, C, H, W)).

    ``images`` may be a memory-mapped array: only the ``max_points`` compared rows are read, and they stay uint8
    while blocks of them are compared in float32, so memory is bounded whatever the dataset's size.
    """
    n, dim = len(images), math.prod(images.shape[1:])
    if n < 2:
        raise InputError(f"the noise plan needs at least two training images to measure sigma_1, got {n}")
    index = subsample_index(n, max_points, seed)
    if isinstance(images, torch.Tensor):
        rows = images[index]
    else:  # a numpy or memory-mapped array: gather the chosen rows only
        rows = torch.from_numpy(np.ascontiguousarray(images[index.numpy()]))
    distance, (i, j) = max_pairwise_distance(rows, max_points=len(rows))  # uint8 rows stay uint8 until compared
    sigma_max = distance / 255.0 if rows.dtype == torch.uint8 else distance
    rest = ladder_plan(sigma_max, dim, steps_each, sigma_min, target)
    pair = (int(index[i]), int(index[j]))
    return NoisePlan(dim=dim, n_images=n, n_compared=len(index), farthest_pair=pair, **rest)
