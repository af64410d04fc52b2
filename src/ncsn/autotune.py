"""Is bf16 faster than float32 here? The CPU's capabilities first, then a short timed trial cached per machine.

bf16 pays on a CPU only where it has native bf16 dot products (AVX-512 BF16 or AMX on x86, the BF16 extension on
Arm); elsewhere oneDNN emulates them and bf16 was measured ~10x slower, so it is never picked there. Where the CPU has
them, whether bf16 wins still depends on the shape (an 8x8 network ran slower in bf16 than in float32), so the
first use of a (network, shape) times both precisions and writes the answer to ``autotune.json`` under
``$NCSN_CACHE`` (default ``~/.cache/ncsn``). The file is checked on every read: one written by another machine,
CPU or torch version, or one that does not parse, is rebuilt; an entry whose answer does not follow from its own
timings is measured again. ``$NCSN_CPUINFO`` names a file read instead of /proc/cpuinfo: it pins the CPU these
rules see (the test suite runs every branch on any machine with it; a user can rule bf16 out with it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import write_text

CACHE_VERSION = 1
CACHE_ENV = "NCSN_CACHE"
CPUINFO_ENV = "NCSN_CPUINFO"
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags in /proc/cpuinfo
BF16_MARGIN = 0.9  # bf16 must be at least 10 % faster: it is the lossier path, and a shared machine is noisy
TRIAL_ITERATIONS = 2  # timed iterations per precision, after one warm-up each

perf_counter = time.perf_counter  # the trial's clock (tests replace it)


def cpu_info(path: str | None = None) -> tuple[str, frozenset[str]]:
    """(CPU model name, feature flags) from ``path``, else ``$NCSN_CPUINFO``, else /proc/cpuinfo (x86 "flags", Arm
    "Features"); no flags where it cannot be read (then bf16 is never picked)."""
    return _parse_cpuinfo(path or os.environ.get(CPUINFO_ENV) or "/proc/cpuinfo")


@functools.lru_cache(maxsize=8)
def _parse_cpuinfo(path: str) -> tuple[str, frozenset[str]]:
    try:
        text = Path(path).read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "CPU part") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model or platform.machine(), flags


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX-512 BF16 or AMX-BF16 on x86, the BF16 extension ("bf16" in Features) on Arm."""
    flags = cpu_info()[1] if flags is None else flags
    return bool(flags & NATIVE_BF16_FLAGS) or (platform.machine() in ("aarch64", "arm64") and "bf16" in flags)


def machine_fingerprint() -> dict:
    """What a cached timing is only valid for: CPU model, its flags (hashed) and the torch version."""
    model, flags = cpu_info()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    return {"cpu": model, "flags_sha256": digest, "torch": torch.__version__}


def cache_folder() -> Path:
    """The per-user cache of machine-specific answers: ``$NCSN_CACHE``, default ~/.cache/ncsn."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ncsn")


def cache_path() -> Path:
    return cache_folder() / "autotune.json"


def pick(seconds: dict) -> str:
    """bf16 when its iteration took at most BF16_MARGIN of the float32 one."""
    return "bf16" if seconds["bf16"] <= BF16_MARGIN * seconds["fp32"] else "fp32"


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), dict):
        return False
    seconds = entry["seconds"]
    if set(seconds) != {"fp32", "bf16"}:
        return False
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in seconds.values()):
        return False
    return entry.get("precision") == pick(seconds)


def read_cache(path: Path, machine: dict) -> tuple[dict, str | None]:
    """(valid entries, why the file is being rebuilt or None). A missing file is simply empty."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {}, f"unreadable ({type(err).__name__})"
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}, "not an autotune cache of this version"
    if data.get("machine") != machine:
        return {}, "stale (written on another machine or torch version)"
    entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
    dropped = len(data["entries"]) - len(entries)
    return entries, (f"{dropped} inconsistent entr{'y' if dropped == 1 else 'ies'} dropped" if dropped else None)


def write_cache(path: Path, machine: dict, entries: dict) -> None:
    text = json.dumps({"version": CACHE_VERSION, "machine": machine, "entries": entries}, indent=2, sort_keys=True)
    write_text(path, text)


def timed_trial(run, iterations: int = TRIAL_ITERATIONS) -> dict:
    """Seconds per iteration of ``run(precision)`` for fp32 and bf16: one warm-up each, then the two alternated
    (so a change in the machine's load hits both), the fastest iteration of each."""
    for precision in ("fp32", "bf16"):
        run(precision)
    times = {"fp32": [], "bf16": []}
    for _ in range(iterations):
        for precision in ("fp32", "bf16"):
            start = perf_counter()
            run(precision)
            times[precision].append(perf_counter() - start)
    return {precision: min(values) for precision, values in times.items()}


@dataclass(frozen=True)
class Choice:
    """The precision picked and the one-line reason printed with it."""

    precision: str
    reason: str


_decided: dict[str, Choice] = {}  # this process's answers: a trial runs at most once per key and process


def choose_cpu_precision(key: str, make_run, flags: frozenset[str] | None = None) -> Choice:
    """fp32 without native bf16; otherwise the cached answer for ``key`` or a trial of ``make_run()``, which returns
    ``run(precision)`` doing one iteration (it is built only when a trial is needed)."""
    if not cpu_has_native_bf16(flags):
        return Choice("fp32", "this CPU has no native bf16 dot products (no avx512_bf16 or amx_bf16 flag)")
    if key in _decided:
        return _decided[key]
    machine, path = machine_fingerprint(), cache_path()
    entries, problem = read_cache(path, machine)
    entry = entries.get(key)
    if entry is not None:
        choice = Choice(entry["precision"], f"cached trial ({key}): {_timings(entry['seconds'])}; {path}")
    else:
        seconds = timed_trial(make_run())
        entries[key] = {"precision": pick(seconds), "seconds": seconds, "iterations": TRIAL_ITERATIONS,
                        "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        note = f"; the cache was {problem} and is rebuilt" if problem else ""
        try:
            write_cache(path, machine, entries)
            where = f"cached in {path}{note}"
        except OSError as err:
            where = f"not cached ({path}: {err.strerror or err})"
        choice = Choice(pick(seconds), f"timed trial ({key}): {_timings(seconds)}; {where}")
    _decided[key] = choice
    return choice


def _timings(seconds: dict) -> str:
    return f"bf16 {seconds['bf16']:.3g} s vs fp32 {seconds['fp32']:.3g} s per iteration"
