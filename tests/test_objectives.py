"""The training objectives (ladder, Score-SDE's VE, EDM) and EDM's preconditioning, checked against closed forms on
Gaussian data, hand-computed numbers and direct implementations of the published formulas."""

import math

import pytest
import torch
from scipy import stats

from ncsn import ScoreModel, dsm_loss, geometric_sigmas
from ncsn.losses import Objective
from ncsn.preconditioning import EDM_P_MEAN, EDM_SIGMA_DATA, edm_coefficients, edm_weight

from .conftest import TinyUnconditional, gaussian_score

MU, S, DIM = 0.3, 0.2, 16  # data N(MU, S^2 I) in DIM dimensions
SIGMAS = geometric_sigmas(2.0, 0.02, 8)


def _at(sigma: float, n: int) -> torch.Tensor:
    return torch.full((n,), sigma)


def _gaussian_batch(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 1, 4, 4, generator=gen), torch.randn(n, 1, 4, 4, generator=gen)


def _shrinkage_score(a: float):
    """The score implied by the linear denoiser D_a(x~) = MU + a (x~ − MU): (D_a − x~)/σ²."""
    return lambda x, sigma: (MU + a * (x - MU) - x) / sigma.view(-1, 1, 1, 1) ** 2


@pytest.mark.parametrize("kind, reduce_mean, likelihood", [("ladder", False, False), ("ve", False, False),
                                                            ("ve", True, False), ("ve", False, True),
                                                            ("edm", False, False), ("edm", True, False)])
@pytest.mark.parametrize("sigma", [0.05, 0.4, 1.5])
def test_the_optimal_denoiser_reaches_each_objectives_closed_form_minimum(kind, reduce_mean, likelihood, sigma):
    """For linear denoisers D_a the expected squared error is DIM ((a − 1)² S² + a² σ²), least at a* = S²/(S² + σ²)
    with DIM S² σ²/(S² + σ²); each objective is w(σ) · reduce of ‖D − y‖²/σ²."""
    objective = Objective(kind, SIGMAS, reduce_mean=reduce_mean, likelihood_weighting=likelihood)
    y, z = _gaussian_batch(20_000, seed=int(sigma * 100))
    scale = (1 / DIM if reduce_mean else 1.0 if kind == "edm" else 0.5) / sigma**2
    if kind == "ladder":
        weight = 1.0  # anneal_power 2: sigma^2 ||s + z/sigma||^2 = ||sigma s + z||^2
    elif kind == "ve":
        weight = 2 * math.log(2.0 / 0.02) if likelihood else 1.0  # g^2 / sigma^2 = 2 ln(sigma_max / sigma_min)
    else:
        weight = (sigma**2 + EDM_SIGMA_DATA**2) / (sigma * EDM_SIGMA_DATA) ** 2 * sigma**2  # lambda(sigma) sigma^2
    best = S**2 / (S**2 + sigma**2)
    means = {}
    for a in (best - 0.15, best, best + 0.15):
        losses = objective.loss(_shrinkage_score(a), y, _at(sigma, len(y)), z)
        expected = weight * scale * DIM * ((a - 1) ** 2 * S**2 + a**2 * sigma**2)
        stderr = losses.std().item() / len(y) ** 0.5
        assert abs(losses.mean().item() - expected) < 4 * stderr, (a, losses.mean().item(), expected)
        means[a] = losses.mean().item()
    assert min(means, key=means.get) == best  # same noise for all three: the optimum wins outright
    # the exact score of the noisy data is the optimal denoiser's: -(x~ - MU)/(S^2 + sigma^2)
    exact = objective.loss(gaussian_score(MU, S, SIGMAS), y, _at(sigma, len(y)), z)
    assert torch.allclose(exact, objective.loss(_shrinkage_score(best), y, _at(sigma, len(y)), z), rtol=1e-4,
                          atol=1e-5)
    if kind == "edm" and not reduce_mean:  # EDM's own form: lambda(sigma) ||D - y||^2 with the exact denoiser
        closed = (sigma**2 + 0.25**2) / (sigma * 0.25) ** 2 * DIM * sigma**2 * S**2 / (sigma**2 + S**2)
        assert exact.mean().item() == pytest.approx(closed, rel=4 * exact.std().item() / len(y) ** 0.5 / closed)
    if kind in ("ladder", "ve") and not (reduce_mean or likelihood):
        assert exact.mean().item() == pytest.approx(DIM / 2 * S**2 / (S**2 + sigma**2), rel=0.02)


def test_the_ladder_objective_is_dsm_loss_draw_for_draw():
    """What training draws and computes for the ladder is, bit for bit, what it did before objectives existed."""
    x, z = _gaussian_batch(32, seed=0)
    objective = Objective("ladder", SIGMAS, anneal_power=1.5)
    sigma = objective.draw_sigma(32, torch.Generator().manual_seed(5))
    labels = torch.randint(0, len(SIGMAS), (32,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(sigma, SIGMAS[labels])
    score = TinyScore()
    assert torch.equal(objective.loss(score, x, sigma, z), dsm_loss(score, x, SIGMAS, labels, 1.5, noise=z))


class TinyScore(torch.nn.Module):
    """A fixed nonlinear score function of (x, sigma), to compare implementations of the same loss."""

    def forward(self, x, sigma):
        return torch.tanh(3 * x - 1) * sigma.view(-1, 1, 1, 1).log() - x


@pytest.mark.parametrize("reduce_mean", [False, True])
@pytest.mark.parametrize("likelihood", [False, True])
def test_the_ve_loss_equals_score_sde_s_formula(reduce_mean, likelihood):
    """Score-SDE's losses.py: reduce_op is mean or 0.5 * sum over dims; with likelihood weighting the loss is
    reduce_op((s + z/std)^2) * g^2 with g = sigma sqrt(2 ln(sigma_max/sigma_min)), else reduce_op((s std + z)^2)."""
    sigma_min, sigma_max = 0.01, 50.0
    objective = Objective("ve", SIGMAS, sigma_min, sigma_max, reduce_mean=reduce_mean, likelihood_weighting=likelihood)
    x, z = _gaussian_batch(64, seed=1)
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=gen) * (1 - 1e-5) + 1e-5
    std = sigma_min * (sigma_max / sigma_min) ** t
    assert torch.equal(objective.draw_sigma(64, torch.Generator().manual_seed(2)), std)
    s4 = std.view(-1, 1, 1, 1)
    score = TinyScore()(x + s4 * z, std)
    reduce = (lambda v: v.mean(-1)) if reduce_mean else (lambda v: 0.5 * v.sum(-1))
    if likelihood:
        g2 = (std * math.sqrt(2 * (math.log(sigma_max) - math.log(sigma_min)))) ** 2
        ref = reduce((score + z / s4).square().reshape(64, -1)) * g2
    else:
        ref = reduce((score * s4 + z).square().reshape(64, -1))
    assert torch.allclose(objective.loss(TinyScore(), x, std, z), ref, rtol=1e-5)


def test_sigma_distributions_are_log_uniform_ladder_uniform_and_log_normal():
    n = 20_000
    ve = Objective("ve", SIGMAS, 0.01, 50.0).draw_sigma(n, torch.Generator().manual_seed(0))
    t = (ve.double().log() - math.log(0.01)) / math.log(5000.0)  # t ~ U(1e-5, 1)
    assert stats.kstest(t.numpy(), stats.uniform(loc=1e-5, scale=1 - 1e-5).cdf).pvalue > 0.01
    assert ve.min() >= 0.01 and ve.max() <= 50.0
    ladder = Objective("ladder", SIGMAS).draw_sigma(n, torch.Generator().manual_seed(1))
    counts = torch.stack([(ladder == s).sum() for s in SIGMAS]).numpy()
    assert counts.sum() == n and stats.chisquare(counts).pvalue > 0.01
    edm = Objective("edm", SIGMAS).draw_sigma(n, torch.Generator().manual_seed(2)).double()
    log_edm = (2 * edm).log()  # in EDM's [-1, 1] units: ln sigma_edm ~ N(-1.2, 1.2^2)
    assert abs(log_edm.mean().item() + 1.2) < 4 * 1.2 / n**0.5
    assert abs(log_edm.std().item() - 1.2) < 4 * 1.2 / (2 * n) ** 0.5
    assert stats.kstest(log_edm.numpy(), stats.norm(loc=-1.2, scale=1.2).cdf).pvalue > 0.01


def test_edm_constants_map_from_minus_one_one_units():
    assert EDM_SIGMA_DATA == 0.25 and EDM_P_MEAN == pytest.approx(-1.2 - math.log(2), abs=1e-15)
    assert Objective("edm", SIGMAS).p_std == 1.2


def test_edm_coefficients_at_given_sigma_match_hand_computed_numbers():
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, 0.5)
    assert torch.allclose(c_skip, torch.tensor([0.5, 0.2, 0.25 / 4.25], dtype=torch.float64))
    assert torch.allclose(c_out, torch.tensor([0.25 / 0.5**0.5, 0.5 / 1.25**0.5, 1 / 4.25**0.5], dtype=torch.float64))
    assert torch.allclose(c_in, torch.tensor([2**0.5, 1.25**-0.5, 4.25**-0.5], dtype=torch.float64))
    assert torch.allclose(c_noise, torch.tensor([-0.17328679513998632, 0.0, 0.17328679513998632], dtype=torch.float64))
    assert torch.allclose(edm_weight(sigma, 0.5), torch.tensor([8.0, 5.0, 4.25], dtype=torch.float64))
    c_skip, c_out, c_in, _ = edm_coefficients(torch.tensor([1.0]), 0.25)  # the library's sigma_data
    assert (c_skip.item(), c_out.item(), c_in.item()) == pytest.approx((1 / 17, 0.25 / 1.0625**0.5, 1.0625**-0.5))


class OptimalF(torch.nn.Module):
    """F such that EDM's D is the optimal denoiser of N(MU, S^2 I) data, from the network's own inputs (c_in (x − m)
    and sigma^(1/4)), in float64 with the coefficients written out here."""

    conditioning, level_conditioned = "sigma", False

    def __init__(self, sigma_data: float):
        super().__init__()
        self.sigma_data, self.seen = sigma_data, []

    def forward(self, u, sigma_quarter):
        sigma = sigma_quarter.double().view(-1, 1, 1, 1) ** 4
        self.seen.append(sigma_quarter)
        var = sigma**2 + self.sigma_data**2
        x = 0.5 + u.double() * var.sqrt()
        optimal = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        return ((optimal - 0.5 - self.sigma_data**2 / var * (x - 0.5)) / (sigma * self.sigma_data / var.sqrt())).float()


@pytest.mark.parametrize("sigma", [0.01, 0.3, 5.0, 80.0])
def test_the_edm_wrapper_recovers_the_analytic_score_from_the_optimal_denoiser(sigma):
    net = OptimalF(0.25)
    model = ScoreModel(net, SIGMAS, preconditioning="edm", sigma_data=0.25)
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 3 - 1
    analytic = -(x.double() - MU) / (S**2 + sigma**2)
    assert torch.allclose(model(x, sigma).double(), analytic, rtol=1e-4, atol=1e-4 / (S**2 + sigma**2))
    denoised = model.denoise(x, sigma).double()
    assert torch.allclose(denoised, MU + S**2 / (S**2 + sigma**2) * (x.double() - MU), rtol=1e-5, atol=1e-5)
    assert torch.allclose(net.seen[0], torch.full((8,), sigma**0.25))  # c_noise = ln(sigma)/4 once the net takes ln


def test_an_unconditional_net_takes_the_edm_wrapper_with_c_noise_unused():
    torch.manual_seed(0)
    net = TinyUnconditional(1, 4)
    model = ScoreModel(net, SIGMAS, preconditioning="edm")
    x, sigma = torch.rand(3, 1, 4, 4), torch.tensor([0.05, 0.5, 3.0])
    s = sigma.view(-1, 1, 1, 1).double()
    var = s**2 + 0.25**2
    with torch.no_grad():
        f = net((x - 0.5) / var.float().sqrt()).double()
        d = 0.5 + 0.0625 / var * (x.double() - 0.5) + s * 0.25 / var.sqrt() * f
        assert torch.allclose(model.denoise(x, sigma).double(), d, atol=1e-6)
        assert torch.allclose(model(x, sigma).double(), (d - x.double()) / s**2, rtol=1e-4, atol=1e-4)
        plain = ScoreModel(net, SIGMAS, scale_by_sigma=True)  # and without preconditioning, D = x + sigma^2 s
        assert torch.allclose(plain.denoise(x, sigma), x + s.float() ** 2 * plain(x, sigma), atol=1e-6)


def test_the_edm_denoiser_pulls_towards_mid_grey_not_black():
    """With F = 0 (an untrained zero-initialised output) D = 0.5 + c_skip (x − 0.5): grey at large sigma."""
    model = ScoreModel(ZeroF(), SIGMAS, preconditioning="edm")
    x = torch.rand(4, 1, 4, 4) * 10 - 5
    assert torch.allclose(model.denoise(x, 1000.0), torch.full_like(x, 0.5), atol=1e-5)
    assert torch.allclose(model.denoise(x, 1e-4), x, atol=1e-5)


class ZeroF(torch.nn.Module):
    conditioning, level_conditioned = "sigma", False

    def forward(self, u, sigma):
        return torch.zeros_like(u)


class EdmUnitF(torch.nn.Module):
    """A nonlinear F defined in EDM's [-1, 1] units: F(u, c_noise)."""

    @staticmethod
    def edm(u, c_noise):
        return torch.tanh(2 * u + c_noise.view(-1, 1, 1, 1)) - 0.3 * u * c_noise.view(-1, 1, 1, 1).cos()


class LibraryUnitF(torch.nn.Module):
    """The same F reached from the library's wrapper: it gets sigma^(1/4), so ln of it is ln(sigma)/4, and EDM's
    c_noise = ln(2 sigma)/4 is that plus ln(2)/4 (the constant shift a learned embedding absorbs)."""

    conditioning, level_conditioned = "sigma", False

    def forward(self, u, sigma_quarter):
        return EdmUnitF.edm(u.double(), sigma_quarter.double().log() + math.log(2) / 4).float()


def test_edm_in_unit_interval_units_equals_edm_on_minus_one_one_with_sigma_doubled():
    """D(y; sigma) in [0, 1] with sigma_data 0.25 = (D_edm(2y − 1; 2 sigma) + 1)/2 with EDM's sigma_data 0.5 and zero
    mean, and the two losses are the same number."""
    y, z = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(4)), torch.randn(6, 1, 4, 4)
    sigma = torch.tensor([0.003, 0.05, 0.2, 0.7, 3.0, 40.0])
    model = ScoreModel(LibraryUnitF(), SIGMAS, preconditioning="edm", sigma_data=0.25)
    noisy = y + sigma.view(-1, 1, 1, 1) * z

    se = 2 * sigma.double().view(-1, 1, 1, 1)  # EDM, written out in its own units (sigma_data 0.5, data mean 0)
    xe, ye = 2 * noisy.double() - 1, 2 * y.double() - 1
    f = EdmUnitF.edm(xe / (se**2 + 0.25).sqrt(), se.flatten().log() / 4)
    d_edm = 0.25 / (se**2 + 0.25) * xe + se * 0.5 / (se**2 + 0.25).sqrt() * f
    assert torch.allclose(model.denoise(noisy, sigma).double(), (d_edm + 1) / 2, atol=1e-6)

    loss_edm = (se**2 + 0.25) / (se * 0.5) ** 2 * (d_edm - ye).square()
    loss = Objective("edm", SIGMAS, sigma_data=0.25).loss(model, y, sigma, z)
    assert torch.allclose(loss.double(), loss_edm.flatten(1).sum(1), rtol=1e-4)


def test_a_level_conditioned_net_under_edm_gets_its_ladder_level():
    class Recorder(torch.nn.Module):
        def forward(self, u, levels):
            self.levels = levels
            return torch.zeros_like(u)

    net = Recorder()
    model = ScoreModel(net, SIGMAS, preconditioning="edm")
    model(torch.rand(3, 1, 4, 4), SIGMAS[[0, 4, 7]])
    assert net.levels.tolist() == [0, 4, 7]
    with pytest.raises(ValueError, match="preconditioning must be one of"):
        ScoreModel(net, SIGMAS, preconditioning="karras")
