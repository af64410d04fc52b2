"""Rank/world helpers: one code path for one process and for `torchrun --nproc_per_node=N` (gloo on CPU, NCCL on GPU).

Timeouts. The training collectives (DDP's gradient all-reduce, the loss and NaN checks) use torch's default timeout
(NCCL: 10 minutes, gloo: 30). Work that one rank does while the others wait (the setup on rank 0, its held-out loss,
checkpoints and sample grids) is waited for on a separate CPU (gloo) group whose timeout is ``NCSN_SIDE_WORK_TIMEOUT_S``
seconds (default 7200, two hours), so a long sample grid never trips the NCCL watchdog of the training collectives.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import InputError, NcsnError, storage_message

SIDE_WORK_TIMEOUT_ENV = "NCSN_SIDE_WORK_TIMEOUT_S"
SIDE_WORK_TIMEOUT_S = 7200.0
_side_group = None  # the gloo group with the long timeout, made by ``setup`` on every rank


class DistributedError(NcsnError, RuntimeError):
    """The ranks of a torchrun job disagree (a setup failure on one of them) or stopped waiting for each other."""


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


def side_work_timeout() -> datetime.timedelta:
    """How long a rank waits for work another rank does alone (``NCSN_SIDE_WORK_TIMEOUT_S``, default two hours)."""
    raw = os.environ.get(SIDE_WORK_TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else SIDE_WORK_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"{SIDE_WORK_TIMEOUT_ENV}={raw!r}: need a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def setup(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device.

    Under torchrun an index-less ``cuda`` becomes ``cuda:LOCAL_RANK``; an explicit ``cuda:N`` is refused, as it would
    put every rank of the node on the same GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world > 1 and dev.type != "cpu" and dev.index is not None:
        raise InputError(f"--device {device}: under torchrun every rank would use this one device; pass "
                         f"--device {dev.type} and rank r takes {dev.type}:LOCAL_RANK (here {dev.type}:{local})")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        timeout = side_work_timeout()
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        global _side_group
        _side_group = dist.new_group(backend="gloo", timeout=timeout)
    return DistInfo(rank, world, dev)


def agree(error: BaseException | None, payload=None):
    """Every rank reports whether its step failed, and all of them fail alike; else rank 0's ``payload`` everywhere.

    A rank that fails alone would otherwise leave the others blocked in their next collective until it times out.
    A user's error (what the command line prints in one line: an NcsnError, a missing dataset, a full disk) becomes
    the same one-line DistributedError on every rank, naming the rank; a bug keeps its traceback on its own rank
    while the others report it in one line. In one process ``error`` is raised as it is.
    Collective: every rank must call it at the same point (it waits up to the side-work timeout).
    """
    if not dist.is_initialized():
        if error is not None:
            raise error
        return payload
    line = None if error is None else _one_line(error)
    text = (str(error).splitlines() or [""])[0] if error is not None else ""
    report = None if error is None else (type(error).__name__, line if line is not None else text, line is not None)
    reports = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(reports, (report, payload if dist.get_rank() == 0 else None), group=_side_group)
    except RuntimeError as err:
        raise DistributedError(f"rank {dist.get_rank()} lost the other ranks while they set up "
                               f"({str(err).splitlines()[0]})") from err
    verdict = agreed_line([found for found, _ in reports])
    if verdict is None:
        return reports[0][1]
    if error is not None and line is None:
        raise error
    raise DistributedError(verdict) from None


def agreed_line(reports: list) -> str | None:
    """The line every rank reports, from each rank's (error type, message, is a user's error) or None (no error)."""
    failed = [(rank, found) for rank, found in enumerate(reports) if found is not None]
    if not failed:
        return None
    rank, (name, message, ours) = failed[0]
    same = len(failed) == len(reports) and all(found[:2] == (name, message) for _, found in failed)
    where = "every rank" if same else f"rank {rank}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
    return f"{where}: {message}" if ours else f"{where} failed with a bug ({name}: {message}); see its traceback"


def _one_line(error: BaseException) -> str | None:
    """The one line the command line prints for a user's error (None for a bug, which keeps its traceback)."""
    from .data import DatasetNotFoundError  # imported here: the data package is heavy, rank helpers are not

    if isinstance(error, NcsnError | DatasetNotFoundError):
        return str(error)
    return storage_message(error) if isinstance(error, OSError) else None


def wait_for_main(what: str = "its side work") -> None:
    """All ranks meet here after rank 0 did work alone (held-out loss, checkpoints, grids), on the gloo group with
    the side-work timeout, instead of waiting inside the next training collective (whose timeout is short on NCCL)."""
    if not dist.is_initialized():
        return
    try:
        dist.barrier(group=_side_group)
    except RuntimeError as err:
        raise DistributedError(
            f"rank {dist.get_rank()} stopped waiting for rank 0's {what} ({str(err).splitlines()[0]}); if rank 0 "
            f"is alive but slow, raise {SIDE_WORK_TIMEOUT_ENV} (now {side_work_timeout().total_seconds():g} s)"
        ) from err


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a scalar tensor (``value`` itself in one process)."""
    if not dist.is_initialized():
        return value
    total = value.detach().reshape(1).clone()
    dist.all_reduce(total)
    return total[0] / dist.get_world_size()


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
    global _side_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _side_group = None
