"""`ncsn demo`: train the digits config, sample it and score the samples, in one command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from .. import distributed
from ..checkpoint import latest_checkpoint, load_score_model
from ..config import load_config
from ..training import train
from .option_groups import n_option, output_options, run_folder_option, runtime_options
from .options import device_option, user_errors, write_json
from .sample import resolved_sampling, sample_to_folder
from .sampler_options import sampler_options


@click.command("demo")
@run_folder_option("runs/demo", "Run folder.")
@output_options(n=n_option(1000, "Digits to sample after training."), batch_size=None)
@device_option()
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a digits config field.")
@runtime_options
@sampler_options
@user_errors
def demo_command(workdir, output, device, overrides, runtime, sampler):
    """Train the `digits` config (a few minutes on two CPU cores), sample digits and score them with a classifier."""
    from ..demo import demo_report, format_report

    workdir = Path(workdir)
    n, seed = output.n, output.seed
    config = load_config("digits", overrides)
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
        f"demo: {trained}, sampled {n} digits in "
        f"{summary['seconds']:.0f}s, {report['wall_seconds']:.0f}s in all\n{format_report(quality)}\n"
        f"grid: {workdir / 'samples_final' / 'grid.png'}  nearest neighbours: {quality['nn_png']}  "
        f"report: {workdir / 'demo.json'}"
    )


def _metrics_rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
