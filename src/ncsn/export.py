"""Slim exports: a model's weights as model.safetensors + config.json, for sampling and sharing (``ncsn export``).

Loading one back is ``ncsn.model_loading.load_score_model``, like any other weights file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .config import to_dict
from .io import write_bytes, write_json
from .model_loading import load_score_model

EXPORT_FORMAT = "ncsn-export-1"


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
