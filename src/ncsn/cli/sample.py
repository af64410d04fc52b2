"""`ncsn sample`, and the sampling pieces `eval` and `inpaint` share: the chain options, the resolved sampling
section and ``sample_to_folder``."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import click
import numpy as np
import torch

from .. import distributed
from ..checkpoint import load_score_model
from ..data import to_uint8_hwc
from ..errors import storage_errors
from ..generate import generate
from ..images import save_grid, save_progression
from ..io import save_npz
from ..runtime import RuntimeOptions, resolve
from ..samplers import denoise_for, used_settings
from .option_groups import model_source_options, n_option, out_option, output_options, runtime_options
from .options import device_option, user_errors, write_json
from .sampler_options import SamplerChoice, note_untrained_ladder, sampler_options


def sampling_options(func):
    """Options shared by every command that runs the sampler (besides its ``output_options``): where the model comes
    from, the device, the runtime and the sampler with its settings (``sampler: SamplerChoice``); unset ones fall
    back to the run's config."""
    options = [model_source_options, device_option(), runtime_options, sampler_options]
    for option in reversed(options):
        func = option(func)
    return func


def resolved_sampling(config, sampler: SamplerChoice, batch_size: int | None):
    """A copy of ``config`` with a new sampling section: the command's sampler options applied (and validated) and
    its batch size; the loaded config itself is left as it is."""
    sampling = sampler.apply(config.sampling)
    resolved = copy.copy(config)
    resolved.sampling = dataclasses.replace(sampling, batch_size=batch_size or sampling.batch_size)
    return resolved


def nfe_summary(per_batch: list[int]) -> dict:
    """NFE actually spent: per sample (the mean over batches; every chain of a batch sees each evaluation) and the
    network calls of all batches together."""
    mean = sum(per_batch) / max(len(per_batch), 1)
    return {"nfe": int(mean) if mean == int(mean) else round(mean, 2), "nfe_total": int(sum(per_batch))}


def sample_to_folder(model, config, info, n, seed, out, dist_info, progression=False,
                     runtime: RuntimeOptions | None = None, per_example=False) -> dict:
    """Draw n samples (this rank's share), gather them on rank 0 over the process group (no shared filesystem
    needed), which writes samples.npz, grid.png and the progression; other ranks write nothing and return {}.

    ``runtime`` (the command's --compile/--precision/--channels-last; the defaults when None): what it leaves to the
    library is decided here and written to sample_config.json. ``per_example`` seeds every chain from (seed, index),
    so the samples do not depend on the batch size.
    """
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    first_batch = (min(config.sampling.batch_size, n), *shape)
    runtime = resolve(runtime or RuntimeOptions(), model, dist_info.device, first_batch, training=False)
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
        **used_settings(s), "denoise": denoise_for(s), "batch_size": s.batch_size, "seconds": seconds, "processes": dist_info.world_size, "compile": runtime.compile,
        "precision": runtime.precision, "channels_last": runtime.channels_last, "sampler": s.sampler,
        "sampler_settings": used_settings(s), **nfe_summary(nfe),
    }
    write_json(out / "sample_config.json", summary)
    return summary


@click.command("sample")
@sampling_options
@output_options(
    n=n_option(64, "Number of samples (spell it --num-samples under torchrun, whose parser claims --n).",
               torchrun=True),
    out=out_option("folder", "Output folder."),
)
@click.option("--progression", is_flag=True, help="Also write the annealing progression (PNG strip and GIF).")
@click.option("--per-example-seeds", is_flag=True,
              help="Seed every chain from (seed, index), so the samples do not depend on --batch-size.")
@user_errors
def sample_command(source, device, runtime, sampler, output, progression, per_example_seeds):
    """Draw samples (--sampler ald|pc|ode|heun): samples.npz (uint8 NxHxWxC), grid.png, sample_config.json (sampler,
    settings, NFE), optional progression."""
    dist_info = distributed.setup(device)
    model, config, info = load_score_model(source.path, device=dist_info.device, **source.load_kwargs())
    config = resolved_sampling(config, sampler, output.batch_size)
    summary = sample_to_folder(model, config, info, output.n, output.seed, output.out, dist_info, progression,
                               runtime=runtime, per_example=per_example_seeds)
    if dist_info.is_main:
        click.echo(f"wrote {output.n} samples to {output.out / 'samples.npz'} in {summary['seconds']:.1f}s")
    distributed.cleanup()
