"""Shared fixtures: small deterministic settings so the suite runs on two CPU cores."""

import pathlib

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


def gaussian_score(mu: float, s: float, sigmas: torch.Tensor):
    """Exact score of N(mu, s^2 I) perturbed by N(0, sigma_l^2 I), indexed by level label."""

    def score(x, labels):
        var = s**2 + sigmas.to(x.device)[labels].view(-1, *([1] * (x.dim() - 1))) ** 2
        return -(x - mu) / var

    return score
