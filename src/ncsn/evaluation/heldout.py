"""The held-out denoising score matching loss per noise level: a model-comparison metric (SPEC §8)."""

from __future__ import annotations

import torch

from ..data import prepare_batch
from ..losses import dsm_loss


@torch.no_grad()
def heldout_dsm_loss(
    score_fn, images: torch.Tensor, sigmas: torch.Tensor, anneal_power: float = 2.0, seed: int = 0,
    dequantize: bool = True, batch_size: int = 500, device="cpu",
) -> dict:
    """DSM loss of every test image at every level, with dequantisation and noise z fixed by ``seed``.

    Each image keeps the same z at all levels, and two models given the same seed see the same noise, so the
    per-level numbers compare levels and models. ``mean`` is the unweighted mean over levels: the training
    objective's expectation (levels drawn uniformly, each already weighted by sigma^anneal_power).
    """
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    x = prepare_batch(images.cpu(), gen, random_flip=False, dequantize=dequantize)
    noise = torch.randn(x.shape, generator=gen)
    sums = torch.zeros(len(sigmas), dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        xb, zb = x[start : start + batch_size].to(device), noise[start : start + batch_size].to(device)
        for level in range(len(sigmas)):
            labels = torch.full((len(xb),), level, dtype=torch.long, device=device)
            sums[level] += dsm_loss(score_fn, xb, sigmas, labels, anneal_power, noise=zb).cpu().double().sum()
    per_level = (sums / len(x)).tolist()
    return {
        "sigmas": sigmas.cpu().tolist(), "per_level": per_level, "mean": sum(per_level) / len(per_level),
        "n_images": len(x), "seed": seed, "anneal_power": anneal_power,
    }
