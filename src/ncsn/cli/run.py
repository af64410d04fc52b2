"""`ncsn train`, `ncsn sample`, `ncsn export` and `ncsn demo`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch

from .. import distributed
from ..checkpoint import export_slim, latest_checkpoint, load_score_model
from ..config import load_config, named_configs
from ..data import DATASETS, to_uint8_hwc
from ..errors import storage_errors
from ..generate import generate
from ..images import save_grid, save_progression
from ..io import save_npz
from ..runtime import PRECISIONS, RuntimeOptions, resolve
from ..samplers import denoise_for, used_settings
from ..resume import resume_config
from ..training import train
from .options import POSITIVE, device_option, user_errors, write_json
from .sampler_options import apply_sampler_options, note_untrained_ladder, sampler_options


def model_source(workdir: str | None, checkpoint: str | None) -> str:
    if bool(workdir) == bool(checkpoint):
        raise click.UsageError("give exactly one of --workdir DIR or --checkpoint PATH")
    return workdir or checkpoint


RUNTIME_KEY = "ncsn.runtime"


def _store_runtime(ctx, param, value):
    ctx.meta.setdefault(RUNTIME_KEY, {})[param.name] = value
    return value


def runtime_options(func):
    """--compile/--precision/--channels-last; kept in the click context (read with ``current_runtime()``), so
    commands take them without new parameters."""
    options = [
        click.option("--compile/--no-compile", "compile", default=False, expose_value=False, callback=_store_runtime,
                     help="torch.compile the network (CUDA graphs for sampling on CUDA)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     expose_value=False, callback=_store_runtime,
                     help="bf16 autocasts the network (the Langevin and loss arithmetic stay float32). auto: bf16 only "
                          "on a CPU with native bf16 (avx512_bf16/AMX) where a first-use timed trial, cached in "
                          "$NCSN_CACHE or ~/.cache/ncsn, finds it faster; fp32 elsewhere, CUDA included. A resumed "
                          "run keeps its recorded precision."),
        click.option("--channels-last/--no-channels-last", "channels_last", default=None, expose_value=False,
                     callback=_store_runtime,
                     help="channels_last memory format [default: for sampling on a CPU from 16x16 images up]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def current_runtime() -> RuntimeOptions:
    """The runtime options of the command being run (the defaults outside a command)."""
    ctx = click.get_current_context(silent=True)
    return RuntimeOptions(**(ctx.meta.get(RUNTIME_KEY, {}) if ctx is not None else {}))


OFFICIAL_OPTIONS = [  # what an official checkpoint does not record (ncsn checkpoints record both)
    click.option("--dataset", type=click.Choice(sorted(DATASETS)), default=None,
                 help="Dataset of an official checkpoint (required for those; they do not record it)."),
    click.option("--image-size", type=click.IntRange(min=4), default=None,
                 help="Image size of an official checkpoint [default: that of the official release]."),
]


def official_options(func):
    """Add --dataset and --image-size to a command."""
    for option in reversed(OFFICIAL_OPTIONS):
        func = option(func)
    return func


def sampling_options(func):
    """Options shared by every command that runs the sampler; unset ones fall back to the run's config."""
    options = [
        click.option("--workdir", type=click.Path(file_okay=False), help="Run folder (its latest checkpoint)."),
        click.option("--checkpoint", type=click.Path(dir_okay=True), help="Checkpoint, export or official .pth file."),
        click.option("--ema/--no-ema", default=None, help="Use EMA weights [default: EMA when the checkpoint has them]."),
        *OFFICIAL_OPTIONS,
        click.option("--denoise/--no-denoise", default=None,
                     help="End noise-free: ald/ode add the Tweedie step, pc returns its last mean [default: config, "
                          "else off for ald, on for pc and ode]."),
        click.option("--steps-each", type=click.IntRange(min=1), help="Langevin steps per level [default: config]."),
        click.option("--step-lr", type=POSITIVE, help="Step size eps [default: config]."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Chains per batch [default: config]."),
        click.option("--seed", type=int, default=0, help="Seed; batch b uses (seed, b)."),
        device_option(),
    ]
    func = runtime_options(sampler_options(func))  # listed after the model and chain options in --help
    for option in reversed(options):
        func = option(func)
    return func


def resolved_sampling(config, denoise, steps_each, step_lr, batch_size):
    """The config's sampling section with the command's options applied (and validated)."""
    s = config.sampling
    apply_sampler_options(s)
    s.denoise = denoise_for(s) if denoise is None else denoise  # unset: the sampler's paper default
    s.n_steps_each = steps_each or s.n_steps_each
    s.step_lr = step_lr or s.step_lr
    s.batch_size = batch_size or s.batch_size
    return s


def nfe_summary(per_batch: list[int]) -> dict:
    """NFE actually spent: per sample (the mean over batches; every chain of a batch sees each evaluation) and the
    network calls of all batches together."""
    mean = sum(per_batch) / max(len(per_batch), 1)
    return {"nfe": int(mean) if mean == int(mean) else round(mean, 2), "nfe_total": int(sum(per_batch))}


def sample_to_folder(model, config, info, n, seed, out, dist_info, progression=False, runtime=None,
                     per_example=False) -> dict:
    """Draw n samples (this rank's share), gather them on rank 0 over the process group (no shared filesystem
    needed), which writes samples.npz, grid.png and the progression; other ranks write nothing and return {}.

    ``runtime`` defaults to the running command's --compile/--precision/--channels-last; what they leave to the
    library is decided here and written to sample_config.json. ``per_example`` seeds every chain from (seed, index),
    so the samples do not depend on the batch size.
    """
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    first_batch = (min(config.sampling.batch_size, n), *shape)
    runtime = resolve(runtime or current_runtime(), model, dist_info.device, first_batch, training=False)
    if dist_info.is_main:
        note_untrained_ladder(config)
    out = Path(out)
    start = time.perf_counter()
    spent: dict = {}
    indices, images, frames = generate(
        model, model.sigmas, n, shape, config.sampling, seed=seed, device=dist_info.device,
        rank=dist_info.rank, world_size=dist_info.world_size, progress=dist_info.is_main, keep_frames=progression,
        runtime=runtime, info=spent, per_example=per_example,
    )
    nfe = spent["nfe_per_batch"]
    samples = to_uint8_hwc(images)
    if dist_info.world_size > 1:
        parts = distributed.gather_to_main((indices.numpy(), samples, nfe))
        if not dist_info.is_main:
            return {}
        indices = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        samples = np.concatenate([p[1] for p in parts])
        nfe = [int(v) for p in parts for v in p[2]]
        images = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 255.0  # the grid of what is stored
    order = torch.argsort(indices)
    samples, images = samples[order.numpy()], images[order]
    seconds = time.perf_counter() - start
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        save_npz(out / "samples.npz", compressed=True, samples=samples)
        save_grid(out / "grid.png", images[:100])
        if progression and frames:
            save_progression(out / "progression.png", out / "progression.gif", frames)
    s = config.sampling
    summary = {
        "n": n, "seed": seed, "per_example_seeds": per_example, "weights": info["weights"], "step": info.get("step"),
        "n_steps_each": s.n_steps_each, "step_lr": s.step_lr, "denoise": denoise_for(s), "convention": s.convention,
        "batch_size": s.batch_size, "seconds": seconds, "processes": dist_info.world_size, "compile": runtime.compile,
        "precision": runtime.precision, "channels_last": runtime.channels_last, "sampler": s.sampler,
        "sampler_settings": used_settings(s), **nfe_summary(nfe),
    }
    write_json(out / "sample_config.json", summary)
    return summary


@click.command("train")
@click.option("--config", "config_name", default=None, help=f"Preset ({', '.join(named_configs())}) or YAML file.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Run folder [default: runs/<config>].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field, repeatable.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's latest checkpoint (and its config).")
@device_option()
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@runtime_options
@user_errors
def train_command(config_name, workdir, overrides, resume, device, progress):
    """Train a score network by denoising score matching (use torchrun for several processes)."""
    if config_name is None and not (resume and workdir):
        raise click.UsageError("--config is required (or --resume --workdir DIR to continue a run)")
    workdir = Path(workdir or f"runs/{Path(config_name).stem}")
    if config_name:
        config = load_config(config_name, overrides)
    else:  # the latest checkpoint's config is the source of truth, whatever config.yaml says
        config, stale = resume_config(workdir, overrides)
        if stale and distributed.setup(device).is_main:
            click.echo(f"note: {workdir / 'config.yaml'} is missing or differs from the latest checkpoint's config; "
                       "resuming with the checkpoint's (pass --set KEY=VALUE to change a value)")
    result = train(config, workdir, resume=resume, device=device, progress=progress, runtime=current_runtime())
    if distributed.setup(device).is_main:
        loss = "" if math.isnan(result.last_loss) else f"; loss {result.last_loss:.4f}"
        budget = (f" (training.time_budget_s {config.training.time_budget_s:g} spent; --resume continues)"
                  if result.step < config.training.n_iters else "")
        click.echo(f"trained to step {result.step}{budget}{loss}; checkpoint {result.checkpoint}")
    distributed.cleanup()


@click.command("sample")
@sampling_options
@click.option("--n", "--num-samples", "n", type=click.IntRange(min=1), default=64,
              help="Number of samples (spell it --num-samples under torchrun, whose parser claims --n).")
@click.option("--progression", is_flag=True, help="Also write the annealing progression (PNG strip and GIF).")
@click.option("--per-example-seeds", is_flag=True,
              help="Seed every chain from (seed, index), so the samples do not depend on --batch-size.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@user_errors
def sample_command(workdir, checkpoint, ema, dataset, image_size, denoise, steps_each, step_lr, batch_size, seed,
                   device, n, progression, per_example_seeds, out):
    """Draw samples (--sampler ald|pc|ode|heun): samples.npz (uint8 NxHxWxC), grid.png, sample_config.json (sampler,
    settings, NFE), optional progression."""
    source = model_source(workdir, checkpoint)
    dist_info = distributed.setup(device)
    model, config, info = load_score_model(source, ema=ema, device=dist_info.device, dataset=dataset,
                                           image_size=image_size)
    resolved_sampling(config, denoise, steps_each, step_lr, batch_size)
    summary = sample_to_folder(model, config, info, n, seed, out, dist_info, progression,
                               per_example=per_example_seeds)
    if dist_info.is_main:
        click.echo(f"wrote {n} samples to {Path(out) / 'samples.npz'} in {summary['seconds']:.1f}s")
    distributed.cleanup()


@click.command("export")
@click.option("--workdir", type=click.Path(file_okay=False), help="Run folder (its latest checkpoint).")
@click.option("--checkpoint", type=click.Path(), help="A full training checkpoint or an official .pth file.")
@click.option("--ema/--no-ema", default=None, help="Export EMA weights [default: EMA when present].")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for model.safetensors + config.json.")
@official_options
@user_errors
def export_command(workdir, checkpoint, ema, out, dataset, image_size):
    """Write a slim, weights-only export (safetensors + JSON config) that `ncsn sample --checkpoint` loads."""
    folder = export_slim(model_source(workdir, checkpoint), out, ema=ema, dataset=dataset, image_size=image_size)
    click.echo(f"exported to {folder}")


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/demo", help="Run folder.")
@click.option("--n", type=click.IntRange(min=1), default=1000, help="Digits to sample after training.")
@click.option("--seed", type=int, default=0, help="Sampling seed.")
@device_option()
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a digits config field.")
@runtime_options
@user_errors
def demo_command(workdir, n, seed, device, overrides):
    """Train the `digits` config (a few minutes on two CPU cores), sample digits and score them with a classifier."""
    from ..demo import demo_report, format_report

    workdir = Path(workdir)
    config = load_config("digits", overrides)
    start = time.perf_counter()
    latest = latest_checkpoint(workdir)
    trains = latest is None or int(latest.stem.split("_")[1]) < config.training.n_iters
    if trains:
        train(config, workdir, resume=latest is not None, device=device, runtime=current_runtime())
    train_seconds = time.perf_counter() - start
    dist_info = distributed.setup(device)
    model, config, info = load_score_model(workdir, device=dist_info.device)
    summary = sample_to_folder(model, config, info, n, seed, workdir / "samples_final", dist_info, progression=True)
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
