"""A run folder's checkpoints: the full training state for resuming, slim snapshots for sampling, where they live,
which is the latest, and pruning the old ones.

Everything is read with ``torch.load(weights_only=True)`` (``ncsn.safe_load``): loading never runs code. Files are
written to a temp name and renamed, so a crash leaves either the old file or the new one, never half of one. Turning
any weights file into a model is ``ncsn.model_loading``; slim safetensors exports are ``ncsn.export``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import RunConfig, to_dict
from .errors import CheckpointError
from .io import save_torch
from .safe_load import safe_load

FORMAT = "ncsn-checkpoint-1"
SNAPSHOT_FORMAT = "ncsn-snapshot-1"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
SNAPSHOT_RE = re.compile(r"^snapshot_(\d+)\.pt$")


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save through ``ncsn.io`` (temp file, fsync, rename, folder fsync; a full disk is a StorageError naming
    ``path``, and the temp file is removed either way)."""
    return save_torch(obj, path)


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def checkpoint_path(workdir: str | Path, step: int) -> Path:
    return checkpoint_dir(workdir) / f"checkpoint_{step:08d}.pt"


def _listed(workdir: str | Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)))


def list_checkpoints(workdir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every full checkpoint in a run folder, oldest first (temp files ignored)."""
    return _listed(workdir, CHECKPOINT_RE)


def latest_checkpoint(workdir: str | Path) -> Path | None:
    found = list_checkpoints(workdir)
    return found[-1][1] if found else None


def snapshot_path(workdir: str | Path, step: int) -> Path:
    return checkpoint_dir(workdir) / f"snapshot_{step:08d}.pt"


def list_snapshots(workdir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every slim snapshot (sampling weights + config) in a run folder, oldest first."""
    return _listed(workdir, SNAPSHOT_RE)


def sweep_checkpoints(workdir: str | Path) -> list[tuple[int, Path]]:
    """One file per saved step for model selection: the slim snapshot where there is one, else the full checkpoint."""
    found = dict(list_checkpoints(workdir))
    found.update(list_snapshots(workdir))
    return sorted(found.items())


def snapshot_state(step: int, config: RunConfig, model, ema=None) -> dict:
    """What sampling needs and nothing else: the weights the sampler uses (EMA when the run keeps one) and the config.

    A quarter of a full checkpoint with Adam state and EMA: no optimizer moments and one set of weights.
    """
    weights = model if ema is None else ema.module
    return {"format": SNAPSHOT_FORMAT, "step": step, "config": to_dict(config),
            "weights": "raw" if ema is None else "ema", "model": weights.state_dict()}


def _slim(state: dict) -> dict:
    """The slim snapshot of a full training state."""
    use_ema = state.get("ema") is not None
    return {"format": SNAPSHOT_FORMAT, "step": state["step"], "config": state["config"],
            "weights": "ema" if use_ema else "raw", "model": state["ema"] if use_ema else state["model"]}


def prune_checkpoints(workdir: str | Path, keep_last: int, snapshot_every: int) -> None:
    """Keep the newest ``keep_last`` full checkpoints. An older one is deleted, after a slim snapshot is made of it when
    its step is a snapshot step that has none yet (run folders of earlier versions kept such steps in full)."""
    found = list_checkpoints(workdir)
    for step, path in found[:-keep_last] if keep_last else found:
        if step % snapshot_every == 0 and not snapshot_path(workdir, step).is_file():
            atomic_save(_slim(load_training_state(path)), snapshot_path(workdir, step))
        path.unlink(missing_ok=True)


def training_state(step: int, config: RunConfig, model, optimizer, ema=None, extra: dict | None = None) -> dict:
    """Everything a resumed run needs, made of tensors and plain containers only.

    No random-number-generator state: every draw of the training loop comes from generators seeded by (seed, step).
    """
    return {
        "format": FORMAT,
        "step": step,
        "config": to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": None if ema is None else ema.module.state_dict(),
        "ema_updates": None if ema is None else int(ema.n_averaged.item()),
        "extra": extra or {},
    }


def load_training_state(path: str | Path, map_location="cpu") -> dict:
    """Read a full ncsn checkpoint, checking it is one."""
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ncsn training checkpoint (format {describe(state)})")
    return state


def describe(obj) -> str:
    """What a loaded object is, in a few words (for errors about files that are not checkpoints)."""
    if isinstance(obj, dict):
        return f"dict with keys {sorted(map(str, obj))[:5]}"
    return type(obj).__name__
