"""Image files to a cached uint8 array: decode, convert channels, centre-crop, anti-aliased resize, streamed to disk.

Preparation runs once per file list and settings (the cache key); images are decoded by a few threads (Pillow
releases the GIL while decoding and resizing) in chunks written straight to the cache file, so memory stays at a
chunk however large the dataset is.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..io import write_json
from .cache import NpyWriter, cache_key, file_entries, open_cached
from .catalog import DataConfig, DatasetNotFoundError, NeedsWrite, cache_dir, check_channels

RESAMPLE = "bilinear"  # Pillow widens the filter when shrinking, so this is anti-aliased (torchvision's Resize)
CHUNK = 256
MAX_LISTED = 20


class UnreadableImagesWarning(UserWarning):
    """Some image files could not be decoded and were left out of the prepared array (one line lists them)."""


class ImageTooSmallError(InputError):
    """An image is smaller than the centre crop the config asks for."""


@dataclass(frozen=True)
class ImageSettings:
    """What decides the prepared pixels: output side, channels (1 grey, 3 RGB) and the square centre crop."""

    size: int
    channels: int
    crop: int | None

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grey PNGs open in one of these (0..65535)


def to_8bit(img):
    """Any Pillow mode as 8-bit L or RGB with its full range kept: 16-bit grey scaled by 255/65535 (Pillow's own
    convert clips it at 255, so it came out nearly white), CMYK by R = (255 - C)(255 - K) / 255 (not Pillow's
    version-dependent formula), and anything with transparency (RGBA, LA, PA, a palette with a transparent colour)
    composited on white, as a viewer shows it; fully transparent pixels become white whatever colour they hide."""
    from PIL import Image

    if img.mode in WIDE_GREY:
        grey = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(grey * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    if img.mode == "CMYK":
        cmyk = np.asarray(img).astype(np.uint32)
        rgb = ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def decode(path: Path, s: ImageSettings) -> np.ndarray:
    """One image file as uint8 (C, size, size): grey or RGB (``to_8bit``, then Pillow's luma for grey),
    centre-cropped (``crop``, else the largest square), then resized with Pillow's anti-aliased bilinear filter.

    Only regular files are opened (a named pipe would block for ever, a device never ends): anything else, a broken
    symlink or a symlink loop raises OSError, so the caller lists it among the unreadable files."""
    from PIL import Image

    st = os.stat(path)  # follows symlinks: FileNotFoundError when dangling, OSError ELOOP when looping
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with Image.open(path) as img:
        w, h = img.size
        side = s.crop or min(w, h)
        if w < side or h < side:
            raise ImageTooSmallError(f"{path}: {w}x{h} px is smaller than the centre crop data.center_crop={side}")
        img = to_8bit(img).convert("L" if s.channels == 1 else "RGB")
        if (w, h) != (side, side):
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
        if img.size != (s.size, s.size):
            img = img.resize((s.size, s.size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array.reshape(s.size, s.size, s.channels).transpose(2, 0, 1)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


def _decode_or_none(path: Path, s: ImageSettings, unreadable: tuple) -> np.ndarray | None:
    try:
        return decode(path, s)
    except ImageTooSmallError:
        raise
    except unreadable:
        return None


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def prepare_files(files: list[Path], path: Path, s: ImageSettings, base: Path, label: str) -> list[str]:
    """Decode ``files`` in order into the .npy at ``path`` (atomically); returns the skipped files, relative to base.

    Unreadable or truncated files, broken symlinks, symlink loops and anything not a regular file (a named pipe) are
    skipped and listed in one warning line; an image smaller than the crop stops preparation with an error naming
    it, and so does a list of which no file decodes.
    """
    start, skipped, unreadable = time.perf_counter(), [], _unreadable_errors()
    with NpyWriter(path, s.row_shape) as writer, ThreadPoolExecutor(_workers()) as pool, \
            tqdm(total=len(files), desc=f"preparing {label}", unit="img", disable=None) as bar:
        for i in range(0, len(files), CHUNK):
            chunk = files[i : i + CHUNK]
            rows = list(pool.map(lambda p: _decode_or_none(p, s, unreadable), chunk))
            skipped += [p.relative_to(base).as_posix() for p, row in zip(chunk, rows) if row is None]
            kept = [row for row in rows if row is not None]
            if kept:
                writer.append(np.stack(kept))
            bar.update(len(chunk))
        if writer.rows == 0:
            raise DatasetNotFoundError(f"{label}: none of the {len(files)} image files under {base} could be read "
                                       f"as an image (first: {skipped[0]})")
        writer.commit()
    if skipped:
        more = len(skipped) - MAX_LISTED
        listed = ", ".join(skipped[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")
        warnings.warn(f"{label}: skipped {len(skipped)} unreadable image file(s) under {base}: {listed}",
                      UnreadableImagesWarning, stacklevel=2)
    write_json(path.with_suffix(".json"), indent=1, payload={
        "images": len(files) - len(skipped), "files": len(files), "skipped": skipped, "base": str(base),
        "size": s.size, "channels": s.channels, "center_crop": s.crop, "resample": RESAMPLE,
        "seconds": round(time.perf_counter() - start, 3), "pid": os.getpid(),
    })
    return skipped


def cached_images(config: DataConfig, split: str, base: Path, files: list[Path], crop: int | None,
                  write: bool) -> np.memmap:
    """The prepared (memory-mapped) uint8 array of ``files``, made first when no cache with this key exists.

    Without ``write`` a missing cache raises NeedsWrite, so the caller can take the node lock and call again.
    """
    s = ImageSettings(config.image_size, check_channels(config), crop)
    key = cache_key({"size": s.size, "channels": s.channels, "crop": s.crop, "resample": RESAMPLE},
                    file_entries(base, files))
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", base.resolve().name) or "images"
    path = cache_dir() / config.dataset / f"{label}-{split}-{s.size}px-{s.channels}c-{key}.npy"
    cached = open_cached(path, s.row_shape)
    if cached is not None:
        return cached
    if not write:
        raise NeedsWrite
    prepare_files(files, path, s, base, f"{config.dataset} {split}")
    cached = open_cached(path, s.row_shape)
    if cached is None:
        raise DatasetNotFoundError(f"{path}: the prepared cache does not read back as a uint8 array")
    return cached
