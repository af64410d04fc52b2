"""What a resumed run continues with: the latest checkpoint's config (the source of truth), the changes a resume may
make (recorded in resumes.jsonl) and the ones it may not (data, model, seed, batch size), marking a run started and
repairing its metrics.jsonl."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from . import checkpoint as ckpt
from . import runfolder
from .config import ConfigError, RunConfig, changes, from_dict, load_config
from .io import write_text
from .runfolder import RunFolderError

FIXED_ON_RESUME = ("training.seed", "training.batch_size")
METRICS_FILE = "metrics.jsonl"


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
    for key in ("memory_budget_gb", "max_unpacked_gb", "max_unpack_ratio"):  # where and how, not what the data are
        setattr(saved.data, key, getattr(config.data, key))
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
    """Mark the run as started (main process, setup done). A fresh run writes config.yaml. A resume leaves config.yaml
    at the checkpoint's config (restoring it if missing or edited): the new values reach config.yaml with the first
    checkpoint that holds them, so a resume that fails before one changes nothing. Its metrics and its row in
    resumes.jsonl come later, from ``_record_resume``."""
    runfolder.remove_orphan_temp_files(workdir)
    if state is None:
        runfolder.write_config(workdir, config)
        return
    saved = from_dict(state["config"])
    if _config_on_disk(workdir) != saved:
        runfolder.write_config(workdir, saved)


def _record_resume(workdir: Path, state: dict | None, changed: dict) -> None:
    """Once every step of a resume's setup has passed: cut metrics.jsonl back to its step (repairing a torn last
    line), then append the resume and its changes to resumes.jsonl. A resume that fails while setting up leaves
    both files as they were."""
    if state is not None:
        truncate_metrics(workdir / METRICS_FILE, state["step"])
        runfolder.record(workdir, "resume", state["step"], changes=changed)


class TornMetricsWarning(UserWarning):
    """metrics.jsonl had lines that do not parse (a write cut short by a full disk or a kill); they were dropped."""


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``step``, rewritten atomically. Lines that do not parse as a row (a torn
    last line) are dropped and counted in one warning line instead of stopping the resume."""
    if not path.is_file():
        return
    kept, torn = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, TypeError, KeyError, IndexError):
            row_step = None
        if not isinstance(row_step, int) or isinstance(row_step, bool):
            torn += 1
        elif row_step <= step:
            kept.append(line)
    if torn:
        warnings.warn(f"{path}: dropped {torn} unreadable line(s), a write cut short (full disk or kill); kept "
                      f"{len(kept)} row(s) up to step {step}", TornMetricsWarning, stacklevel=2)
    write_text(path, "".join(line + "\n" for line in kept))
