"""Rank/world helpers: one code path for one process and for `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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


def from_main(value):
    """The main process's ``value`` on every rank (``value`` itself in one process); it must pickle."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(count: int, rank: int, world: int) -> slice:
    """Contiguous slice of ``count`` items for ``rank``; count must divide evenly."""
    if count % world:
        raise ValueError(f"batch of {count} does not split evenly over {world} processes")
    per = count // world
    return slice(rank * per, (rank + 1) * per)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
