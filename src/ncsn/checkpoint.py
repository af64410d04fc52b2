"""Checkpoints: full training state for resuming, slim snapshots and safetensors exports for sampling, official
NCSN weights (safe unpickling in ``ncsn.safe_load``, Score-SDE files in ``ncsn.official_scoresde``).

Everything is read with ``torch.load(weights_only=True)``: loading never runs code. Files are written to a temp
name and renamed, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from .config import ConfigError, RunConfig, from_dict, to_dict
from .errors import CheckpointError
from .io import save_torch, write_bytes, write_json
from .official_scoresde import is_scoresde, load_scoresde
from .safe_load import safe_load
from .score_model import ScoreModel, build_score_model

FORMAT = "ncsn-checkpoint-1"
SNAPSHOT_FORMAT = "ncsn-snapshot-1"
EXPORT_FORMAT = "ncsn-export-1"
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
        raise CheckpointError(f"{path}: not an ncsn training checkpoint (format {_describe(state)})")
    return state


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"dict with keys {sorted(map(str, obj))[:5]}"
    return type(obj).__name__


def export_slim(source: str | Path, out_dir: str | Path, ema: bool | None = None, dataset: str | None = None,
                image_size: int | None = None) -> Path:
    """Write model.safetensors + config.json (the resolved run config and which weights) for sampling.

    An official checkpoint needs ``dataset`` (and ``image_size`` where ambiguous); the export then records them.
    The pair stays consistent: config.json records the SHA-256 of the weights it belongs to and is written first,
    the weights last, each atomically; a failed weights write puts the previous config.json back, and a crash in
    between leaves a pair that loading refuses (the hashes differ) rather than one it would use wrongly.
    """
    from safetensors.torch import save

    model, config, info = load_score_model(source, ema=ema, dataset=dataset, image_size=image_size)
    out = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": EXPORT_FORMAT})
    meta = {"format": EXPORT_FORMAT, "weights": info["weights"], "step": info.get("step"),
            "weights_sha256": hashlib.sha256(data).hexdigest(), "config": to_dict(config)}
    meta_path = out / "config.json"
    previous = meta_path.read_bytes() if meta_path.is_file() else None
    write_json(meta_path, meta)
    try:
        write_bytes(out / "model.safetensors", data)
    except BaseException:
        if previous is None:
            meta_path.unlink(missing_ok=True)
        else:
            write_bytes(meta_path, previous)
        raise
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_finite(state_dict: dict, source, which: str = "weights") -> None:
    """Refuse weights holding NaN or infinity (they would sample black or white images without an error), naming the
    first such tensor."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{source}: its {which} hold NaN or infinity ({bad} of {value.numel()} values of "
                                  f"{name!r}); the run diverged or the file is damaged")


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
            from .official import load_official

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


def _export_step(export: Path) -> int | None:
    """The training step an export records in its config.json (None when it records none or cannot be read)."""
    try:
        step = json.loads(export.with_name("config.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


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


def _from_training_state(state, source: Path, ema: bool | None) -> tuple[ScoreModel, RunConfig, dict]:
    if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        from .official import describe_state_dict

        raise CheckpointError(f"{source}: {describe_state_dict(state)}")
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, SNAPSHOT_FORMAT):
        raise CheckpointError(f"{source}: not an ncsn or official NCSN checkpoint (found {_describe(state)})")
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


def _to(loaded, device):
    model, config, info = loaded
    return model.to(device).eval(), config, info
