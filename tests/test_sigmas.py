import math

import pytest
import torch

from ncsn import SigmaOffLadderError, geometric_sigmas, ladder_levels
from ncsn.sigmas import max_pairwise_distance, ncsnv2_num_scales, ncsnv2_ratio, ncsnv2_step_criterion, ncsnv2_step_lr

PAPER = [1.0, 0.5995, 0.3594, 0.2154, 0.1292, 0.0774, 0.0464, 0.0278, 0.0167, 0.01]


def test_paper_ladder_values():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (10,)
    assert torch.allclose(sigmas, torch.tensor(PAPER), atol=6e-5)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    ratios = sigmas[:-1] / sigmas[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, 10 ** (2 / 9)), rtol=1e-5)


def test_ladder_device_dtype_and_bad_input():
    assert geometric_sigmas(50.0, 0.01, 232, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="positive"):
        geometric_sigmas(-1.0, 0.01, 10)
    with pytest.raises(ValueError, match="exceed"):
        geometric_sigmas(0.01, 1.0, 10)


def test_ladder_levels_finds_each_sigma_and_refuses_the_rest():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert ladder_levels(sigmas, sigmas[[0, 9, 3, 3]]).tolist() == [0, 9, 3, 3]
    assert ladder_levels(sigmas, sigmas[[4]] * (1 - 9e-5)).tolist() == [4]
    for off in (0.6, 0.02, 5.0, sigmas[4].item() * (1 + 2e-4)):
        with pytest.raises(SigmaOffLadderError, match="not on this level-conditioned network's ladder"):
            ladder_levels(sigmas, torch.tensor([1.0, off]))


def test_ncsnv2_rules_reproduce_published_values():
    gamma_v1 = 1 / 0.5995
    assert ncsnv2_step_criterion(2e-5, 100, 0.01, 10 ** (2 / 9)) == pytest.approx(1.111, abs=2e-3)
    # CIFAR-10 in NCSNv2: sigma 50 -> 0.01 with 232 levels, T = 5, eps ~ 6.2e-6.
    ratio = (50 / 0.01) ** (1 / 231)
    assert ncsnv2_step_lr(5, 0.01, ratio) == pytest.approx(6.2e-6, rel=0.03)
    assert 215 <= ncsnv2_num_scales(50.0, 0.01, 3072) <= 235  # the paper rounded up to 232
    assert 1.0 < ncsnv2_ratio(3072) < gamma_v1


def test_max_pairwise_distance_equals_brute_force_and_subsamples_by_seed():
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    assert max_pairwise_distance(pts) == (pytest.approx(5.0), (0, 1))
    assert max_pairwise_distance(torch.eye(4))[0] == pytest.approx(math.sqrt(2))
    data = torch.rand(300, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    flat = data.flatten(1).double()
    brute = torch.pdist(flat).max().item()  # all 44,850 pairs at once, in float64
    best, (i, j) = max_pairwise_distance(data, chunk=7)  # chunks of 7 rows: the maximum is found across chunks
    assert best == pytest.approx(brute, rel=1e-12) and (flat[i] - flat[j]).norm().item() == best
    ints = torch.randint(0, 256, (300, 1, 4, 5), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    found, (i, j) = max_pairwise_distance(ints, chunk=7)  # uint8 points, compared in float blocks of 7 x 7
    assert found == torch.pdist(ints.flatten(1).double()).max().item() and i < j
    assert found == (ints[i].double() - ints[j].double()).norm().item()
    sub = max_pairwise_distance(data, max_points=50, seed=1)
    assert sub == max_pairwise_distance(data, max_points=50, seed=1) and sub != max_pairwise_distance(data, 50, seed=2)
    assert sub[0] <= best
    with pytest.raises(ValueError, match="two points"):
        max_pairwise_distance(data[:1])
