"""`ncsn demo`: train the demo's digits preset, sample it with its fast sampler and score the samples, in one command;
a sigma-continuous model is also sampled with EDM's deterministic Heun sampler and scored beside it."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import numpy as np

from .. import distributed
from ..checkpoint import latest_checkpoint
from ..config import load_config, named_configs
from ..model_loading import load_score_model
from ..samplers.common import is_level_conditioned
from ..samplers.heun import HeunSettings
from ..training import train
from .option_groups import n_option, output_options, run_folder_option, runtime_options
from .options import device_option, user_errors, write_json
from .sample import resolved_sampling, sample_to_folder
from .sampler_options import sampler_options


DEMO_PRESET = "digits_demo"


@click.command("demo")
@run_folder_option("runs/demo", "Run folder.")
@click.option("--config", "config_name", default=DEMO_PRESET, show_default=True,
              help=f"Digits preset or YAML file to train ({', '.join(n for n in named_configs() if 'digits' in n)}).")
@output_options(n=n_option(1000, "Digits to sample after training."), batch_size=None)
@device_option()
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a digits config field.")
@runtime_options
@sampler_options
@user_errors
def demo_command(workdir, output, device, config_name, overrides, runtime, sampler):
    """Train a digits preset (a few minutes on two CPU cores), sample digits and score them with a classifier."""
    from ..demo import demo_report, format_report

    workdir = Path(workdir)
    n, seed = output.n, output.seed
    config = load_config(config_name, overrides)
    if config.data.dataset != "digits":
        raise click.BadParameter(f"the demo scores digits, but {config_name} trains on {config.data.dataset}",
                                 param_hint="--config")
    start = time.perf_counter()
    latest = latest_checkpoint(workdir)
    trains = latest is None or int(latest.stem.split("_")[1]) < config.training.n_iters
    if trains:
        train(config, workdir, resume=latest is not None, device=device, runtime=runtime)
    train_seconds = time.perf_counter() - start
    dist_info = distributed.setup(device)
    model, config, info = load_score_model(workdir, device=dist_info.device)
    config = resolved_sampling(config, sampler, None)
    summary = sample_to_folder(model, config, info, n, seed, workdir / "samples_final", dist_info, progression=True,
                               runtime=runtime)
    samples = np.load(workdir / "samples_final" / "samples.npz")["samples"]
    quality = demo_report(samples, config.data, workdir / "samples_final", seed=seed)
    quality["deterministic"] = _deterministic(model, config, info, n, seed, workdir / "samples_deterministic",
                                              dist_info, runtime)
    speeds = [row["images_per_s"] for row in _metrics_rows(workdir) if "images_per_s" in row]
    report = {"train_seconds": train_seconds, "train_steps": config.training.n_iters,
              "train_images_per_s": float(np.median(speeds)) if speeds else None,
              "sample_seconds": summary["seconds"], "sampling": summary, **quality}
    report["wall_seconds"] = time.perf_counter() - start  # training (if any), sampling and every figure
    write_json(workdir / "demo.json", report)
    rate = f" ({report['train_images_per_s']:.0f} images/s)" if speeds else ""
    trained = (f"trained {config.training.n_iters} steps in {train_seconds:.0f}s{rate}" if trains else
               f"reused the model trained to step {config.training.n_iters}")
    click.echo(
        f"demo: {trained}, sampled {n} digits with {config.sampling.sampler} ({summary['nfe']} NFE) in "
        f"{summary['seconds']:.0f}s, {report['wall_seconds']:.0f}s in all\n{format_report(quality)}\n"
        f"grid: {workdir / 'samples_final' / 'grid.png'}  nearest neighbours: {quality['nn_png']}  "
        f"report: {workdir / 'demo.json'}"
    )


def _deterministic(model, config, info, n, seed, out, dist_info, runtime) -> dict | None:
    """The same n chains through EDM's deterministic sampler (Heun on the probability-flow ODE at its paper's 18
    steps, 35 NFE) and their figures; None for a level-conditioned network, which that sampler cannot evaluate."""
    from ..demo import sample_figures

    if is_level_conditioned(model):
        return None
    heun = dataclasses.replace(config, sampling=dataclasses.replace(config.sampling, sampler="heun", heun=HeunSettings()))
    summary = sample_to_folder(model, heun, info, n, seed, out, dist_info, runtime=runtime)
    images = np.load(Path(out) / "samples.npz")["samples"]
    return {"sampler": "heun", "nfe": summary["nfe"], "seconds": summary["seconds"],
            **sample_figures(images, config.data, out)}


def _metrics_rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
