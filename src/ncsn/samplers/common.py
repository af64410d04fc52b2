"""What every sampler shares: seeded noise, initial states, the NFE counter, the model checks and the Tweedie step.

A score function is ``score_fn(x, sigma)`` with ``sigma`` a float32 (N,) tensor. A level-conditioned network (NCSN
v1) exposes ``level_conditioned = True`` and its ``sigmas`` ladder (``ScoreModel`` and the runtime wrapper do); a
plain callable is taken to accept any sigma > 0, like a sigma-scaled NCSNv2 network.
A sampler never changes a score in place and never keeps one past the next evaluation: a compiled score (CUDA graphs,
``--compile`` on a GPU) hands back one output buffer that its next call overwrites.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..sigmas import SigmaOffLadderError, ladder_levels

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape, generator: Generators = None, device=None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal float32 noise; a list of generators draws each example from its own generator.

    One generator per example makes a sample depend on its own seed only, not on the batch it was drawn in.
    ``out`` (contiguous float32 of ``shape``) is filled in place instead of allocating; the values are the same.
    """
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    if out is None:
        out = torch.empty(shape, device=device, dtype=torch.float32)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(out.shape, generator=generator, device=out.device, dtype=torch.float32, out=out)
    for k, g in enumerate(generator):
        torch.randn(out.shape[1:], generator=g, device=out.device, dtype=torch.float32, out=out[k])
    return out


def uniform_init(shape, generator: Generators = None, device=None) -> torch.Tensor:
    """The reference initialisation of annealed Langevin chains: x ~ Uniform[0, 1]^D."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=device) for g in generator])


def prior_init(shape, sigma_max: float, generator: Generators = None, device=None) -> torch.Tensor:
    """The VE prior N(0, sigma_max^2 I) that Score-SDE's and EDM's samplers start from."""
    return randn(shape, generator, device).mul_(float(sigma_max))


def per_example_generators(seed: int, count: int, start: int = 0, device=None) -> list[torch.Generator]:
    """One generator per example ``start``, ..., ``start + count - 1``, so example k of a run always gets the same
    noise whatever batch it is drawn in.

    Example k's seed is hashed from (seed, k) by numpy's SeedSequence, so neighbouring seeds share no streams (a
    plain ``seed + k`` would give seed s's example k + 1 the noise of seed s + 1's example k). ``device`` (a device,
    or a tensor whose device to follow) defaults to torch's default device, where new tensors go.
    """
    import numpy as np

    if isinstance(device, torch.Tensor):
        device = device.device
    device = torch.get_default_device() if device is None else torch.device(device)
    entropy = seed % 2**64  # SeedSequence takes non-negative integers; negative seeds map one-to-one
    seeds = [int(np.random.SeedSequence(entropy, spawn_key=(start + k,)).generate_state(1, np.uint64)[0])
             for k in range(count)]
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


class Counted:
    """A score function that counts its calls: the network evaluations (NFE), each on the whole batch."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, sigma)


def check_noise_range(s_noise: float, s_min: float, s_max: float) -> None:
    """The noise scale and the sigma range it applies to (ald's temperature, heun's churn), or ValueError."""
    if not (s_min >= 0 and s_max >= s_min):
        raise ValueError(f"need 0 <= s_min <= s_max, got s_min={s_min}, s_max={s_max}")
    if not s_noise > 0:
        raise ValueError(f"s_noise must be positive, got {s_noise}")


def report(info: dict | None, **figures) -> None:
    """Fill the caller's ``info`` dict (if any) with what a sampler spent, e.g. ``nfe``."""
    if info is not None:
        info.update(figures)


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped (N, 1, 1, ...) to broadcast against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def is_level_conditioned(score_fn) -> bool:
    return bool(getattr(score_fn, "level_conditioned", False))


def require_any_sigma(score_fn, what: str) -> None:
    """Refuse a level-conditioned network up front for a sampler that evaluates sigmas off its ladder."""
    if is_level_conditioned(score_fn):
        ladder = getattr(score_fn, "sigmas", None)
        known = f"its {len(ladder)}-level ladder" if ladder is not None else "its training ladder"
        raise SigmaOffLadderError(
            f"{what} evaluates the score at sigmas between the levels, but this network is level-conditioned "
            f"(NCSN v1) and knows only {known}: use the pc sampler (or ald) on that ladder, or a sigma-scaled "
            "unconditional network (NCSNv2) for this sampler"
        )


def require_on_ladder(score_fn, sigmas: torch.Tensor, what: str) -> None:
    """For a level-conditioned network, every sigma of the schedule must be one of its ladder's levels."""
    ladder = getattr(score_fn, "sigmas", None)
    if not is_level_conditioned(score_fn) or ladder is None:
        return
    try:
        ladder_levels(ladder.detach().float().cpu(), sigmas.detach().float().cpu())
    except SigmaOffLadderError:
        raise SigmaOffLadderError(
            f"{what}: this level-conditioned network (NCSN v1) knows only its {len(ladder)}-level ladder, and the "
            f"schedule ({len(sigmas)} sigmas from {float(sigmas[0]):.4g} to {float(sigmas[-1]):.4g}) leaves it: run "
            "pc on the network's own ladder (no n_steps), or use a sigma-scaled network (NCSNv2) for other schedules"
        ) from None


def tweedie(score_fn: ScoreFn, x: torch.Tensor, sigma_batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """The final denoising step x + sigma^2 s(x, sigma) (Tweedie's formula), in place, in float32."""
    sigma_batch.fill_(sigma)
    return x.add_(score_fn(x, sigma_batch).float(), alpha=sigma**2)
