"""What a resumed run continues with: the latest checkpoint's config (the source of truth), the changes a resume may
make (recorded in resumes.jsonl) and the ones it may not (data, model, seed, batch size), and marking a run started."""

from __future__ import annotations

import os
from pathlib import Path

from . import checkpoint as ckpt
from . import runfolder
from .config import ConfigError, RunConfig, changes, from_dict, load_config
from .runfolder import RunFolderError

FIXED_ON_RESUME = ("training.seed", "training.batch_size")


def _resolve_config(config: RunConfig, workdir: Path, resume: bool) -> tuple[dict | None, dict]:
    """(the latest checkpoint's state or None, {key: [saved, new]} of what the resume changes).

    On resume the data and model sections stay as saved, and so do the seed and the batch size (they fix every
    random draw); other training and sampling keys may change (e.g. n_iters, lr).
    """
    existing = ckpt.list_checkpoints(workdir)
    if not resume:
        if existing:
            raise RunFolderError(
                f"{workdir} already has checkpoints (latest step {existing[-1][0]}); pass --resume to continue it "
                "or choose another --workdir"
            )
        return None, {}
    if not existing:
        shared = " (every rank reads it: several nodes need a shared filesystem)" if _ranks() > 1 else ""
        raise RunFolderError(f"--resume: no checkpoint in {workdir / 'checkpoints'} to resume from{shared}")
    state = ckpt.load_training_state(existing[-1][1])
    saved = _stored_config(state, existing[-1][1])
    saved.data.memory_budget_gb = config.data.memory_budget_gb  # where batches are read from, not what they are
    changed = changes(saved, config)
    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items() if k.split(".")[0] in ("data", "model"))
    if shown:
        raise RunFolderError(f"--resume: {shown} differ from the run's saved config; data and model must stay as saved")
    fixed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in FIXED_ON_RESUME if k in changed)
    if fixed:
        raise RunFolderError(f"--resume: changing {fixed} would break the bit-identity of the resumed run with an "
                             "uninterrupted one (they fix every random draw); start a new run instead")
    return state, changed


def _ranks() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _stored_config(state: dict, path, overrides=()) -> RunConfig:
    try:
        return from_dict(state["config"], overrides)
    except ConfigError as err:
        if overrides:
            raise
        raise RunFolderError(f"{path}: its stored config is invalid ({err})") from None


def _config_on_disk(workdir: Path) -> RunConfig | None:
    path = workdir / "config.yaml"
    try:
        return load_config(str(path)) if path.is_file() else None
    except ConfigError:
        return None


def resume_config(workdir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, bool]:
    """The config a ``--resume`` without ``--config`` continues with: the latest checkpoint's (the source of truth),
    then ``overrides``; and whether config.yaml disagreed with it (missing, edited, or left by a failed resume)."""
    latest = ckpt.latest_checkpoint(workdir)
    if latest is None:
        shared = " (every rank reads it: several nodes need a shared filesystem)" if _ranks() > 1 else ""
        raise RunFolderError(f"--resume: no checkpoint in {Path(workdir) / 'checkpoints'} to resume from{shared}")
    state = ckpt.load_training_state(latest)
    config = _stored_config(state, latest, overrides)
    return config, _config_on_disk(Path(workdir)) != _stored_config(state, latest)


def _start(workdir: Path, config: RunConfig, state: dict | None, changed: dict) -> None:
    """Mark the run as started (main process, setup done). A fresh run writes config.yaml. A resume appends its changes
    to resumes.jsonl and leaves config.yaml at the checkpoint's config (restoring it if missing or edited): the new
    values reach config.yaml with the first checkpoint that holds them, so a resume that fails before one changes
    nothing."""
    runfolder.remove_orphan_temp_files(workdir)
    if state is None:
        runfolder.write_config(workdir, config)
        return
    saved = from_dict(state["config"])
    if _config_on_disk(workdir) != saved:
        runfolder.write_config(workdir, saved)
    runfolder.record(workdir, "resume", state["step"], changes=changed)
