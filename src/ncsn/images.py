"""Image files: sample grids, annealing progressions (PNG strip and animated GIF), each written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from .io import save_image


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1) -> Image.Image:
    """A PIL grid of [0, 1] images (N, C, H, W), clamped; ``scale`` enlarges small images (nearest neighbour)."""
    from torchvision.utils import make_grid  # imported here: torchvision takes seconds to import

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def auto_scale(size: int) -> int:
    """Enlargement that makes tiny images (8x8 digits) visible: about 32 pixels a side."""
    return max(1, 32 // size)


def masked_view(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) with the pixels where ``known`` is False shown as a grey checker (what an inpainter sees)."""
    h, w = images.shape[-2:]
    checker = ((torch.arange(h).view(-1, 1) + torch.arange(w)) % 2) * 0.3 + 0.35
    return torch.where(known.to(images.device), images, checker.to(images))


def save_grid(path: str | Path, images: torch.Tensor, nrow: int | None = None) -> Path:
    path = Path(path)
    image = grid_image(images, nrow, scale=auto_scale(images.shape[-1]))
    return save_image(path, image)


def save_progression(png_path: str | Path, gif_path: str | Path | None, frames: list[torch.Tensor], nrow=None) -> None:
    """One grid per annealing level: side by side in a PNG strip, and as the frames of a GIF."""
    scale = auto_scale(frames[0].shape[-1])
    grids = [grid_image(f, nrow, scale=scale).convert("RGB") for f in frames]
    strip = Image.new("RGB", (sum(g.width for g in grids), grids[0].height), "white")
    x = 0
    for g in grids:
        strip.paste(g, (x, 0))
        x += g.width
    save_image(png_path, strip)
    if gif_path is not None:
        save_image(gif_path, grids[0], save_all=True, append_images=grids[1:], duration=300, loop=0)
