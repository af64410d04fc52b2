"""Masks for inpainting: 1 (True) where a pixel is known. ``fit_mask`` fits any mask shape to a batch of images;
``parse_mask_spec`` and ``make_mask`` build the command line's named masks, random pixels and PNG masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError

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
