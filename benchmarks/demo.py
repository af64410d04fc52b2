"""Time the README's main job (`ncsn demo`) end to end in a fresh run folder and print its figures as JSON.

    python benchmarks/demo.py [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ncsn-demo-"))
    if workdir.exists() and any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty: the demo must start from scratch to be timed")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ncsn.cli", "demo", "--workdir", str(workdir)], check=True)
    wall = time.perf_counter() - start
    report = json.loads((workdir / "demo.json").read_text())
    print(json.dumps({
        "benchmark": "demo",
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor(), "torch": torch.__version__},
        "wall_seconds": round(wall, 1),
        "train_seconds": round(report["train_seconds"], 1),
        "sample_seconds": round(report["sample_seconds"], 1),
        "sample_confidence": round(report["sample_confidence"], 4),
        "real_confidence": round(report["real_confidence"], 4),
        "confidence_gap": round(report["real_confidence"] - report["sample_confidence"], 4),
        "class_shares": report["class_shares"],
        "max_share_deviation": round(report["max_share_deviation"], 4),
    }, indent=2))
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
