import gzip
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ncsn import toy
from ncsn.cli import main
from ncsn.toy import PAPER_MIXTURE, GaussianMixture

WEIGHTS = np.array(PAPER_MIXTURE.weights)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["toy", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def autograd_score(mixture: GaussianMixture, x: torch.Tensor, std=None) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_prob(x, std).sum(), x)
    return grad


def test_closed_form_mixture_score_is_the_gradient_of_its_log_density():
    points = toy.uniform_box(500, 9.0, generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(PAPER_MIXTURE.score(points), autograd_score(PAPER_MIXTURE, points), atol=1e-9)
    stds = torch.linspace(0.5, 20.0, 500, dtype=torch.float64)
    assert torch.allclose(PAPER_MIXTURE.score(points, stds), autograd_score(PAPER_MIXTURE, points, stds), atol=1e-9)
    wide = GaussianMixture(PAPER_MIXTURE.weights, PAPER_MIXTURE.means, std=5**0.5)
    assert torch.allclose(PAPER_MIXTURE.perturbed_score(points, 2.0), wide.score(points), atol=1e-12)


def test_mixture_density_normalises_and_samples_follow_the_weights():
    points = toy.grid_points(12.0, 241).double()
    cell = (24.0 / 240) ** 2
    assert PAPER_MIXTURE.log_prob(points).exp().sum().item() * cell == pytest.approx(1.0, abs=1e-4)
    draws = PAPER_MIXTURE.sample(40000, generator=torch.Generator().manual_seed(1))
    assert np.allclose(PAPER_MIXTURE.mode_shares(draws), WEIGHTS, atol=0.01)
    assert PAPER_MIXTURE.mode_shares(torch.tensor([[1.0, -0.5], [-3.0, 2.0], [4.0, 4.0]])) == [1 / 3, 2 / 3]


def test_both_toy_samplers_are_the_library_sampler(monkeypatch):
    calls = []
    real = toy.annealed_langevin

    def spy(*args, **kwargs):
        calls.append(kwargs["convention"])
        return real(*args, **kwargs)

    monkeypatch.setattr(toy, "annealed_langevin", spy)
    toy.langevin_experiment(n_chains=8, n_steps=3, num_scales=2, n_steps_each=2)
    assert calls == ["paper", "paper"]


def test_plain_langevin_samples_a_gaussian_with_the_paper_step():
    x0 = torch.zeros(10000, 2)
    out = toy.plain_langevin(lambda x: -x, x0, 200, 0.1, generator=torch.Generator().manual_seed(2))
    assert out.mean(0).abs().max().item() < 0.03
    # x <- (1 - a/2) x + sqrt(a) z has stationary variance a / (1 - (1 - a/2)^2) = 1 / (1 - a/4).
    assert out.var(0).mean().item() == pytest.approx(1 / (1 - 0.1 / 4), rel=0.03)


def test_langevin_command_reproduces_figure_3_at_the_default_seed(tmp_path):
    """Full default run: annealed Langevin recovers 0.2 / 0.8, plain Langevin stays near the uniform start's 0.5."""
    output = run_cli("langevin", "--out", str(tmp_path))
    assert "annealed" in output
    samples = np.load(tmp_path / "samples.npz")
    assert sorted(samples.files) == ["annealed", "iid", "langevin"]
    assert all(samples[name].shape == (1280, 2) for name in samples.files)
    report = json.loads((tmp_path / "toy.json").read_text())
    assert set(report) >= {"modes", "weights", "mode_shares", "wall_time_s", "options"}
    shares = {name: np.array(values) for name, values in report["mode_shares"].items()}
    assert np.abs(shares["annealed"] - WEIGHTS).max() <= 0.03
    assert np.abs(shares["iid"] - WEIGHTS).max() <= 0.03
    assert np.abs(shares["langevin"] - 0.5).max() <= 0.05
    assert np.abs(shares["langevin"] - WEIGHTS).max() >= 0.25
    assert (tmp_path / "langevin.png").stat().st_size > 10_000


def test_langevin_command_is_deterministic_for_a_seed(tmp_path):
    small = ["--chains", "64", "--steps", "20", "--levels", "3", "--steps-each", "5"]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        run_cli("langevin", *small, "--seed", seed, "--out", str(tmp_path / name))
    a, b, c = (np.load(tmp_path / name / "samples.npz") for name in "abc")
    assert all(np.array_equal(a[key], b[key]) for key in a.files)
    assert not np.array_equal(a["annealed"], c["annealed"])


def test_score_error_is_zero_for_the_exact_score_and_large_for_a_zero_field():
    exact = toy.score_error_by_region(PAPER_MIXTURE.score, PAPER_MIXTURE, grid_size=41)
    assert exact["mse_high_density"] < 1e-10 and exact["mse_low_density"] < 1e-10
    assert 0 < exact["high_density_fraction"] < 0.5
    zero = toy.score_error_by_region(torch.zeros_like, PAPER_MIXTURE, grid_size=41)
    assert zero["mse_low_density"] > zero["mse_high_density"] > 0


def test_scores_command_finds_learned_scores_worse_in_low_density_regions(tmp_path):
    output = run_cli("scores", "--steps", "400", "--grid-size", "61", "--out", str(tmp_path))
    assert "low density" in output
    report = json.loads((tmp_path / "scores.json").read_text())
    assert set(report["errors"]) == {"ssm", "dsm"}
    for errors in report["errors"].values():
        assert errors["mse_low_density"] > 5 * errors["mse_high_density"]
    assert (tmp_path / "scores.png").stat().st_size > 10_000


def test_scores_experiment_is_deterministic_and_trains_by_both_methods():
    runs = [toy.scores_experiment(n_steps=30, grid_size=21, seed=5) for _ in range(2)]
    for method in toy.SCORE_METHODS:
        assert np.array_equal(runs[0][method]["losses"], runs[1][method]["losses"])
        assert runs[0][method]["losses"].shape == (30,)
    assert not np.allclose(runs[0]["ssm"]["losses"], runs[0]["dsm"]["losses"])
    with pytest.raises(ValueError, match="method"):
        toy.score_matching_loss("nce", torch.zeros_like, torch.zeros(2, 2), 0.1, None)


def test_manifold_command_shows_the_clean_loss_falling_away_on_the_digits_fallback(tmp_path):
    """Short digits run (a high learning rate speeds it up): the clean SSM loss keeps falling far below the noisy one,
    whose descent is already slowing."""
    output = run_cli(
        "manifold", "--steps", "600", "--hidden", "64", "--lr", "0.005", "--data-dir", str(tmp_path / "absent"),
        "--out", str(tmp_path),
    )
    assert "digits" in output
    report = json.loads((tmp_path / "manifold.json").read_text())
    assert report["data"] == "digits" and report["dim"] == 64
    assert report["noisy_loss_floor"] == pytest.approx(-64 / (2 * 0.01**2))
    assert {name: len(curve) for name, curve in report["curves"].items()} == {"clean": 600, "noisy": 600}
    clean, noisy = report["summary"]["clean"], report["summary"]["noisy"]
    assert set(clean) == {"final_mean", "last_half_mean", "last_half_std", "last_half_drift"}
    assert clean["final_mean"] < 4 * noisy["final_mean"] < 0
    assert clean["last_half_drift"] < noisy["last_half_drift"] - 0.3
    assert (tmp_path / "manifold.png").stat().st_size > 10_000


def test_fashion_mnist_images_are_read_from_idx_and_pooled(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in pixels.shape)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + pixels.tobytes())
    images, source = toy.load_manifold_images(tmp_path, pool=2)
    assert source == "fashion-mnist" and images.shape == (5, 196)
    expected = pixels.reshape(5, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(5, -1) / 255.0
    assert np.allclose(images.numpy(), expected, atol=1e-6)
    full, _ = toy.load_manifold_images(tmp_path, pool=1)
    assert full.shape == (5, 784)


def test_curve_summary_separates_a_falling_curve_from_a_settled_one():
    steps = np.arange(1000.0)
    falling = toy.curve_summary(-steps**2)
    settled = toy.curve_summary(-100.0 * (1 - np.exp(-steps / 50)))
    assert falling["last_half_drift"] < -0.3
    assert abs(settled["last_half_drift"]) < 1e-3
    assert settled["final_mean"] == pytest.approx(-100.0)
