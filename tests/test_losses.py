import pytest
import torch

from ncsn import CondRefineNetDilated, ScoreModel, dsm_loss, geometric_sigmas

from .conftest import gaussian_score


def test_dsm_matches_closed_form_for_gaussian_data():
    """Optimal per-example loss at level sigma is (D/2) s^2 / (s^2 + sigma^2) for data N(mu, s^2 I)."""
    gen = torch.Generator().manual_seed(1)
    mu, s, n, dim = 0.3, 0.5, 4000, 64
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    score = gaussian_score(mu, s, sigmas)
    for level in range(10):
        x = mu + s * torch.randn(n, 1, 8, 8, generator=gen)
        labels = torch.full((n,), level, dtype=torch.long)
        losses = dsm_loss(score, x, sigmas, labels=labels, generator=gen)
        sigma = float(sigmas[level])
        expected = dim / 2 * s**2 / (s**2 + sigma**2)
        stderr = losses.std().item() / n**0.5
        assert losses.shape == (n,)
        assert abs(losses.mean().item() - expected) < 4 * stderr, (level, losses.mean().item(), expected)


def test_dsm_trivial_model_scores_half_the_dimension():
    x = torch.rand(512, 3, 4, 4)
    losses = dsm_loss(lambda x, y: torch.zeros_like(x), x, geometric_sigmas(1.0, 0.01, 10))
    assert losses.mean().item() == pytest.approx(48 / 2, rel=0.05)


def test_dsm_anneal_power_weights_and_explicit_noise():
    x = torch.rand(6, 1, 4, 4)
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    labels = torch.arange(6)
    z = torch.randn_like(x)

    def score(x, y):
        return torch.ones_like(x)

    for power in (0.0, 1.0, 2.0):
        got = dsm_loss(score, x, sigmas, labels=labels, anneal_power=power, noise=z)
        sig = sigmas[labels].view(-1, 1, 1, 1)
        ref = 0.5 * ((1.0 + z / sig) ** 2).flatten(1).sum(1) * sigmas[labels] ** power
        assert torch.allclose(got, ref, rtol=1e-5)


def test_dsm_same_generator_same_loss_and_gradients_reach_model():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    net = ScoreModel(CondRefineNetDilated(1, 8, 10), sigmas)
    x = torch.rand(4, 1, 8, 8)
    a = dsm_loss(net, x, sigmas, generator=torch.Generator().manual_seed(3))
    b = dsm_loss(net, x, sigmas, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) == len(grads)
