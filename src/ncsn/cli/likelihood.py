"""`ncsn likelihood`: bits/dim of real (or sampled) images under the model's probability-flow ODE, as JSON."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch

from ..checkpoint import load_score_model
from ..data import load_split
from ..generate import batch_generator
from ..likelihood import PROBES, bits_per_dim
from ..samplers.common import require_any_sigma
from ..errors import InputError
from ..io import write_text
from .option_groups import BATCH_SIZE, SEED, model_source_options, n_option, out_option, output_options
from .options import device_option, finite, user_errors
from .sampler_options import settings_options


def likelihood_images(source: str, config, limit: int | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images: the model dataset's test or train split (its first ``limit`` only, read no
    further), or a .npz of N x H x W x C images."""
    if source in ("test", "train"):
        return load_split(config.data, source, limit=limit).images
    path = Path(source)
    if path.suffix != ".npz" or not path.is_file():
        raise InputError(f"--images must be test, train or an .npz file of N x H x W x C images; got {source!r}")
    with np.load(path, allow_pickle=False) as archive:
        key = "samples" if "samples" in archive.files else archive.files[0]
        array = archive[key]
    if array.ndim != 4:
        raise InputError(f"{path}: expected N x H x W x C images under {key!r}, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def interval(values: torch.Tensor) -> dict:
    """Mean, std and a normal-approximation 95% confidence interval of the mean."""
    v = values.double()
    mean = float(v.mean())
    std = float(v.std()) if len(v) > 1 else 0.0
    half = 1.96 * std / math.sqrt(len(v))
    return {"mean": mean, "std": std, "stderr": std / math.sqrt(len(v)), "ci95": [mean - half, mean + half],
            "n": len(v)}


@click.command("likelihood")
@model_source_options
@click.option("--images", "images_source", default="test", metavar="test|train|FILE.npz",
              help="Images: the model dataset's test or train split, or an .npz of uint8 N x H x W x C images.")
@click.option("--probe", type=click.Choice(PROBES), default="rademacher", help="Hutchinson trace probes.")
@settings_options("ode", ("rtol", "atol", "method"))
@device_option()
@output_options(n=n_option(None, "Number of images [default: all of them]."), batch_size=BATCH_SIZE, seed=SEED,
                out=out_option("file", "Also write the JSON report here.", required=False))
@user_errors
def likelihood_command(source, images_source, probe, ode, device, output):
    """Bits/dim under the probability-flow ODE (uniform dequantisation, 8-bit offset) of a sigma-scaled model; the
    seed draws the dequantisation and the probes. The solver's settings default to the config's sampling.ode."""
    n, batch_size, seed, out = output.n, output.batch_size, output.seed, output.out
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, config, info = load_score_model(source.path, device=device, **source.load_kwargs())
    require_any_sigma(model, "the likelihood")
    images = likelihood_images(images_source, config, limit=n)
    if n is not None and len(images) < n:
        raise InputError(f"--n {n}: {images_source} has only {len(images)} images")
    images = images[:n] if n is not None else images
    size = batch_size or config.sampling.batch_size
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    sigma_min, sigma_max = float(model.sigmas[-1]), float(model.sigmas[0])
    solver = ode.section(config.sampling)
    rtol, atol, method = solver.rtol, solver.atol, solver.method
    start = time.perf_counter()
    values, nfe, steps = [], [], []
    for b in range(math.ceil(len(images) / size)):
        found: dict = {}
        values.append(bits_per_dim(model, images[b * size:(b + 1) * size].to(device), sigma_min, sigma_max, rtol, atol,
                                   probe, method, batch_generator(seed, b, device), shape, found).cpu())
        nfe.append(found["nfe"])
        steps.append(found["solver_steps"])
    seconds = time.perf_counter() - start
    bpd = torch.cat(values)
    report = {
        "source": str(source.path), "weights": info["weights"], "step": info.get("step"),
        "dataset": config.data.dataset, "images": images_source, "n": len(bpd), "bits_per_dim": interval(bpd),
        "nfe": {"per_batch": nfe, "mean": sum(nfe) / len(nfe), "total": sum(nfe)}, "solver_steps": steps,
        "seconds": round(seconds, 3), "seconds_per_image": seconds / len(bpd), "probe": probe, "rtol": rtol,
        "atol": atol, "method": method, "sigma_min": sigma_min, "sigma_max": sigma_max, "seed": seed,
        "batch_size": size, "dequantisation": "uniform, (k + u) / 256", "offset_bits": 8.0,
    }
    text = json.dumps(finite(report), indent=2, allow_nan=False)
    if out:
        write_text(out, text)
    click.echo(text)
