"""Loading any weights file as a ready-to-sample score model: a run folder, our full checkpoints and slim snapshots,
slim exports, the official NCSN and NCSNv2 files (``ncsn.official``) and Score-SDE's (``ncsn.official_scoresde``).

Everything is read with ``torch.load(weights_only=True)`` (``ncsn.safe_load``) or safetensors: loading never runs
code, and weights load strictly and only when finite.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from .checkpoint import FORMAT, SNAPSHOT_FORMAT, describe, list_checkpoints, list_snapshots
from .config import ConfigError, RunConfig, from_dict
from .errors import CheckpointError
from .official import describe_state_dict, load_official
from .official_scoresde import is_scoresde, load_scoresde
from .safe_load import check_finite, safe_load
from .score_model import ScoreModel, build_score_model


def load_score_model(source: str | Path, ema: bool | None = None, device="cpu", dataset: str | None = None,
                     image_size: int | None = None) -> tuple[ScoreModel, RunConfig, dict]:
    """A ready-to-sample score model (eval mode) from a run folder, a checkpoint, an export or official weights.

    ``ema=None`` takes the EMA weights when the checkpoint has them; True insists on them; False takes the raw ones.
    ``dataset`` and ``image_size`` are for official checkpoints, which do not record them (elsewhere they must agree
    with the stored config). Returns (model, config, info) where info says which weights and which step were loaded.
    """
    source = _resolve(Path(source))
    if source.suffix == ".safetensors":
        loaded = _load_export(source)
    else:
        state = safe_load(source)
        if isinstance(state, (list, tuple)):  # the official layouts: the data section comes from the caller
            return _to(load_official(state, source, ema, dataset, image_size), device)
        if is_scoresde(state):  # Score-SDE's {'model', 'ema', 'optimizer', 'step'}
            return _to(load_scoresde(state, source, ema, dataset, image_size), device)
        loaded = _from_training_state(state, source, ema)
    d = loaded[1].data
    if dataset is not None and dataset != d.dataset:
        raise CheckpointError(f"{source}: --dataset is for official checkpoints; this one records {d.dataset}")
    if image_size is not None and image_size != d.image_size:
        raise CheckpointError(f"{source}: --image-size is for official checkpoints; this one records {d.image_size}")
    return _to(loaded, device)


def resolve_run_folder(source: Path) -> tuple[Path, str | None]:
    """The weights a run folder stands for: the newer of its export (``ncsn export --out RUN``) and its latest
    checkpoint (else snapshot), with a one-line reason when it holds both.

    Newer means a higher training step, or a later modification time where the export records no step; a tie goes
    to the export. So training on after an export is never shadowed by the stale model.safetensors.
    """
    export = source / "model.safetensors"
    found = list_checkpoints(source) or list_snapshots(source)
    if not found:
        if export.is_file():
            return export, None
        raise CheckpointError(f"{source}: no checkpoints/checkpoint_*.pt and no model.safetensors here")
    step, latest = found[-1]
    if not export.is_file():
        return latest, None
    exported = _export_step(export)
    ckpt = latest.relative_to(source)
    if exported is not None:
        newer = step > exported
        said = (f"{ckpt} (step {step}) is newer than model.safetensors (exported at step {exported})" if newer else
                f"model.safetensors (exported at step {exported}) is as new as {ckpt} (step {step}) or newer")
    else:
        newer = latest.stat().st_mtime > export.stat().st_mtime
        said = (f"{ckpt} was written after model.safetensors, which records no step" if newer else
                f"model.safetensors, which records no step, was written after {ckpt}")
    return (latest if newer else export), f"{source}: using {ckpt if newer else 'model.safetensors'}: {said}"


def _resolve(source: Path) -> Path:
    """A file stands for itself; a run folder for its newest weights (``resolve_run_folder``), saying which."""
    if not source.is_dir():
        return source
    path, reason = resolve_run_folder(source)
    if reason:
        logging.getLogger(__name__).warning(reason)  # one line on stderr unless the caller configures logging
    return path


def _export_step(export: Path) -> int | None:
    """The training step an export records in its config.json (None when it records none or cannot be read)."""
    try:
        step = json.loads(export.with_name("config.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def _from_training_state(state, source: Path, ema: bool | None) -> tuple[ScoreModel, RunConfig, dict]:
    if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{source}: {describe_state_dict(state)}")
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, SNAPSHOT_FORMAT):
        raise CheckpointError(f"{source}: not an ncsn or official NCSN checkpoint (found {describe(state)})")
    try:
        config = from_dict(state["config"], data_root_needed=False)
    except ConfigError as err:
        raise CheckpointError(f"{source}: its stored config is invalid ({err})") from None
    if state["format"] == SNAPSHOT_FORMAT:
        return _from_snapshot(state, config, ema, source)
    if ema and state.get("ema") is None:
        raise CheckpointError(f"{source}: has no EMA weights (trained with training.ema=false); use --no-ema")
    use_ema = state.get("ema") is not None if ema is None else ema
    model = _model_from_state(config, state["ema"] if use_ema else state["model"], source)
    return model, config, {"weights": "ema" if use_ema else "raw", "step": state["step"]}


def _from_snapshot(state: dict, config: RunConfig, ema: bool | None, source) -> tuple[ScoreModel, RunConfig, dict]:
    """A slim snapshot holds one set of weights: asking for the other set is an error, not a silent swap."""
    kind = state["weights"]
    if ema is not None and ema != (kind == "ema"):
        wanted, hint = ("EMA", "--no-ema") if ema else ("raw", "--ema")
        raise CheckpointError(f"{source}: a slim snapshot holding only the {kind} weights, not the {wanted} ones; "
                              f"use {hint} or a full checkpoint")
    return _model_from_state(config, state["model"], source), config, {"weights": kind, "step": state["step"]}


def _load_export(path: Path) -> tuple[ScoreModel, RunConfig, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_name("config.json")
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no config.json beside it; an ncsn export is model.safetensors + config.json")
    try:
        meta = json.loads(meta_path.read_text())
        config = from_dict(meta["config"], data_root_needed=False)
    except (ValueError, KeyError, TypeError) as err:  # ValueError: not UTF-8, not JSON, or an invalid config
        first = (str(err).splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"{meta_path}: not an ncsn export config ({first})") from None
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    recorded = meta.get("weights_sha256")  # exports of earlier versions have none
    if recorded is not None and _sha256(path) != recorded:
        raise CheckpointError(f"{path}: not the weights {meta_path.name} beside it was written for (an export cut "
                              "short between its two files); export again")
    model = _model_from_state(config, weights, path)
    return model, config, {"weights": meta.get("weights", "raw"), "step": meta.get("step")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_from_state(config: RunConfig, state_dict: dict, source) -> ScoreModel:
    """Build the model the config describes and load weights strictly (finite ones only)."""
    check_finite(state_dict, source)
    model = build_score_model(config.model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:])[:200]
        raise CheckpointError(f"{source}: weights do not fit the model its config describes ({detail})") from None
    return model


def _to(loaded, device):
    model, config, info = loaded
    return model.to(device).eval(), config, info
