"""Model selection as in the paper: FID of a small sample set for every checkpoint, the lowest wins."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..errors import InputError
from ..io import save_figure, write_json, write_text

FIELDS = ("step", "fid", "metric", "n", "seconds", "checkpoint")


def pick_best(rows: list[dict], key: str = "fid") -> dict:
    """The row with the lowest finite ``key``; a tie goes to the earlier step."""
    finite = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not finite:
        raise InputError(f"sweep: no checkpoint gave a finite {key} ({len(rows)} evaluated)")
    return min(finite, key=lambda r: (r[key], r["step"]))


def write_sweep(folder: str | Path, rows: list[dict], best: dict) -> dict[str, Path]:
    """sweep.csv, sweep.json (rows and the pick) and sweep.png (FID against step, the best marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "sweep.csv", "json": folder / "sweep.json", "png": folder / "sweep.png"}
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths["csv"], table.getvalue())
    write_json(paths["json"], {"best": best, "rows": rows})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["fid"] for r in rows], "o-")
    ax.plot([best["step"]], [best["fid"]], "r*", markersize=14, label=f"best: step {best['step']}")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{best.get('metric', 'fid')} ({best.get('n', '?')} samples)")
    ax.legend()
    fig.tight_layout()
    save_figure(paths["png"], fig, dpi=100)
    plt.close(fig)
    return paths
