"""`ncsn inpaint`: complete test, train or folder images under a mask, write the completions, a grid and figures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click
import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_score_model
from ..data import load_split, resize_uint8, to_uint8_hwc
from ..errors import InputError, storage_errors
from ..generate import batch_generator
from ..images import auto_scale, grid_image, masked_view
from ..io import save_image, save_npz
from ..inpainting import MASK_NAMES, inpaint, make_mask, parse_mask_spec, quality
from ..runtime import RuntimeOptions, score_function
from ..samplers import SPECS, callback_count, check_fits, denoise_for, sampler_spec, used_settings
from .option_groups import out_option, output_options
from .options import user_errors, write_json
from .sample import nfe_summary, resolved_sampling, sampling_options
from .sampler_options import note_untrained_ladder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _check_mask(ctx, param, value: str) -> str:
    try:
        parse_mask_spec(value)
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


def folder_images(folder: Path, channels: int, size: int, count: int) -> torch.Tensor:
    """The first ``count`` image files of a folder (by name) as uint8 (N, C, size, size): centre-cropped, resized."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise InputError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files to inpaint")
    images = []
    for path in files:
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                array = np.asarray(img.crop((left, top, left + side, top + side))).reshape(side, side, channels)
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"--images {path}: not an image PIL can read ({type(err).__name__})") from None
        images.append(resize_uint8(torch.from_numpy(array.copy()).permute(2, 0, 1)[None], size))
    return torch.cat(images)


def original_images(source: str, config, count: int) -> torch.Tensor:
    """uint8 (K, C, H, W) originals: the first ``count`` of the model's test or train split, or of a folder."""
    if source in ("test", "train"):
        images = load_split(config.data, source, limit=count).images
    elif Path(source).is_dir():
        images = folder_images(Path(source), config.model.in_channels, config.data.image_size, count)
    else:
        raise InputError(f"--images must be test, train or a folder of images; {source!r} is none of these")
    if len(images) < count:
        raise InputError(f"asked for {count} images but {source} has only {len(images)}")
    return images[:count]


def complete(model, originals: torch.Tensor, known: torch.Tensor, m: int, settings, seed: int, device,
             redraw: bool, nfe: list | None = None, runtime: RuntimeOptions | None = None) -> torch.Tensor:
    """M completions of each original ([0, 1], (K, C, H, W)) as (K, M, C, H, W) by the ald or pc sampler; chunk b of
    the K*M chains is seeded from (seed, b) as in `ncsn sample`. ``nfe`` collects each chunk's evaluations;
    ``runtime`` is the command's --compile/--precision/--channels-last (the defaults when None)."""
    k = originals.shape[0]
    images = originals.repeat_interleave(m, dim=0)
    total, size = images.shape[0], settings.batch_size
    sigmas = model.sigmas.to(device)
    score = score_function(model, runtime or RuntimeOptions(), device)
    check_fits(score, settings, sigmas)
    steps = callback_count(settings, sigmas)
    bar = tqdm(total=math.ceil(total / size) * steps, desc=f"inpainting ({settings.sampler})", unit="step")
    out = []
    for b in range(math.ceil(total / size)):
        chunk = images[b * size:(b + 1) * size].to(device)
        found: dict = {}
        x = inpaint(score, chunk, known, sigmas, redraw_every_step=redraw, generator=batch_generator(seed, b, device),
                    callback=lambda *_: bar.update(1), settings=settings, info=found)
        if nfe is not None:
            nfe.append(found["nfe"])
        out.append(x.clamp(0, 1).cpu())
    bar.close()
    return torch.cat(out).view(k, m, *originals.shape[1:])


@click.command("inpaint")
@sampling_options
@click.option("--mask", "mask_spec", default="left-half", callback=_check_mask, metavar="SPEC",
              help=f"Known pixels: {', '.join(MASK_NAMES)}, random-pixels:P (share P missing) or a PNG "
                   "(grey >= 128 = known).")
@click.option("--images", "images_source", default="test", metavar="test|train|FOLDER",
              help="Originals: the model dataset's test or train split, or a folder of PNG/JPG files.")
@click.option("--n-images", type=click.IntRange(min=1), default=20, help="Number of originals K.")
@click.option("--n-per-image", type=click.IntRange(min=1), default=20, help="Completions M of each original.")
@click.option("--redraw/--no-redraw", default=False,
              help="Redraw the noisy known pixels at every step (v2 code) instead of once per level (paper).")
@output_options(out=out_option("folder", "Output folder."))
@user_errors
def inpaint_command(source, device, runtime, sampler, mask_spec, images_source, n_images, n_per_image, redraw,
                    output):
    """Inpaint under a mask with the ald or pc sampler: inpainting.npz (original, mask, samples), grid.png and
    inpainting.json with figures, the sampler, its settings and the NFE."""
    seed, out = output.seed, output.out
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, config, info = load_score_model(source.path, device=device, **source.load_kwargs())
    config = resolved_sampling(config, sampler, output.batch_size)
    settings = config.sampling
    size = config.data.image_size
    known = make_mask(mask_spec, size, size, seed=seed)
    originals = original_images(images_source, config, n_images).float() / 255.0
    if not sampler_spec(settings).inpainting:
        takers = " and ".join(name for name, spec in SPECS.items() if spec.inpainting)
        raise InputError(f"--sampler {settings.sampler}: inpainting works with the {takers} samplers")
    note_untrained_ladder(config)
    start = time.perf_counter()
    nfe: list[int] = []
    samples = complete(model, originals, known, n_per_image, settings, seed, device, redraw, nfe, runtime)
    seconds = time.perf_counter() - start

    stored = torch.from_numpy(to_uint8_hwc(samples.flatten(0, 1))).permute(0, 3, 1, 2).float() / 255.0
    figures = quality(originals, stored.view_as(samples), known)
    rows = torch.cat([originals[:, None], masked_view(originals, known)[:, None], samples], dim=1)
    with storage_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        save_npz(
            out / "inpainting.npz", compressed=True, original=to_uint8_hwc(originals),
            mask=known.expand(n_images, size, size).to(torch.uint8).numpy(),
            samples=to_uint8_hwc(samples.flatten(0, 1)).reshape(n_images, n_per_image, size, size, -1),
        )
        save_image(out / "grid.png", grid_image(rows.flatten(0, 1), nrow=n_per_image + 2, scale=auto_scale(size)))
    s = settings
    report = {
        "mask": mask_spec, "images": images_source, "n_images": n_images, "n_per_image": n_per_image, "seed": seed,
        "redraw_every_step": redraw, "weights": info["weights"], "step": info.get("step"),
        **used_settings(s), "denoise": denoise_for(s), "batch_size": s.batch_size, "sampler_settings": used_settings(s),
        **nfe_summary(nfe),
        "seconds": seconds, **figures,
    }
    write_json(out / "inpainting.json", report)
    click.echo(
        f"inpainted {n_images} images x {n_per_image} completions ({mask_spec}, {figures['missing_share']:.0%} "
        f"missing) in {seconds:.1f}s\n"
        f"missing pixels: PSNR {figures['psnr']:.2f} dB (best of {n_per_image}: {figures['best_psnr']:.2f}), "
        f"MSE {figures['mse']:.4f}; their average: PSNR {figures['average_psnr']:.2f} dB, MSE "
        f"{figures['average_mse']:.4f}; diversity (std across completions) {figures['diversity']:.4f}\n"
        f"mean-fill baseline: PSNR {figures['baseline_psnr']:.2f} dB, MSE {figures['baseline_mse']:.4f}\n"
        f"wrote {out / 'inpainting.npz'}, {out / 'grid.png'}, {out / 'inpainting.json'}"
    )
