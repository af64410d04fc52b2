"""Drawing many samples from a score model: batching, per-batch seeds, rank sharding, progress, frames, NFE.

Batch b always uses a generator seeded from (seed, b), so a sample set depends on (seed, batch size) only, not on
how many processes made it; with ``per_example`` every chain has its own generator seeded from (seed, index), and
the set depends on the seed only. Any sampler of ``ncsn.samplers`` runs here, as the settings name it.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .errors import InputError
from .runtime import RuntimeOptions, score_function
from .samplers import callback_count, check_fits, frame_steps, initial_state, per_example_generators, run_sampler


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
    info: dict | None = None,
    per_example: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """This rank's share of ``n`` samples: (indices, images clamped to [0, 1] on the CPU, frames or None).

    ``sigmas`` is the model's ladder; ``settings`` (a SamplingConfig or SamplerSettings) names the sampler and its
    settings. With ``keep_frames`` the first batch's images along the chain are returned (one frame per level for
    ald). ``runtime`` runs the network compiled, under bf16 autocast or channels_last (the chain stays float32).
    ``info`` receives ``nfe_per_batch`` (network evaluations of each of this rank's batches). ``per_example`` draws
    chain i from its own generator seeded by (seed, i) (slower: one draw per chain per step).
    """
    if runtime is not None:
        score_fn = score_function(score_fn, runtime, device)
    sigmas = sigmas.to(device)
    check_fits(score_fn, settings, sigmas)
    batch_size = batch_size or getattr(settings, "batch_size", None)
    if not batch_size:
        raise InputError("generate: give batch_size (sampler settings without a config's sampling section carry none)")
    n_batches = math.ceil(n / batch_size)
    mine = list(range(rank, n_batches, world_size))
    per_batch = callback_count(settings, sigmas)
    keep = frame_steps(settings, sigmas) if keep_frames else set()
    bar = tqdm(total=len(mine) * per_batch, disable=not progress, desc=f"sampling ({settings.sampler})", unit="step")
    indices, images, frames, spent = [], [], [] if keep_frames else None, []
    for b in mine:
        count = min(batch_size, n - b * batch_size)
        if per_example:
            gen = per_example_generators(seed, count, start=b * batch_size, device=device)
        else:
            gen = batch_generator(seed, b, device)
        x0 = initial_state(settings, (count, *image_shape), sigmas, generator=gen, device=device)

        def callback(i, sigma_next, x, _first=(b == mine[0])):
            bar.update(1)
            if _first and i + 1 in keep:
                frames.append(x[:64].clamp(0, 1).cpu())

        found: dict = {}
        x = run_sampler(score_fn, x0, sigmas, settings, generator=gen, callback=callback, info=found)
        spent.append(found["nfe"])
        indices.append(torch.arange(b * batch_size, b * batch_size + count))
        images.append(x.clamp(0, 1).cpu())
    bar.close()
    if info is not None:
        info["nfe_per_batch"] = spent
    if not images:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, *image_shape), frames
    return torch.cat(indices), torch.cat(images), frames
