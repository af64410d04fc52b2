"""metrics.jsonl, the run's training log: one JSON line per logged step, written by the main process only, optionally
mirrored to TensorBoard; on resume it is cut back to the resumed step first."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import storage_errors
from .io import write_text
from .resume import truncate_metrics


class MetricsLog:
    """metrics.jsonl on the main process (optionally mirrored to TensorBoard); truncated to the resumed step."""

    def __init__(self, workdir: Path, enabled: bool, resume_step: int, tensorboard: bool):
        self.path, self.enabled, self.writer = workdir / "metrics.jsonl", enabled, None
        if not enabled:
            return
        if resume_step:
            truncate_metrics(self.path, resume_step)  # atomic; a torn last line is dropped with a warning
        else:
            write_text(self.path, "")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(workdir / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with storage_errors(self.path), self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, row["step"])
                elif isinstance(value, list):
                    for i, v in enumerate(value):
                        self.writer.add_scalar(f"{key}/{i}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
