"""Time preparing a folder of images, re-opening its cache, and training steps from memory vs the memory-mapped cache.

    python benchmarks/data_path.py --images 10000 --size 64 --set model.ngf=16 --repeats 5

Generates N JPEG images (size x size, smooth random colour fields) in a temporary folder. Preparation runs in a
child process, which reports its wall time and its peak RSS against the RSS it had just before preparing (torch
and Pillow imported). A second child re-opens the finished cache (what a second run pays). Then training steps of
the `folder` config (plus --set overrides) are timed with the train split as a device tensor and as MappedImages
over the cache, alternating the two; a batch alone (index + dequantise + flip: batch_ms) and the indexing alone
(index_ms) are timed too. Prints JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, parser, spread, sync, timed

from ncsn.config import load_config
from ncsn.data import prepare_batch, training_images
from ncsn.losses import objective_for
from ncsn.score_model import build_score_model
from ncsn.training import EpochBatches, _seeded, make_optimizer, train_step

CHILD = """
import json, resource, sys, time
from ncsn.config import load_config
from ncsn.data import read_array
config = load_config("folder", [f"data.root={sys.argv[1]}", f"data.image_size={sys.argv[2]}"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
train, _ = read_array(config.data, "train")
test, _ = read_array(config.data, "test")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": round(seconds, 2), "train": len(train), "test": len(test), "cache_mib": round(
    (train.nbytes + test.nbytes) / 2**20, 1), "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
    "peak_rss_growth_mib": round(peak - before, 1)}))
"""


def make_images(folder: Path, n: int, size: int) -> None:
    """Smooth random colour fields (bilinear upsampling of 4x4 noise) as JPEG quality 90, like photos to decode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = folder / f"{i // 1000:02d}"  # ten subfolders: the listing is recursive
        sub.mkdir(exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        small.resize((size, size), Image.BILINEAR).save(sub / f"{i:05d}.jpg", quality=90)


def child(root: Path, size: int, cache: Path) -> dict:
    env = {**os.environ, "NCSN_DATA": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(size)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=10_000, help="images to generate")
    p.add_argument("--size", type=int, default=64, help="their side and the prepared side (data.image_size)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the memory / memory-mapped timings")
    p.set_defaults(config="folder")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        start = time.perf_counter()
        make_images(root, args.images, args.size)
        generated = time.perf_counter() - start
        prepared = child(root, args.size, cache)
        reopened = child(root, args.size, cache)

        config = load_config(args.config, [f"data.root={root}", f"data.image_size={args.size}", *args.overrides])
        os.environ["NCSN_DATA"] = str(cache)
        t = config.training
        batch = args.batch_size or t.batch_size
        sources = {"memory": training_images(config.data, device),
                   "memory_mapped": training_images(
                       type(config.data)(**{**config.data.__dict__, "memory_budget_gb": 0.0}), device)}
        torch.manual_seed(0)
        model = build_score_model(config.model).to(device)
        optimizer = make_optimizer(model, t)
        objective = objective_for(config, model.sigmas)
        batches = EpochBatches(len(sources["memory"]), batch, t.seed, device)
        results = {name: {"step": [], "batch": [], "index": []} for name in sources}
        step_no = {"k": 0}

        def gather(images):
            k = step_no["k"]
            step_no["k"] += 1
            return prepare_batch(images[batches.indices(k)], _seeded(t.seed, 3, k, device), config.data.random_flip,
                                 config.data.dequantize)

        def step(images):
            x = gather(images)
            gen = _seeded(t.seed, 4, step_no["k"], device)
            sigma = objective.draw_sigma(batch, gen, device)
            noise = torch.randn(x.shape, generator=gen, device=device)
            train_step(model, model, optimizer, x, sigma, noise, objective, t)

        for _ in range(args.rounds):
            for name, images in sources.items():
                _, times = timed(lambda images=images: step(images), device, args.repeats, args.warmup or 1)
                results[name]["step"] += times
                _, times = timed(lambda images=images: gather(images), device, 50, 2)
                results[name]["batch"] += times
                _, times = timed(lambda images=images: images[batches.indices(step_no["k"])], device, 200, 2)
                results[name]["index"] += times
        sync(device)
    report = {
        "benchmark": "data_path",
        "machine": machine(device),
        "images": args.images, "size": args.size, "generate_seconds": round(generated, 2),
        "prepare": prepared, "reopen_cache": reopened,
        "training": {"config": args.config, "overrides": args.overrides, "ngf": config.model.ngf, "batch_size": batch,
                     "device": str(device)},
    }
    for name, r in results.items():
        report[name] = {"seconds_per_step": {k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in spread(r["step"]).items()},
                        **{f"{part}_ms": {k: round(1000 * v, 3) if isinstance(v, float) else v
                                          for k, v in spread(r[part]).items()} for part in ("batch", "index")}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
