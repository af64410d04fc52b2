"""Shared pieces of the benchmark scripts: command-line options, machine description, timing and peak memory."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch

from ncsn.config import load_config
from ncsn.runtime import PRECISIONS, RuntimeOptions


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="fashion_mnist", help="named config (digits, fashion_mnist, mnist, cifar10...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. model.ngf=32)")
    p.add_argument("--batch-size", type=int, default=None, help="batch [default: the config's training batch]")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first [default: 1, 3 when compiled]")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16 autocasts the network [default: auto, the library's choice (ncsn.runtime.resolve)]")
    p.add_argument("--channels-last", action="store_const", const=True, default=None,
                   help="channels_last memory format [default: the library's choice, ncsn.runtime.wants_channels_last]")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    p.add_argument("--device", default=None, help="cpu, cuda ... [default: cuda if available]")
    return p


def setup(args):
    """(config, runtime options, device, batch size, warm-up count) from the parsed options."""
    config = load_config(args.config, args.overrides)
    runtime = RuntimeOptions(compile=args.compile, precision=args.precision, channels_last=args.channels_last)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # cuDNN autotuning is the library's call (ncsn.runtime.autotunes), as for users
        torch.cuda.reset_peak_memory_stats(device)
    batch = args.batch_size or config.training.batch_size
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    return config, runtime, device, batch, warmup


def machine(device: torch.device) -> dict:
    """What a reader needs to compare a figure with their own machine: the CPU model and its bf16 flags, threads,
    torch, and the GPU where one ran."""
    from ncsn.autotune import NATIVE_BF16_FLAGS, cpu_info

    model, flags = cpu_info()
    info = {"cpu_model": model, "native_bf16_flags": sorted(flags & NATIVE_BF16_FLAGS),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer sees it finish (benchmarks only; the library never waits)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    """(seconds of the warm-up calls, seconds of each timed call)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return warm, times


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, the peak allocated device memory (MiB)."""
    out = {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
