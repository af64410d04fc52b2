"""`ncsn toy langevin|scores|manifold`: the paper's toy experiments (Figures 3, 2 and 1), one command each.

Each command writes its figure (PNG), its numbers and resolved options (JSON) to --out and prints the numbers.
"""

from __future__ import annotations

import math
import time

import click
import numpy as np
import torch

from .. import plots
from .. import toy as toy_lib
from ..io import save_npz
from .option_groups import out_option, output_options
from .options import POSITIVE, device_option, user_errors, write_json


def common_options(default_out: str):
    """--seed and --out (as ``output``) and --device, shared by every toy command."""

    def decorate(func):
        func = device_option("cpu", help="Torch device: cpu, cuda, cuda:1 ...")(func)
        return output_options(out=out_option("folder", "Output folder.", required=False, default=default_out),
                              batch_size=None)(func)

    return decorate


def _density_grid(mixture: toy_lib.GaussianMixture, half_width: float, size: int) -> np.ndarray:
    points = toy_lib.grid_points(half_width, size)
    return mixture.log_prob(points).exp().view(size, size).numpy()


@click.group()
def toy() -> None:
    """The paper's toy experiments (Figures 1-3); each runs on a laptop CPU in about two minutes or less."""


@toy.command()
@click.option("--chains", type=click.IntRange(min=1), default=1280, help="Number of chains (and of i.i.d. samples).")
@click.option("--steps", type=click.IntRange(min=1), default=1000, help="Plain Langevin steps.")
@click.option("--step-size", type=POSITIVE, default=0.1, help="Plain Langevin step; annealed eps (paper convention).")
@click.option("--sigma-max", type=POSITIVE, default=20.0, help="Largest component std of the annealed ladder.")
@click.option("--sigma-min", type=POSITIVE, default=1.0, help="Smallest component std (the data's own).")
@click.option("--levels", type=click.IntRange(min=1), default=10, help="Levels of the geometric ladder.")
@click.option("--steps-each", type=click.IntRange(min=1), default=100, help="Annealed Langevin steps per level.")
@click.option("--half-width", type=POSITIVE, default=8.0, help="Chains start uniform in [-w, w]^2.")
@common_options("runs/toy-langevin")
@user_errors
def langevin(chains, steps, step_size, sigma_max, sigma_min, levels, steps_each, half_width, output, device):
    """Figure 3: plain versus annealed Langevin with exact scores on 0.2 N((-5,-5), I) + 0.8 N((5,5), I).

    Writes samples.npz (langevin, annealed, iid; each chains x 2), toy.json (share of samples nearest to each mode)
    and langevin.png. Plain Langevin keeps the chains in the basin they start in; annealed recovers the weights.
    """
    options = dict(click.get_current_context().params)
    seed, out = output.seed, output.out
    start = time.perf_counter()
    mixture = toy_lib.PAPER_MIXTURE
    samples = toy_lib.langevin_experiment(
        mixture, n_chains=chains, half_width=half_width, step_size=step_size, n_steps=steps, sigma_max=sigma_max,
        sigma_min=sigma_min, num_scales=levels, n_steps_each=steps_each, seed=seed, device=device,
    )
    shares = {name: mixture.mode_shares(torch.from_numpy(points)) for name, points in samples.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / "samples.npz", **samples)
    names = {"langevin": "Langevin dynamics", "annealed": "annealed Langevin", "iid": "i.i.d. samples"}
    titles = {key: f"{names[key]}\nmode shares " + " / ".join(f"{v:.2f}" for v in shares[key]) for key in names}
    plots.langevin_figure(_density_grid(mixture, half_width, 200), samples, titles, half_width, out / "langevin.png")
    seconds = time.perf_counter() - start
    report = {
        "modes": [list(m) for m in mixture.means],
        "weights": list(mixture.weights),
        "mode_shares": shares,
        "wall_time_s": seconds,
        "options": options,
    }
    write_json(out / "toy.json", report)
    modes = "  ".join(f"({m[0]:g}, {m[1]:g})" for m in mixture.means)
    click.echo(f"share of samples nearest to each mode {modes}; true weights {list(mixture.weights)}")
    for name, values in shares.items():
        click.echo(f"  {name:9s} " + "  ".join(f"{v:.4f}" for v in values))
    click.echo(f"wrote {out}/samples.npz, toy.json, langevin.png in {seconds:.1f}s")


@toy.command()
@click.option("--steps", type=click.IntRange(min=1), default=10_000, help="Adam steps per model (paper: 10,000).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, help="Fresh mixture samples per step.")
@click.option("--lr", type=POSITIVE, default=1e-3, help="Adam learning rate.")
@click.option("--hidden", type=click.IntRange(min=1), default=128, help="Width of the MLP 2 -> h -> h -> 2.")
@click.option("--dsm-sigma", type=POSITIVE, default=0.1, help="Noise level of the DSM model.")
@click.option("--density-threshold", type=POSITIVE, default=1e-3, help="p(x) above this is the high-density region.")
@click.option("--grid-size", type=click.IntRange(min=2), default=101, help="Evaluation grid points per axis.")
@click.option("--half-width", type=POSITIVE, default=8.0, help="Evaluation grid over [-w, w]^2.")
@common_options("runs/toy-scores")
@user_errors
def scores(steps, batch_size, lr, hidden, dsm_sigma, density_threshold, grid_size, half_width, output, device):
    """Figure 2: score MLPs trained by sliced score matching and by DSM are wrong where the data density is low.

    Reports the mean of ||s_theta(x) - grad log p(x)||^2 over grid points with p(x) above the threshold and below
    it. Writes scores.json and scores.png (density, true scores, both estimates).
    """
    options = dict(click.get_current_context().params)
    seed, out = output.seed, output.out
    start = time.perf_counter()
    mixture = toy_lib.PAPER_MIXTURE
    results = toy_lib.scores_experiment(
        mixture, n_steps=steps, batch_size=batch_size, lr=lr, hidden=hidden, dsm_sigma=dsm_sigma,
        half_width=half_width, grid_size=grid_size, density_threshold=density_threshold, seed=seed, device=device,
    )
    out.mkdir(parents=True, exist_ok=True)
    arrows = toy_lib.grid_points(half_width, 20)
    with torch.no_grad():
        fields = {"data scores": mixture.score(arrows).numpy()}
        for method, result in results.items():
            fields[f"{method.upper()} estimate"] = result["model"](arrows.to(device)).cpu().numpy()
    density = _density_grid(mixture, half_width, grid_size)
    plots.scores_figure(density, arrows.numpy(), fields, density > density_threshold, half_width, out / "scores.png")
    seconds = time.perf_counter() - start
    tail = max(1, steps // 20)
    report = {
        "errors": {method: result["errors"] for method, result in results.items()},
        "final_loss": {method: float(result["losses"][-tail:].mean()) for method, result in results.items()},
        "wall_time_s": seconds,
        "options": options,
    }
    write_json(out / "scores.json", report)
    click.echo(f"mean squared score error on a {grid_size}x{grid_size} grid over [-{half_width:g}, {half_width:g}]^2")
    for method, errors in report["errors"].items():
        click.echo(
            f"  {method}: high density (p > {density_threshold:g}) {errors['mse_high_density']:.4f}   "
            f"low density {errors['mse_low_density']:.4f}"
        )
    click.echo(f"wrote {out}/scores.json, scores.png in {seconds:.1f}s")


@toy.command()
@click.option("--steps", type=click.IntRange(min=2), default=3000, help="Adam steps per curve (CPU-sized).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, help="Images per step.")
@click.option("--lr", type=POSITIVE, default=3e-3, help="Adam learning rate (3x the paper's, so 3,000 steps settle).")
@click.option("--hidden", type=click.IntRange(min=1), default=256, help="Width of the MLP D -> h -> h -> D.")
@click.option("--noise-std", type=POSITIVE, default=0.01, help="Std of the tiny Gaussian noise of the second run.")
@click.option("--pool", type=click.IntRange(min=1), default=2, help="Average-pool Fashion-MNIST by this (28 -> 14).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), default=str(toy_lib.FASHION_MNIST_DIR),
    help="Folder with Fashion-MNIST's train-images-idx3-ubyte(.gz); the 8x8 digits are used when it is missing.",
)
@common_options("runs/toy-manifold")
@user_errors
def manifold(steps, batch_size, lr, hidden, noise_std, pool, data_dir, output, device):
    """Figure 1: sliced score matching on raw images versus images + N(0, noise_std^2): the manifold problem.

    CPU-sized: a two-hidden-layer MLP, 3,000 steps and Fashion-MNIST pooled to 14x14 (or the 8x8 digits) instead of
    the paper's ResNet on CIFAR-10. Writes manifold.json (both curves and their summaries) and manifold.png.
    """
    options = dict(click.get_current_context().params)
    seed, out = output.seed, output.out
    start = time.perf_counter()
    images, source = toy_lib.load_manifold_images(data_dir, pool)
    curves = toy_lib.manifold_experiment(
        images, noise_std=noise_std, n_steps=steps, batch_size=batch_size, lr=lr, hidden=hidden, seed=seed,
        device=device,
    )
    out.mkdir(parents=True, exist_ok=True)
    side = math.isqrt(images.shape[1])
    name = f"{source} {side}x{side}" if side * side == images.shape[1] else source
    titles = {"clean": f"{name}, no noise", "noisy": f"{name} + N(0, {noise_std:g}^2)"}
    plots.loss_curves_figure(curves, titles, out / "manifold.png")
    seconds = time.perf_counter() - start
    summaries = {name: toy_lib.curve_summary(losses) for name, losses in curves.items()}
    floor = toy_lib.noisy_loss_floor(images.shape[1], noise_std)
    report = {
        "data": source,
        "dim": int(images.shape[1]),
        "noisy_loss_floor": floor,
        "summary": summaries,
        "curves": {name: losses.tolist() for name, losses in curves.items()},
        "wall_time_s": seconds,
        "options": options,
    }
    write_json(out / "manifold.json", report)
    click.echo(f"SSM on {source} ({images.shape[0]} images of dimension {images.shape[1]}), {steps} steps each")
    for name, summary in summaries.items():
        click.echo(
            f"  {name}: final loss {summary['final_mean']:.4g}   last-half std {summary['last_half_std']:.4g}   "
            f"drift {summary['last_half_drift']:+.3f}"
        )
    click.echo(f"  no model's expected loss on the noisy data is below -D/(2 sigma^2) = {floor:.4g}")
    click.echo(f"wrote {out}/manifold.json, manifold.png in {seconds:.1f}s")
