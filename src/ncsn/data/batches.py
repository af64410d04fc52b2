"""The batch path: where training images are indexed from, and the uint8 -> float transforms applied on the device.

A training set within ``data.memory_budget_gb`` is one uint8 tensor on the training device and a batch is an index
into it. A larger one stays in its memory-mapped cache file (``MappedImages``): a batch is gathered on the host
and copied over. Both hand ``prepare_batch`` the same uint8 batch for the same indices, so the dequantisation
noise, flips and everything after them do not depend on which path ran.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

COPY_CHUNK_BYTES = 256 * 2**20


class MappedImages:
    """uint8 images (N, C, H, W) left in host memory or a memory-mapped file; ``images[indices]`` is the device batch.

    Supports what the training loop does with a device tensor: ``len``, ``.shape``, ``.to(device)`` and indexing
    by an int64 index tensor (any device), a slice or an int, returning uint8 tensors on ``device``.
    """

    def __init__(self, array: np.ndarray, device: torch.device | str = "cpu"):
        if array.dtype != np.uint8 or array.ndim != 4:
            raise ValueError(f"MappedImages needs uint8 (N, C, H, W), got {array.dtype} {array.shape}")
        self.array, self.device = array, torch.device(device)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.array.shape)

    def to(self, device) -> MappedImages:
        return MappedImages(self.array, device)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.detach().to("cpu", torch.int64).numpy()
        if isinstance(index, np.ndarray):
            order = np.argsort(index, kind="stable")  # read the file in ascending order, then restore the batch order
            rows = np.empty((len(index), *self.array.shape[1:]), dtype=np.uint8)
            rows[order] = self.array[index[order]]
        else:
            rows = np.array(self.array[index], dtype=np.uint8)
        batch = torch.from_numpy(rows)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)


def to_device(array: np.ndarray, device) -> torch.Tensor:
    """A uint8 array (possibly memory-mapped) as one tensor on ``device``, copied in chunks of at most 256 MiB so a
    GPU copy never needs a second full copy in host memory."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.from_numpy(np.array(array, dtype=np.uint8))
    out = torch.empty(array.shape, dtype=torch.uint8, device=device)
    per = max(1, COPY_CHUNK_BYTES // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, len(array), per):
        out[start : start + per].copy_(torch.from_numpy(np.array(array[start : start + per], dtype=np.uint8)))
    return out


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 images, back to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def prepare_batch(
    images: torch.Tensor, generator: torch.Generator | None, random_flip: bool, dequantize: bool
) -> torch.Tensor:
    """uint8 images to [0, 1] floats, with the reference dequantisation x*255/256 + U/256 and random h-flips."""
    x = images.float() / 255.0
    if dequantize:
        x = x * (255.0 / 256.0) + torch.rand(x.shape, generator=generator, device=x.device) / 256.0
    if random_flip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """[0, 1] float images (N, C, H, W) to uint8 (N, H, W, C), clamped: the format of samples.npz."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
