"""DPM-Solver++(2M) and its SDE variant against direct implementations of the published updates, the closed-form
flow and law of Gaussian data N(mu, s^2), and the rules every sampler keeps (NFE, float32, seeds, sigma > 0, the
score's output left alone)."""

import math

import numpy as np
import pytest
import torch

from ncsn import SigmaOffLadderError, karras_sigmas
from ncsn.samplers import Counted
from ncsn.samplers.dpmpp import dpmpp_2m_sampler, dpmpp_2m_sde_sampler

from .conftest import gaussian_score

MU, S = 0.4, 0.2
SMAX, SMIN = 10.0, 0.01
SCORE = gaussian_score(MU, S, None)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def posterior_mean(x, sigma):
    """The exact data prediction E[x_0 | x_sigma] for N(mu, s^2) data: mu + (x - mu) s^2 / (s^2 + sigma^2)."""
    return MU + (x - MU) * S**2 / (S**2 + sigma**2)


def direct_2m(x, sigmas):
    """DPM-Solver++(2M) as the paper writes it (Algorithm 2, VE: alpha = 1), in float64: lambda = -log sigma, the
    first and a last step to 0 first order, else D combined as (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, then
    x <- (sigma_{i+1}/sigma_i) x + (1 - sigma_{i+1}/sigma_i) D."""
    x, levels = x.double(), sigmas.double().tolist()
    lam = [-math.log(s) if s > 0 else math.inf for s in levels]
    old = None
    for i in range(len(levels) - 1):
        d = posterior_mean(x, levels[i])
        combined = d
        if old is not None and levels[i + 1] > 0:
            r = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            combined = (1 + 1 / (2 * r)) * d - old / (2 * r)
        ratio = levels[i + 1] / levels[i]
        x = ratio * x + (1 - ratio) * combined
        old = d
    return x


def draws(shape, sigmas, seed):
    """The noise the SDE sampler takes from gen(seed): one standard normal draw per step that does not end at 0."""
    g = gen(seed)
    return [torch.randn(shape, generator=g).double() for s in sigmas.tolist()[1:] if s > 0]


def direct_2m_sde(x, sigmas, eta, s_noise, solver_type, noise):
    """k-diffusion's DPM-Solver++(2M) SDE written with the step ratio a = sigma_{i+1}/sigma_i, in float64:
    x <- a^(1+eta) x + (1 - a^(1+eta)) (D_i + k (D_i - D_{i-1})) + sigma_{i+1} sqrt(1 - a^(2 eta)) s_noise z,
    k = 1/(2r) (midpoint) or (1/(1 - a^(1+eta)) - 1/((1+eta) h)) / r (heun); a last step to 0 is x <- D."""
    x, levels, noise = x.double(), sigmas.double().tolist(), iter(noise)
    old, h_last = None, None
    for i in range(len(levels) - 1):
        d = posterior_mean(x, levels[i])
        if levels[i + 1] == 0:
            x = d
            continue
        a = levels[i + 1] / levels[i]
        h = -math.log(a)
        keep = a ** (1 + eta)
        k = 0.0
        if old is not None:
            r = h_last / h
            k = 1 / (2 * r) if solver_type == "midpoint" else (1 / (1 - keep) - 1 / ((1 + eta) * h)) / r
        x = keep * x + (1 - keep) * (d + k * (d - old if old is not None else 0))
        if eta > 0:
            x = x + levels[i + 1] * math.sqrt(1 - a ** (2 * eta)) * s_noise * next(noise)
        old, h_last = d, h
    return x


def start(n, seed=0):
    """n draws of the exact marginal at SMAX, N(mu, s^2 + SMAX^2), shaped (n, 1, 2, 2)."""
    return MU + math.sqrt(S**2 + SMAX**2) * torch.randn(n, 1, 2, 2, generator=gen(seed))


@pytest.mark.parametrize("n", [1, 2, 6, 25])
@pytest.mark.parametrize("end", ["zero", "positive"])
def test_2m_equals_the_papers_update(n, end):
    sigmas = karras_sigmas(SMAX, SMIN, n)
    if end == "positive":
        sigmas = sigmas[:-1] if n > 1 else torch.tensor([SMAX, 1.0])
    x0 = start(5)
    out = dpmpp_2m_sampler(SCORE, x0, sigmas)
    assert torch.allclose(out.double(), direct_2m(x0, sigmas), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta, s_noise, solver_type", [(1.0, 1.0, "midpoint"), (1.0, 1.0, "heun"),
                                                        (0.5, 1.3, "midpoint"), (0.3, 0.8, "heun"),
                                                        (0.0, 1.0, "heun")])
@pytest.mark.parametrize("n", [1, 3, 20])
def test_2m_sde_equals_k_diffusions_update_under_the_same_noise(eta, s_noise, solver_type, n):
    sigmas = karras_sigmas(SMAX, SMIN, n)
    x0 = start(5)
    out = dpmpp_2m_sde_sampler(SCORE, x0, sigmas, eta, s_noise, solver_type, generator=gen(7))
    noise = draws(x0.shape, sigmas, 7) if eta > 0 else []
    assert torch.allclose(out.double(), direct_2m_sde(x0, sigmas, eta, s_noise, solver_type, noise),
                          rtol=1e-5, atol=1e-5)


def test_2m_sde_without_noise_and_with_midpoint_is_2m_and_draws_nothing():
    sigmas, x0, g = karras_sigmas(SMAX, SMIN, 12), start(3), gen(1)
    state = g.get_state()
    ode = dpmpp_2m_sde_sampler(SCORE, x0, sigmas, eta=0.0, generator=g)
    assert torch.equal(ode, dpmpp_2m_sampler(SCORE, x0, sigmas))
    assert torch.equal(g.get_state(), state)


def test_2m_converges_to_the_exact_flow_at_second_order():
    """Error of the final sample against the exact flow to the last sigma > 0, x(s) = mu + (x0 - mu) sqrt(s^2 +
    sigma^2) / sqrt(s^2 + sigma_max^2), then the exact final denoise: it falls as N^-2 (fitted slope ~2.1)."""
    x0 = torch.tensor([MU - 2 * SMAX, MU + 0.5 * SMAX, MU + 1.5 * SMAX]).view(3, 1, 1, 1)
    steps, errors = [16, 32, 64, 128], []
    for n in steps:
        sigmas = karras_sigmas(SMAX, SMIN, n)
        top, last = float(sigmas[0]), float(sigmas[-2])
        flowed = MU + (x0.double() - MU) * math.sqrt(S**2 + last**2) / math.sqrt(S**2 + top**2)
        errors.append((dpmpp_2m_sampler(SCORE, x0, sigmas).double() - posterior_mean(flowed, last)).abs().max().item())
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 1.8 < slope < 2.4, (slope, errors)
    assert errors[-1] < 3e-4


def moments(sigmas, eta, solver_type, mean, var):
    """The exact mean and variance of the SDE sampler's output on N(mu, s^2) data from x ~ N(mean, var): D is affine
    in x, so (x_i, x_{i-1}) is Gaussian and its mean and covariance follow a linear recursion (float64)."""
    levels = sigmas.double().tolist()
    m, cov = np.array([mean, 0.0]), np.array([[var, 0.0], [0.0, 0.0]])
    h_last, has_old = None, False
    for i in range(len(levels) - 1):
        cur, nxt = levels[i], levels[i + 1]
        k = S**2 / (S**2 + cur**2)  # D(x) = mu (1 - k) + k x
        if nxt == 0:
            step, shift, std = np.array([[k, 0.0], [1.0, 0.0]]), MU * (1 - k), 0.0
        else:
            h = math.log(cur / nxt)
            e = 1 - math.exp(-(1 + eta) * h)
            a, b, shift = nxt / cur * math.exp(-eta * h) + e * k, 0.0, e * MU * (1 - k)
            if has_old:
                c = (e / 2 if solver_type == "midpoint" else 1 - e / ((1 + eta) * h)) / (h_last / h)
                k_old = S**2 / (S**2 + levels[i - 1] ** 2)
                a, b, shift = a + c * k, -c * k_old, shift + c * MU * (k_old - k)
            step, std = np.array([[a, b], [1.0, 0.0]]), nxt * math.sqrt(1 - math.exp(-2 * eta * h))
            h_last, has_old = h, True
        m = step @ m + np.array([shift, 0.0])
        cov = step @ cov @ step.T + np.diag([std**2, 0.0])
    return m[0], cov[0, 0]


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_2m_sde_variance_error_is_second_order_and_its_mean_is_exact(solver_type):
    """On Gaussian data the SDE is linear, so the sampler's law is a Gaussian whose moments follow ``moments``: the
    mean from any start is exactly the reverse SDE's, mu + (x0 - mu) s^2 / (s^2 + sigma_max^2) after the final
    denoise, and the variance error against the exact law N(mu, s^4 / (s^2 + sigma_last^2)) falls as N^-2 (weak
    order 2 on this problem; a nonlinear score is not covered by this)."""
    steps, errors = [32, 64, 128, 256], []
    for n in steps:
        sigmas = karras_sigmas(SMAX, SMIN, n)
        top, last = float(sigmas[0]), float(sigmas[-2])
        mean, var = moments(sigmas, 1.0, solver_type, MU + 15.0, 0.0)
        assert mean == pytest.approx(MU + 15.0 * S**2 / (S**2 + top**2), abs=1e-12)
        mean, var = moments(sigmas, 1.0, solver_type, MU, S**2 + top**2)
        errors.append(abs(var - S**4 / (S**2 + last**2)))
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 1.8 < slope < 2.4, (slope, errors)


@pytest.mark.parametrize("n, solver_type", [(8, "midpoint"), (8, "heun"), (60, "midpoint")])
def test_2m_sde_chains_have_the_law_of_the_recursion_and_reach_the_data_law(n, solver_type):
    """Many chains of the sampler itself: their mean and variance are the recursion's (at 8 steps visibly off the
    data law: the discretisation error the weak-order test measures), and at 60 steps N(mu, s^2) within 3%."""
    sigmas = karras_sigmas(SMAX, SMIN, n)
    x0 = MU + math.sqrt(S**2 + SMAX**2) * torch.randn(1, 200_000, generator=gen(3))
    out = dpmpp_2m_sde_sampler(SCORE, x0, sigmas, solver_type=solver_type, generator=gen(4)).double()
    mean, var = moments(sigmas, 1.0, solver_type, MU, S**2 + SMAX**2)
    assert out.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / out.numel()))
    assert out.var().item() == pytest.approx(var, rel=4 * math.sqrt(2 / out.numel()))
    if n == 8:
        assert abs(var / S**2 - 1) > 0.1
    else:
        assert out.var().item() == pytest.approx(S**2, rel=0.03) and out.mean().item() == pytest.approx(MU, abs=2e-3)


@pytest.mark.parametrize("name", ["2m", "2m_sde"])
@pytest.mark.parametrize("n", [1, 4, 10])
def test_one_evaluation_per_step_each_at_a_positive_sigma_with_a_callback_per_step(name, n):
    seen, steps = [], []

    def score(x, sigma):
        seen.append(sigma.clone())
        return SCORE(x, sigma)

    counted, info = Counted(score), {}
    sigmas = karras_sigmas(SMAX, SMIN, n)
    kwargs = {"generator": gen(0)} if name == "2m_sde" else {}
    sampler = dpmpp_2m_sampler if name == "2m" else dpmpp_2m_sde_sampler
    sampler(counted, start(2), sigmas, callback=lambda i, sigma, x: steps.append((i, sigma)), info=info, **kwargs)
    assert info["nfe"] == counted.calls == n
    assert all((s > 0).all() for s in seen)
    assert [float(s[0]) for s in seen] == sigmas[:-1].tolist()
    assert steps == list(zip(range(n), sigmas[1:].tolist()))


@pytest.mark.parametrize("name", ["2m", "2m_sde"])
def test_float32_out_of_a_bf16_score_and_a_float64_start(name):
    def score(x, sigma):
        return SCORE(x, sigma).to(torch.bfloat16)

    sampler = dpmpp_2m_sampler if name == "2m" else dpmpp_2m_sde_sampler
    out = sampler(score, start(3).double(), karras_sigmas(SMAX, SMIN, 5))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_2m_sde_is_seeded_and_per_example_generators_make_each_sample_its_own():
    sigmas, x0 = karras_sigmas(SMAX, SMIN, 6), start(3)
    one = dpmpp_2m_sde_sampler(SCORE, x0, sigmas, generator=gen(5))
    assert torch.equal(one, dpmpp_2m_sde_sampler(SCORE, x0, sigmas, generator=gen(5)))
    assert not torch.allclose(one, dpmpp_2m_sde_sampler(SCORE, x0, sigmas, generator=gen(6)))
    batch = dpmpp_2m_sde_sampler(SCORE, x0, sigmas, generator=[gen(10), gen(11), gen(12)])
    alone = dpmpp_2m_sde_sampler(SCORE, x0[1:2], sigmas, generator=[gen(11)])
    assert torch.equal(batch[1:2], alone)


def nonlinear(x, sigma):
    """A Gaussian score plus a bounded nonlinear term, so a stale or altered evaluation shows."""
    return SCORE(x, sigma) + 0.3 * torch.tanh(3 * x)


class OneBuffer:
    """A score that writes every result into one tensor and returns it (as a CUDA-graph compiled score does), and
    keeps a copy of each result to check that no one changed it in place before its next call."""

    def __init__(self):
        self.out, self.changed = None, False

    def __call__(self, x, sigma):
        if self.out is not None and not torch.equal(self.out, self.copy):
            self.changed = True
        value = nonlinear(x, sigma)
        self.out = torch.empty_like(value) if self.out is None else self.out
        self.copy = value.clone()
        return self.out.copy_(value)


@pytest.mark.parametrize("name", ["2m", "2m_sde-midpoint", "2m_sde-heun"])
def test_a_score_that_reuses_its_output_buffer_gives_the_same_result_and_is_not_changed(name):
    def run(score):
        if name == "2m":
            return dpmpp_2m_sampler(score, start(3), karras_sigmas(SMAX, SMIN, 6))
        return dpmpp_2m_sde_sampler(score, start(3), karras_sigmas(SMAX, SMIN, 6), solver_type=name.split("-")[1],
                                    generator=gen(1))

    reused = OneBuffer()
    out = run(reused)
    assert torch.equal(out, run(nonlinear)) and torch.isfinite(out).all()
    assert not reused.changed and torch.equal(reused.out, reused.copy)


@pytest.mark.parametrize("kwargs, message", [
    ({"eta": -0.1}, "eta must be >= 0, got -0.1"),
    ({"eta": math.inf}, "eta must be finite, got inf"),
    ({"s_noise": 0.0}, "s_noise must be positive"),
    ({"solver_type": "rk4"}, "solver_type must be one of"),
])
def test_bad_sde_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dpmpp_2m_sde_sampler(SCORE, start(1), karras_sigmas(SMAX, SMIN, 3), **kwargs)


@pytest.mark.parametrize("sampler", [dpmpp_2m_sampler, dpmpp_2m_sde_sampler])
def test_bad_schedules_and_level_conditioned_networks_are_refused(sampler):
    with pytest.raises(ValueError, match="strictly descending"):
        sampler(SCORE, start(1), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        sampler(SCORE, start(1), torch.tensor([1.0]))

    def level_conditioned(x, sigma):
        return SCORE(x, sigma)

    level_conditioned.level_conditioned = True
    with pytest.raises(SigmaOffLadderError, match="dpmpp_2m"):
        sampler(level_conditioned, start(1), karras_sigmas(SMAX, SMIN, 3))

