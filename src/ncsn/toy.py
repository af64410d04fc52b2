"""The paper's toy experiments (Section 3, Figures 1-3) as library functions that return arrays and numbers.

Figure 3: plain versus annealed Langevin on a 2-D Gaussian mixture with exact scores. Figure 2: score networks
trained on that mixture are accurate near the modes only. Figure 1: sliced score matching on raw images versus the
same images with tiny Gaussian noise. The samplers and losses are the library's own; nothing is re-implemented here.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import read_idx
from .losses import dsm_loss, ssm_loss
from .samplers import annealed_langevin
from .sigmas import geometric_sigmas

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
SCORE_METHODS = ("ssm", "dsm")


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of isotropic Gaussians with one shared std, with its density and score in closed form."""

    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    std: float = 1.0

    def component_log_probs(self, x: torch.Tensor, std=None) -> torch.Tensor:
        """log(w_k N(x; mu_k, std^2 I)) for every component, shape (N, K); ``std`` is a float or one per example."""
        means = torch.tensor(self.means, device=x.device, dtype=x.dtype)
        log_weights = torch.tensor(self.weights, device=x.device, dtype=x.dtype).log()
        std = _per_example(self.std if std is None else std, x)
        sq_dist = (x.unsqueeze(1) - means).square().sum(dim=-1)
        dim = x.shape[1]
        return log_weights - 0.5 * sq_dist / std.square() - dim * (std.log() + 0.5 * math.log(2 * math.pi))

    def log_prob(self, x: torch.Tensor, std=None) -> torch.Tensor:
        """log p(x) with components of std ``std`` (default: the mixture's own)."""
        return self.component_log_probs(x, std).logsumexp(dim=1)

    def score(self, x: torch.Tensor, std=None) -> torch.Tensor:
        """grad_x log p(x) = sum_k r_k(x) (mu_k - x) / std^2, with r_k the posterior responsibility of component k."""
        means = torch.tensor(self.means, device=x.device, dtype=x.dtype)
        resp = self.component_log_probs(x, std).softmax(dim=1)
        std = _per_example(self.std if std is None else std, x)
        return (resp @ means - x) / std.square()

    def perturbed_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Score of the mixture convolved with N(0, sigma^2 I): the same mixture with std sqrt(std^2 + sigma^2)."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        return self.score(x, (self.std**2 + sigma.square()).sqrt())

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n i.i.d. draws (float32): a component by its weight, then Gaussian noise around its mean."""
        weights = torch.tensor(self.weights, device=device, dtype=torch.float32)
        means = torch.tensor(self.means, device=device, dtype=torch.float32)
        picks = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, means.shape[1]), generator=generator, device=device)
        return means[picks] + self.std * noise

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest component mean for every point (for the paper's mixture: the side of x + y = 0)."""
        means = torch.tensor(self.means, device=x.device, dtype=x.dtype)
        return torch.cdist(x, means).argmin(dim=1)

    def mode_shares(self, x: torch.Tensor) -> list[float]:
        """Fraction of the points nearest to each mean, in the order of ``means``; compare with ``weights``."""
        counts = torch.bincount(self.nearest_mode(x), minlength=len(self.means))
        return (counts.double() / len(x)).tolist()


PAPER_MIXTURE = GaussianMixture(weights=(0.2, 0.8), means=((-5.0, -5.0), (5.0, 5.0)))


def _per_example(std, x: torch.Tensor) -> torch.Tensor:
    """A std (float, scalar or one per example) as a column that broadcasts against (N, D) points."""
    std = torch.as_tensor(std, device=x.device, dtype=x.dtype)
    return std.view(-1, 1) if std.dim() > 0 else std


def uniform_box(n: int, half_width: float, dim: int = 2, generator=None, device=None) -> torch.Tensor:
    """n points uniform in [-half_width, half_width]^dim: the paper's start of the chains."""
    return (torch.rand((n, dim), generator=generator, device=device) * 2.0 - 1.0) * half_width


# --- Figure 3: Langevin versus annealed Langevin with exact scores ------------------------------------------------


def plain_langevin(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_steps: int,
    step_size: float,
    convention: str = "paper",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Langevin dynamics with a fixed step: the library's annealed sampler run on a one-level ladder.

    With one level alpha = step_lr * (sigma_1 / sigma_L)^2 = step_lr, so nothing of the loop is duplicated here.
    """
    one_level = torch.ones(1, device=x.device)
    return annealed_langevin(
        lambda points, _sigma: score_fn(points), x, one_level, n_steps, step_size,
        convention=convention, generator=generator,
    )


def annealed_mixture_langevin(
    mixture: GaussianMixture,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    n_steps_each: int,
    step_lr: float,
    convention: str = "paper",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Annealed Langevin (the image models' sampler) with the exact score of the mixture whose components have std
    sigma_i at level i, as in SPEC §7 and the reference toy code. A ladder ending at the mixture's own std therefore
    ends on the exact data score. (The noise-perturbed mixture would have std sqrt(1 + sigma_i^2) and end too wide.)
    """
    def level_score(points: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mixture.score(points, sigma.to(points.dtype))

    return annealed_langevin(
        level_score, x, sigmas, n_steps_each, step_lr, convention=convention, generator=generator
    )


def langevin_experiment(
    mixture: GaussianMixture = PAPER_MIXTURE,
    n_chains: int = 1280,
    half_width: float = 8.0,
    step_size: float = 0.1,
    n_steps: int = 1000,
    sigma_max: float = 20.0,
    sigma_min: float = 1.0,
    num_scales: int = 10,
    n_steps_each: int = 100,
    seed: int = 0,
    device="cpu",
) -> dict[str, np.ndarray]:
    """Figure 3: i.i.d. samples, plain Langevin and annealed Langevin from one uniform start, each (n_chains, 2).

    Both samplers use the paper's step convention x + (a/2) s + sqrt(a) z; annealed steps are
    a_i = step_size * (sigma_i / sigma_L)^2. One generator seeded with ``seed`` drives all draws in a fixed order.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    iid = mixture.sample(n_chains, generator=generator, device=device)
    start = uniform_box(n_chains, half_width, len(mixture.means[0]), generator=generator, device=device)
    langevin = plain_langevin(mixture.score, start, n_steps, step_size, generator=generator)
    sigmas = geometric_sigmas(sigma_max, sigma_min, num_scales, device=device)
    annealed = annealed_mixture_langevin(mixture, start, sigmas, n_steps_each, step_size, generator=generator)
    return {name: t.cpu().numpy() for name, t in (("langevin", langevin), ("annealed", annealed), ("iid", iid))}


# --- Figure 2: learned scores are wrong where the data density is low ---------------------------------------------


def toy_score_mlp(dim: int = 2, hidden: int = 128) -> nn.Sequential:
    """The paper's toy score network: dim -> hidden -> hidden -> dim with Softplus activations."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, dim)
    )


def seeded_init(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its default initialisation drawn from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def score_matching_loss(
    method: str,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    dsm_sigma: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per-example loss of an unconditional score function: variance-reduced SSM (Gaussian projections, as in the
    reference toy code) or DSM at one noise level ``dsm_sigma`` (weighted by sigma^2, the library's DSM)."""
    if method == "ssm":
        return ssm_loss(score_fn, x, variance_reduced=True, generator=generator)
    if method == "dsm":
        one_level = torch.tensor([dsm_sigma], device=x.device)
        return dsm_loss(lambda points, _sigma: score_fn(points), x, one_level, generator=generator)
    raise ValueError(f"method must be one of {SCORE_METHODS}, got {method!r}")


def train_score_model(
    model: nn.Module,
    draw_batch: Callable[[torch.Generator], torch.Tensor],
    method: str,
    n_steps: int,
    lr: float = 1e-3,
    dsm_sigma: float = 0.1,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Adam on the mean per-example loss of fresh batches ``draw_batch(generator)``; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = np.empty(n_steps, dtype=np.float64)
    for step in range(n_steps):
        loss = score_matching_loss(method, model, draw_batch(generator), dsm_sigma, generator).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
    return losses


def grid_points(half_width: float, size: int, device=None) -> torch.Tensor:
    """A size x size grid over [-half_width, half_width]^2 as (size^2, 2) points, x varying fastest."""
    axis = torch.linspace(-half_width, half_width, size, device=device)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], dim=1)


@torch.no_grad()
def score_error_by_region(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    mixture: GaussianMixture,
    half_width: float = 8.0,
    grid_size: int = 101,
    density_threshold: float = 1e-3,
    device=None,
) -> dict[str, float]:
    """Mean of ||s_theta(x) - grad log p(x)||^2 over grid points where p(x) > threshold (high) and elsewhere (low).

    Makes the paper's claim "score estimates are inaccurate in low-density regions" a pair of numbers.
    """
    points = grid_points(half_width, grid_size, device=device)
    dens = mixture.log_prob(points).exp()
    err = (score_fn(points).float() - mixture.score(points)).square().sum(dim=1)
    high = dens > density_threshold
    return {
        "mse_high_density": err[high].mean().item(),
        "mse_low_density": err[~high].mean().item(),
        "high_density_fraction": high.double().mean().item(),
    }


def scores_experiment(
    mixture: GaussianMixture = PAPER_MIXTURE,
    methods: tuple[str, ...] = SCORE_METHODS,
    n_steps: int = 10_000,
    batch_size: int = 128,
    lr: float = 1e-3,
    hidden: int = 128,
    dsm_sigma: float = 0.1,
    half_width: float = 8.0,
    grid_size: int = 101,
    density_threshold: float = 1e-3,
    seed: int = 0,
    device="cpu",
) -> dict[str, dict]:
    """Figure 2: train one toy MLP per method on fresh mixture batches and measure its score error by region.

    Every method starts from the same initial weights and sees the same data stream (both seeded by ``seed``).
    Returns {method: {"model", "losses", "errors"}}.
    """
    results = {}
    for method in methods:
        model = seeded_init(lambda: toy_score_mlp(len(mixture.means[0]), hidden), seed).to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        losses = train_score_model(
            model, lambda g: mixture.sample(batch_size, g, device), method, n_steps, lr, dsm_sigma, generator
        )
        model.eval()
        errors = score_error_by_region(model, mixture, half_width, grid_size, density_threshold, device)
        results[method] = {"model": model, "losses": losses, "errors": errors}
    return results


# --- Figure 1: the manifold problem --------------------------------------------------------------------------------


def load_manifold_images(
    fashion_mnist_dir: pathlib.Path | str | None = FASHION_MNIST_DIR, pool: int = 2
) -> tuple[torch.Tensor, str]:
    """Flattened images in [0, 1] and their source name: Fashion-MNIST training images, average-pooled by ``pool``
    (28 -> 14 at 2, to stay CPU-sized), when the IDX file is in ``fashion_mnist_dir`` (Debian package
    dataset-fashion-mnist); else scikit-learn's 8x8 digits (pixels / 16), used as they are."""
    if fashion_mnist_dir is not None:
        for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"):
            path = pathlib.Path(fashion_mnist_dir) / name
            if path.exists():
                images = torch.from_numpy(read_idx(path).astype(np.float32) / 255.0).unsqueeze(1)
                if pool > 1:
                    images = torch.nn.functional.avg_pool2d(images, pool)
                return images.flatten(1), "fashion-mnist"
    from sklearn.datasets import load_digits

    digits = load_digits().data.astype(np.float32) / 16.0
    return torch.from_numpy(digits), "digits"


def image_score_mlp(dim: int, hidden: int = 256) -> nn.Sequential:
    """A small CPU-sized score network for flattened images: dim -> hidden -> hidden -> dim with ELU."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, dim))


def manifold_experiment(
    images: torch.Tensor,
    noise_std: float = 0.01,
    n_steps: int = 3000,
    batch_size: int = 128,
    lr: float = 3e-3,
    hidden: int = 256,
    seed: int = 0,
    device="cpu",
) -> dict[str, np.ndarray]:
    """Figure 1: sliced score matching loss curves on raw images ("clean") and on images + N(0, noise_std^2)
    ("noisy"). Both runs start from the same weights and see the same batches; only the noise differs."""
    images = images.to(device)
    curves = {}
    for name, std in (("clean", 0.0), ("noisy", noise_std)):
        model = seeded_init(lambda: image_score_mlp(images.shape[1], hidden), seed).to(device)

        def draw_batch(g: torch.Generator, std: float = std) -> torch.Tensor:
            batch = images[torch.randint(0, len(images), (batch_size,), generator=g, device=device)]
            return batch + std * torch.randn(batch.shape, generator=g, device=device) if std > 0 else batch

        generator = torch.Generator(device=device).manual_seed(seed)
        curves[name] = train_score_model(model, draw_batch, "ssm", n_steps, lr, generator=generator)
    return curves


def curve_summary(losses: np.ndarray) -> dict[str, float]:
    """Numbers that tell a converging loss curve from one that keeps falling or jumping, all over its last half:
    mean, std, and drift = (mean of the last quarter - mean of the third quarter) / |mean of the last half|."""
    half = np.asarray(losses, dtype=np.float64)[len(losses) // 2 :]
    third, last = half[: len(half) // 2], half[len(half) // 2 :]
    scale = abs(half.mean()) or 1.0
    return {
        "final_mean": float(half[-max(1, len(half) // 5) :].mean()),
        "last_half_mean": float(half.mean()),
        "last_half_std": float(half.std()),
        "last_half_drift": float((last.mean() - third.mean()) / scale) if len(third) else 0.0,
    }


def noisy_loss_floor(dim: int, noise_std: float) -> float:
    """-dim / (2 noise_std^2): no score model gets an expected SSM loss below it on data + N(0, noise_std^2 I).

    The objective equals 1/2 E||s_theta - s||^2 - 1/2 E||s||^2, and Gaussian noise caps the Fisher information
    E||s||^2 at dim / noise_std^2. Raw data has no such floor when it sits on a manifold.
    """
    return -dim / (2.0 * noise_std**2)
