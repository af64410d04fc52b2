"""Inpainting (SPEC §6): a sampler of ``ncsn.samplers`` (ald or pc) plus a constraint that holds known pixels.

At level i the known pixels of x are set to one noisy copy y + sigma_i * z before the level and reset to it after
every step (the paper's procedure); ``redraw_every_step`` draws a fresh copy at every reset instead (the v2 code,
and Score-SDE's way with the pc sampler, whose known pixels get a fresh noisy copy after every move).
A mask is 1 (True) where a pixel is known. Mask builders for the command line's named masks live here too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .samplers import (SPECS, Generators, SamplerSettings, ScoreFn, initial_state, randn, run_sampler, sampler_spec,
                       schedule)

MASK_NAMES = ("left-half", "right-half", "top-half", "bottom-half", "center-box", "every-other-row")


def fit_mask(mask, images: torch.Tensor) -> torch.Tensor:
    """A bool mask (N|1, C|1, H, W) for images (N, C, H, W) from (H, W), (N|1, H, W) or (N|1, C|1, H, W) 0/1 values.

    A 3-D mask is one mask per image (all channels). Anything else raises InputError (a ValueError) naming both shapes.
    """
    mask = torch.as_tensor(mask)
    n, c, h, w = images.shape
    full = {2: (1, 1, *mask.shape), 3: (mask.shape[0], 1, *mask.shape[1:])}.get(mask.dim(), tuple(mask.shape))
    if len(full) != 4 or full[0] not in (1, n) or full[1] not in (1, c) or tuple(full[2:]) != (h, w):
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(images.shape)}: "
            f"use (H, W), (N|1, H, W) or (N|1, C|1, H, W) with H, W = {h}, {w}"
        )
    if mask.dtype != torch.bool:
        if not torch.isin(mask, torch.tensor([0, 1], dtype=mask.dtype, device=mask.device)).all():
            raise InputError("mask values must be 0 or 1 (1 = known pixel)")
        mask = mask != 0
    return mask.reshape(full).to(images.device)


@torch.no_grad()
def inpaint(
    score_fn: ScoreFn,
    images: torch.Tensor,
    mask,
    sigmas: torch.Tensor,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = False,
    convention: str = "code",
    redraw_every_step: bool = False,
    generator: Generators = None,
    init: torch.Tensor | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
    settings: SamplerSettings | None = None,
    info: dict | None = None,
) -> torch.Tensor:
    """Complete ``images`` (N, C, H, W, [0, 1]) where ``mask`` is 0; known pixels come back exactly as given.

    ``sigmas`` is the model's ladder. ``settings`` (a SamplerSettings naming a sampler that takes a constraint: ald
    or pc) replaces the four annealed Langevin arguments when given. Chains start from ``init`` (default: the
    sampler's own start, drawn from ``generator``). The noisy copies of the known pixels are drawn from
    ``generator`` too, but only when something is known, so an empty mask reproduces the sampler with the same
    generator. ``callback(i, sigma_next, x)`` and ``info`` are ``run_sampler``'s. Returns float32, unclamped, like
    the sampler.
    """
    if settings is None:
        settings = SamplerSettings.of("ald", n_steps_each=n_steps_each, step_lr=step_lr, denoise=denoise,
                                      convention=convention)
    if not sampler_spec(settings).inpainting:
        takers = ", ".join(name for name, spec in SPECS.items() if spec.inpainting)
        raise InputError(f"inpainting works with the {takers} samplers, not {settings.sampler}")
    y = images.detach().to(torch.float32)
    known = fit_mask(mask, y)
    x = initial_state(settings, y.shape, sigmas, generator, y.device) if init is None else init
    levels = [float(s) for s in schedule(settings, sigmas)]
    held: dict[str, torch.Tensor] = {}

    def hold_known(x: torch.Tensor, level: int, step: int) -> None:
        if step == -1 or redraw_every_step:
            held["y"] = y + levels[level] * randn(y.shape, generator, y.device)
        x.copy_(torch.where(known, held["y"], x))

    constraint = hold_known if bool(known.any()) else None
    x = run_sampler(score_fn, x, sigmas, settings, generator, callback, constraint, info)
    return torch.where(known, y, x)


def parse_mask_spec(spec: str) -> tuple[str, float | Path | None]:
    """Check a mask spec: a name in MASK_NAMES, ``random-pixels:P`` (P = missing share) or a PNG file path."""
    if spec in MASK_NAMES:
        return spec, None
    if spec.startswith("random-pixels:"):
        try:
            share = float(spec.split(":", 1)[1])
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise InputError(f"random-pixels:P needs a missing share P in [0, 1], got {spec!r}")
        return "random-pixels", share
    path = Path(spec)
    if path.is_file():
        return "file", path
    if path.suffix.lower() == ".png" or path.exists():
        raise InputError(f"mask file {path}: no such file")
    raise InputError(f"unknown mask {spec!r}: use one of {', '.join(MASK_NAMES)}, random-pixels:P or a PNG file")


def make_mask(spec: str, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A shared (H, W) bool mask, True = known. random-pixels draws from a generator seeded with ``seed``;
    a PNG file counts grey >= 128 as known and must be H x W."""
    kind, arg = parse_mask_spec(spec)
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)
    if kind == "left-half":
        return cols < width // 2
    if kind == "right-half":
        return cols >= width - width // 2
    if kind == "top-half":
        return rows < height // 2
    if kind == "bottom-half":
        return rows >= height - height // 2
    if kind == "center-box":
        inside = (rows >= height // 4) & (rows < height - height // 4) & (cols >= width // 4) & (cols < width - width // 4)
        return ~inside
    if kind == "every-other-row":
        return rows % 2 == 0
    if kind == "random-pixels":
        order = torch.randperm(height * width, generator=torch.Generator().manual_seed(seed))
        known = torch.ones(height * width, dtype=torch.bool)
        known[order[: round(arg * height * width)]] = False
        return known.view(height, width)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(arg) as img:
            grey = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"mask file {arg}: not an image PIL can read ({type(err).__name__})") from None
    if grey.shape != (height, width):
        raise InputError(f"mask file {arg} is {grey.shape[1]}x{grey.shape[0]} but the images are {width}x{height}")
    return torch.from_numpy(grey >= 128)


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
