import pytest
import torch

from ncsn.losses import ssm_loss

MU = torch.tensor([0.5, -1.0, 2.0])
A = torch.tensor([[1.5, 0.3, 0.0], [0.3, 0.8, -0.2], [0.0, -0.2, 2.0]])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def linear_score(x):
    """s(x) = -A (x - mu): the score of a Gaussian model with precision A."""
    return -(x - MU) @ A.T


def closed_form_objective(mean: torch.Tensor, cov: torch.Tensor) -> float:
    """E[1/2 ||A(x - mu)||^2] - tr(A) for x ~ N(mean, cov): the score-matching objective of ``linear_score``."""
    shift = A @ (mean - MU)
    return float(0.5 * (torch.trace(A @ cov @ A.T) + shift @ shift) - torch.trace(A))


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("variance_reduced", [False, True])
def test_ssm_matches_closed_form_score_matching_objective(projection, variance_reduced):
    gen = torch.Generator().manual_seed(0)
    n = 20000
    mean, scale = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.7, 0.0], [0.0, 0.2, 0.5]])
    x = mean + torch.randn(n, 3, generator=gen) @ scale.T
    losses = ssm_loss(linear_score, x, projection=projection, variance_reduced=variance_reduced, generator=gen)
    expected = closed_form_objective(mean, scale @ scale.T)
    stderr = losses.std().item() / n**0.5
    assert losses.shape == (n,)
    assert abs(losses.mean().item() - expected) < 4 * stderr, (losses.mean().item(), expected, stderr)


def test_variance_reduced_form_has_the_same_mean_and_lower_variance():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 3, generator=gen)
    v = torch.randn(1, *x.shape, generator=gen)
    plain = ssm_loss(linear_score, x, projections=v)
    reduced = ssm_loss(linear_score, x, projections=v, variance_reduced=True)
    stderr = (plain - reduced).std().item() / len(x) ** 0.5
    assert abs(plain.mean().item() - reduced.mean().item()) < 4 * stderr
    assert reduced.var().item() < 0.5 * plain.var().item()


def test_more_projections_average_per_example():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    v = torch.randn(4, *x.shape, generator=torch.Generator().manual_seed(3))
    together = ssm_loss(linear_score, x, n_projections=4, projections=v)
    apart = torch.stack([ssm_loss(linear_score, x, projections=v[k : k + 1]) for k in range(4)]).mean(0)
    assert torch.allclose(together, apart, atol=1e-5)
    signs = ssm_loss(linear_score, x, n_projections=3, projection="rademacher", generator=torch.Generator())
    assert signs.shape == (64,)


def test_ssm_trains_a_linear_score_to_the_gaussian_score():
    """Gradients reach the model: SSM on N(m, C) data drives s(x) = Wx + b to -C^{-1}(x - m)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    mean, cov = torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    chol = torch.linalg.cholesky(cov)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(1200):
        x = mean + torch.randn(256, 2, generator=gen) @ chol.T
        loss = ssm_loss(model, x, variance_reduced=True, generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    precision = torch.linalg.inv(cov)
    assert torch.allclose(model.weight.detach(), -precision, atol=0.1)
    assert torch.allclose(model.bias.detach(), precision @ mean, atol=0.2)


def test_conditional_score_sigmas_and_no_grad_context():
    seen = []

    def score(x, sigma):
        seen.append(sigma.clone())
        return -x * (1.0 + sigma).unsqueeze(1)

    x = torch.randn(5, 2)
    labels = torch.arange(5).float()
    with torch.no_grad():
        losses = ssm_loss(
            score, x, sigma=labels, n_projections=2, projection="rademacher", variance_reduced=True,
            generator=torch.Generator(),
        )
    assert torch.equal(seen[0], labels.repeat(2))
    scale = 1.0 + labels.float()
    # Rademacher v has ||v||^2 = 2 exactly, so v^T grad(v^T s) = -2 * scale with no randomness left.
    assert torch.allclose(losses, 0.5 * (x * scale.unsqueeze(1)).square().sum(1) - 2.0 * scale, atol=1e-5)


def test_ssm_rejects_bad_settings():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="projection"):
        ssm_loss(linear_score, x, projection="sphere")
    with pytest.raises(ValueError, match="n_projections"):
        ssm_loss(linear_score, x, n_projections=0)
    with pytest.raises(ValueError, match="shape"):
        ssm_loss(linear_score, x, projections=torch.randn(2, 4, 3))
