"""Drawing many samples from a score model: batching, per-batch seeds, rank sharding, progress, frames.

Batch b always uses a generator seeded from (seed, b), so a sample set depends on (seed, batch size) only, not on
how many processes made it.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .runtime import RuntimeOptions, score_function
from .sampling import annealed_langevin, uniform_init


def batch_generator(seed: int, batch_index: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch_index) % (2**63))


def generate(
    score_fn,
    sigmas: torch.Tensor,
    n: int,
    image_shape: tuple[int, int, int],
    settings,
    seed: int = 0,
    device="cpu",
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    keep_frames: bool = False,
    runtime: RuntimeOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """This rank's share of ``n`` samples: (indices, images clamped to [0, 1] on the CPU, frames or None).

    ``settings`` carries n_steps_each, step_lr, denoise and convention (a SamplingConfig). With ``keep_frames``
    the first batch's images at the end of every level are returned, one frame per level. ``runtime`` runs the
    network compiled, under bf16 autocast or channels_last (the chain itself stays float32).
    """
    if runtime is not None:
        score_fn = score_function(score_fn, runtime, device)
    batch_size = batch_size or settings.batch_size
    n_batches = math.ceil(n / batch_size)
    mine = list(range(rank, n_batches, world_size))
    sigmas = sigmas.to(device)
    steps_per_batch = len(sigmas) * settings.n_steps_each
    bar = tqdm(total=len(mine) * steps_per_batch, disable=not progress, desc="sampling", unit="step")
    indices, images, frames = [], [], [] if keep_frames else None
    for b in mine:
        count = min(batch_size, n - b * batch_size)
        gen = batch_generator(seed, b, device)
        x0 = uniform_init((count, *image_shape), generator=gen, device=device)

        def callback(level, step, x, _first=(b == mine[0])):
            bar.update(1)
            if keep_frames and _first and step == settings.n_steps_each - 1:
                frames.append(x[:64].clamp(0, 1).cpu())

        x = annealed_langevin(
            score_fn, x0, sigmas, settings.n_steps_each, settings.step_lr, settings.denoise, settings.convention,
            generator=gen, callback=callback,
        )
        indices.append(torch.arange(b * batch_size, b * batch_size + count))
        images.append(x.clamp(0, 1).cpu())
    bar.close()
    if not images:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, *image_shape), frames
    return torch.cat(indices), torch.cat(images), frames
