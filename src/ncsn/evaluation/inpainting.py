"""How good inpainting is: figures on the missing pixels of completions (PSNR, MSE, the best of M, their average,
their diversity) beside the naive mean-fill baseline."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..masks import fit_mask


def mean_fill(images: torch.Tensor, mask) -> torch.Tensor:
    """The naive baseline: every missing pixel gets its image's mean known value (per channel; 0.5 if none known)."""
    known = fit_mask(mask, images).expand_as(images).float()
    count = known.sum(dim=(2, 3), keepdim=True)
    mean = torch.where(count > 0, (images * known).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1), 0.5)
    return torch.where(known.bool(), images, mean.expand_as(images))


def quality(originals: torch.Tensor, samples: torch.Tensor, mask) -> dict:
    """Figures on the missing pixels of originals (K, C, H, W) and completions (K, M, C, H, W), all in [0, 1].

    mse and psnr (mean over completions of 10 log10(1 / MSE)); best_psnr takes each image's best completion;
    average_* score the per-pixel average of the M completions; diversity is the per-pixel std across them;
    baseline_* are the mean-fill figures.
    """
    if samples.dim() != 5 or samples.shape[0] != originals.shape[0] or samples.shape[2:] != originals.shape[1:]:
        raise InputError(f"samples {tuple(samples.shape)} do not match originals {tuple(originals.shape)} as (K, M, C, H, W)")
    m = samples.shape[1]
    missing = (~fit_mask(mask, originals)).expand_as(originals).float()
    n_missing = missing.sum(dim=(1, 2, 3)).clamp(min=1)
    sq = ((samples - originals.unsqueeze(1)) ** 2 * missing.unsqueeze(1)).sum(dim=(2, 3, 4)) / n_missing.unsqueeze(1)
    psnr = -10 * torch.log10(sq.clamp(min=1e-10))
    average = ((samples.mean(dim=1) - originals) ** 2 * missing).sum(dim=(1, 2, 3)) / n_missing
    base = ((mean_fill(originals, mask) - originals) ** 2 * missing).sum(dim=(1, 2, 3)) / n_missing
    spread = samples.std(dim=1) if m > 1 else torch.zeros_like(originals)
    return {
        "missing_share": float(missing.mean()),
        "mse": float(sq.mean()),
        "psnr": float(psnr.mean()),
        "best_psnr": float(psnr.max(dim=1).values.mean()),
        "average_mse": float(average.mean()),
        "average_psnr": float((-10 * torch.log10(average.clamp(min=1e-10))).mean()),
        "diversity": float((spread * missing).sum() / missing.sum().clamp(min=1)),
        "baseline_mse": float(base.mean()),
        "baseline_psnr": float((-10 * torch.log10(base.clamp(min=1e-10))).mean()),
    }
