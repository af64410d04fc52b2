"""Checkpoints: full training state for resuming, slim safetensors exports for sampling, official NCSN weights.

Everything is read with ``torch.load(weights_only=True)``: loading never runs code. Files are written to a temp
name and renamed, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .config import ConfigError, RunConfig, from_dict, to_dict
from .score_model import ScoreModel, build_score_model

FORMAT = "ncsn-checkpoint-1"
EXPORT_FORMAT = "ncsn-export-1"
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or foreign. One line, naming the file."""


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def safe_load(path: str | Path, map_location="cpu"):
    """torch.load with weights_only=True, turning every failure into one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path}: refused: it holds Python objects, not only tensors (not an ncsn or official NCSN checkpoint)"
            ) from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a PyTorch file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:100]
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({first})") from None


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def checkpoint_path(workdir: str | Path, step: int) -> Path:
    return checkpoint_dir(workdir) / f"checkpoint_{step:08d}.pt"


def list_checkpoints(workdir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every full checkpoint in a run folder, oldest first (temp files ignored)."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(workdir: str | Path) -> Path | None:
    found = list_checkpoints(workdir)
    return found[-1][1] if found else None


def prune_checkpoints(workdir: str | Path, keep_last: int, snapshot_every: int) -> None:
    """Delete old checkpoints, keeping the newest ``keep_last`` and every snapshot step."""
    found = list_checkpoints(workdir)
    for step, path in found[:-keep_last] if keep_last else found:
        if step % snapshot_every:
            path.unlink(missing_ok=True)


def training_state(step: int, config: RunConfig, model, optimizer, ema=None, extra: dict | None = None) -> dict:
    """Everything a resumed run needs, made of tensors and plain containers only."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": FORMAT,
        "step": step,
        "config": to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": None if ema is None else ema.module.state_dict(),
        "ema_updates": None if ema is None else int(ema.n_averaged.item()),
        "rng": rng,
        "extra": extra or {},
    }


def load_training_state(path: str | Path, map_location="cpu") -> dict:
    """Read a full ncsn checkpoint, checking it is one."""
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ncsn training checkpoint (format {_describe(state)})")
    return state


def restore_rng(state: dict) -> None:
    rng = state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"dict with keys {sorted(map(str, obj))[:5]}"
    return type(obj).__name__


def export_slim(source: str | Path, out_dir: str | Path, ema: bool | None = None, dataset: str | None = None,
                image_size: int | None = None) -> Path:
    """Write model.safetensors + config.json (the resolved run config and which weights) for sampling.

    An official checkpoint needs ``dataset`` (and ``image_size`` where ambiguous); the export then records them.
    """
    from safetensors.torch import save_file

    model, config, info = load_score_model(source, ema=ema, dataset=dataset, image_size=image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / ".model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": EXPORT_FORMAT})
    os.replace(tmp, out / "model.safetensors")
    meta = {"format": EXPORT_FORMAT, "weights": info["weights"], "step": info.get("step"), "config": to_dict(config)}
    (out / "config.json").write_text(json.dumps(meta, indent=2))
    return out


def _model_from_state(config: RunConfig, state_dict: dict, source) -> ScoreModel:
    """Build the model the config describes and load weights strictly."""
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
        loaded = _from_training_state(state, source, ema)
    d = loaded[1].data
    if dataset is not None and dataset != d.dataset:
        raise CheckpointError(f"{source}: --dataset is for official checkpoints; this one records {d.dataset}")
    if image_size is not None and image_size != d.image_size:
        raise CheckpointError(f"{source}: --image-size is for official checkpoints; this one records {d.image_size}")
    return _to(loaded, device)


def _resolve(source: Path) -> Path:
    """A run folder stands for its export, else its latest checkpoint."""
    if not source.is_dir():
        return source
    if (source / "model.safetensors").is_file():
        return source / "model.safetensors"
    latest = latest_checkpoint(source)
    if latest is None:
        raise CheckpointError(f"{source}: no checkpoints/checkpoint_*.pt and no model.safetensors here")
    return latest


def _from_training_state(state, source: Path, ema: bool | None) -> tuple[ScoreModel, RunConfig, dict]:
    if isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values()):
        from .official import describe_state_dict

        raise CheckpointError(f"{source}: {describe_state_dict(state)}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not an ncsn or official NCSN checkpoint (found {_describe(state)})")
    try:
        config = from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{source}: its stored config is invalid ({err})") from None
    if ema and state.get("ema") is None:
        raise CheckpointError(f"{source}: has no EMA weights (trained with training.ema=false); use --no-ema")
    use_ema = state.get("ema") is not None if ema is None else ema
    model = _model_from_state(config, state["ema"] if use_ema else state["model"], source)
    return model, config, {"weights": "ema" if use_ema else "raw", "step": state["step"]}


def _load_export(path: Path) -> tuple[ScoreModel, RunConfig, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_name("config.json")
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no config.json beside it; an ncsn export is model.safetensors + config.json")
    try:
        meta = json.loads(meta_path.read_text())
        config = from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise CheckpointError(f"{meta_path}: not an ncsn export config ({err})") from None
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from None
    model = _model_from_state(config, weights, path)
    return model, config, {"weights": meta.get("weights", "raw"), "step": meta.get("step")}


def _to(loaded, device):
    model, config, info = loaded
    return model.to(device).eval(), config, info
