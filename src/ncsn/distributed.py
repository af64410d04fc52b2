"""Rank/world helpers: one code path for one process and for `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InputError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_device(device: str | None) -> str | None:
    """``device`` if this machine can run on it (None stays None: the default); else InputError in one line."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: not a device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cpu":
        return device
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    if backend is None or not hasattr(backend, "is_available"):
        raise InputError(f"--device {device!r}: ncsn runs on cpu, cuda, mps or xpu devices, not {dev.type}")
    if not backend.is_available():
        raise InputError(f"--device {device!r}: no {dev.type} device is available on this machine")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise InputError(f"--device {device!r}: this machine has {count} {dev.type} device(s), numbered from 0")
    return device


def setup(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_true(flag: torch.Tensor) -> bool:
    """True when the flag is set on any rank (a no-op reduction in one process)."""
    flag = flag.to(torch.int32).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def shard(count: int, rank: int, world: int) -> slice:
    """Contiguous slice of ``count`` items for ``rank``; count must divide evenly."""
    if count % world:
        raise InputError(f"batch of {count} does not split evenly over {world} processes")
    per = count // world
    return slice(rank * per, (rank + 1) * per)


def gather_to_main(obj):
    """The list of every rank's ``obj`` (picklable) on rank 0, None on the others; [obj] in one process. Goes over the
    process group, so ranks need no shared filesystem."""
    if not dist.is_initialized():
        return [obj]
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (over the process group); ``obj`` itself in one process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
