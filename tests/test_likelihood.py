"""Exact likelihood under the probability-flow ODE: Gaussian closed forms, Hutchinson's estimator, bits/dim."""

import itertools
import math

import pytest
import torch

from ncsn import CondRefineNetDilated, ScoreModel, SigmaOffLadderError, bits_per_dim, geometric_sigmas, log_density
from ncsn.likelihood import draw_probes, hutchinson_divergence

from .conftest import gaussian_score

SIGMAS = geometric_sigmas(1.0, 0.01, 10)


def model_log_density(x, mu, s, sigma_min, sigma_max):
    """Closed form of what the ODE likelihood computes for data N(mu, s^2 I) with prior N(0, sigma_max^2 I):
    the flow carries x - mu to (x - mu) sqrt((s^2 + smax^2)/(s^2 + smin^2)) and the divergence of
    dx/dlog(sigma) = sigma^2 (x - mu)/(s^2 + sigma^2) integrates to D/2 log((s^2 + smax^2)/(s^2 + smin^2))."""
    dim = x[0].numel()
    ratio = (s**2 + sigma_max**2) / (s**2 + sigma_min**2)
    end = mu + (x - mu) * math.sqrt(ratio)
    prior = -0.5 * dim * math.log(2 * math.pi * sigma_max**2) - end.flatten(1).pow(2).sum(1) / (2 * sigma_max**2)
    return prior + 0.5 * dim * math.log(ratio)


def gaussian_log_density(x, mu, var):
    dim = x[0].numel()
    return -0.5 * dim * math.log(2 * math.pi * var) - (x - mu).flatten(1).pow(2).sum(1) / (2 * var)


def test_log_density_of_gaussian_data_equals_the_closed_form():
    """Rademacher probes are exact for an isotropic Gaussian (e^T c I e = c D), so only the solver errs."""
    mu, s, smin, smax = 0.3, 0.2, 0.01, 3.0
    x = mu + s * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    info = {}
    logp = log_density(gaussian_score(mu, s, SIGMAS), x, smin, smax, generator=torch.Generator().manual_seed(1),
                       info=info)
    assert torch.allclose(logp, model_log_density(x, mu, s, smin, smax), rtol=0, atol=2e-3)
    assert info["nfe"] > 10 and info["solver_steps"] >= 1
    # with a prior that matches the data's sigma_max marginal closely, it is the data's own density at sigma_min
    centred = s * torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    logp = log_density(gaussian_score(0.0, s, SIGMAS), centred, smin, 50.0)
    assert torch.allclose(logp, gaussian_log_density(centred, 0.0, s**2 + smin**2), rtol=0, atol=0.02)


def test_gaussian_probes_give_the_closed_form_on_average():
    mu, s, smin, smax = 0.3, 0.2, 0.01, 3.0
    x = (mu + s * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))).expand(400, 1, 4, 4)
    logp = log_density(gaussian_score(mu, s, SIGMAS), x.contiguous(), smin, smax, rtol=1e-4, atol=1e-4,
                       probe="gaussian", generator=torch.Generator().manual_seed(3))
    exact = model_log_density(x[:1], mu, s, smin, smax).item()
    assert logp.std().item() > 1.0  # the probes do vary ...
    assert logp.mean().item() == pytest.approx(exact, abs=4 * logp.std().item() / 20)  # ... and average out


def test_hutchinson_over_all_rademacher_probes_is_the_exact_trace():
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    probes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)))
    x = torch.randn(1, 4).expand(16, 4)
    out, div = hutchinson_divergence(lambda y: y @ a.T, x, probes)
    assert torch.allclose(out, x @ a.T)
    assert div.mean().item() == pytest.approx(torch.trace(a).item(), abs=1e-5)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_a_nonlinear_map(probe):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    x0 = torch.randn(1, 5)
    exact = torch.trace(torch.autograd.functional.jacobian(lambda y: net(y.unsqueeze(0))[0], x0[0])).item()
    k = 100_000
    probes = draw_probes((k, 5), probe, torch.Generator().manual_seed(1))
    if probe == "rademacher":
        assert set(probes.unique().tolist()) == {-1.0, 1.0}
    _, div = hutchinson_divergence(net, x0.expand(k, 5), probes)
    assert div.mean().item() == pytest.approx(exact, abs=4 * div.std().item() / math.sqrt(k))


def test_bits_per_dim_of_a_discretised_gaussian_is_minus_log2_of_its_bin_probabilities():
    """Independent truth: under data N(mu, s^2) seen through sigma_min, pixel value k has probability
    P(k) = Phi(((k + 1)/256 - mu)/s') - Phi((k/256 - mu)/s'), s'^2 = s^2 + sigma_min^2 (erf), and the bits/dim of an
    image is the mean of -log2 P(k) over its pixels. Uniform dequantisation bounds that from above by a gap of order
    (bin width / s)^2, far below the 3e-3 bits tolerance, which catches a 255-for-256 scale (5.6e-3 bits) or a
    missing 8-bit offset. sigma_max = 500 makes the N(0, sigma_max^2) prior match the data's marginal there."""
    mu, s, smin, smax, reps = 0.5, 0.2, 0.01, 500.0, 8
    score = gaussian_score(mu, s, SIGMAS)
    noise = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = (mu + s * noise).mul(256).floor().clamp(0, 255).to(torch.uint8)
    info = {}
    bpd = bits_per_dim(score, images.repeat_interleave(reps, 0), smin, smax, generator=torch.Generator().manual_seed(5),
                       info=info)
    sd, k = math.sqrt(s**2 + smin**2), images.double().flatten(1).tolist()
    phi = [[0.5 * (1 + math.erf((v - mu) / (sd * math.sqrt(2)))) for v in ((j + 1) / 256, j / 256)] for row in k
           for j in row]
    truth = torch.tensor([-math.log2(hi - lo) for hi, lo in phi], dtype=torch.float64).view(6, 16).mean(1)
    assert torch.allclose(bpd.view(6, reps).double().mean(1), truth, rtol=0, atol=3e-3)
    assert info["nfe"] > 0
    # uint8 images or floats on the 8-bit grid are the same values
    uint8, floats = (bits_per_dim(score, x, smin, smax, generator=torch.Generator().manual_seed(5))
                     for x in (images, images.float() / 255))
    assert torch.allclose(floats, uint8, atol=1e-5)


@pytest.mark.parametrize("images, shape, message", [
    (torch.zeros(1, 4, 4, dtype=torch.uint8), None, r"must be \(N, C, H, W\), got shape \(1, 4, 4\)"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), (1, 8, 8),
     r"images of shape \(1, 4, 4\), the model takes \(1, 8, 8\)"),
    (torch.full((2, 1, 4, 4), -1.0), None, r"float images must lie in \[0, 1\].*got values in \[-1, -1\]"),
    (torch.full((2, 1, 4, 4), float("nan")), None, r"float images must lie in \[0, 1\]"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.int32), None, "must be uint8 or floats in"),
])
def test_bad_images_are_one_clear_line(images, shape, message):
    with pytest.raises(ValueError, match=message):
        bits_per_dim(gaussian_score(0.5, 0.2, SIGMAS), images, 0.01, 1.0, image_shape=shape)


def test_bad_settings_and_a_level_conditioned_network_are_refused():
    score, x = gaussian_score(0.5, 0.2, SIGMAS), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max, got sigma_min=1.0, sigma_max=0.5"):
        log_density(score, x, 1.0, 0.5)
    with pytest.raises(ValueError, match="rtol and atol must be positive"):
        log_density(score, x, 0.01, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="probe must be one of"):
        log_density(score, x, 0.01, 1.0, probe="sphere")
    model = ScoreModel(CondRefineNetDilated(1, 4, 10), SIGMAS)
    with pytest.raises(SigmaOffLadderError, match="the likelihood evaluates.*level-conditioned"):
        bits_per_dim(model, torch.zeros(1, 1, 8, 8, dtype=torch.uint8), 0.01, 1.0)
