"""A trained model's showcase (issue 25, item 4): `ncsn eval` at several sampler seeds, beside Gaussian mixtures and
real held-out images scored the same way, with the spread over seeds, a 10x10 grid and the nearest training images.

    python benchmarks/showcase.py --workdir runs/fashion --seeds 0,1,2 --n 1000 \
        --out benchmarks/results/showcase_fashion

Every seed of the model is one `ncsn eval --metrics cfid,cscore,nn` (the command a user runs), so the figures are
the tool's own. The baselines get the same n, metrics and seeds: a full-covariance Gaussian mixture of K components
fitted on --gmm-fit-n random training images (seeded; EM on all 60,000 images at 784 dimensions would take the better
part of an hour on two cores), and n random real test images, the floor a perfect model would reach at this n.
Writes OUT.json, OUT.md (the table), OUT_grid.png (the first 100 samples of the first seed) and OUT_nn.png (its first
24 samples, each followed by its 5 nearest training images, in three columns; `ncsn eval`'s nn.png has 64 in one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from ncsn.data import load_split
from ncsn.demo import gmm_samples
from ncsn.evaluation import evaluate_samples
from ncsn.images import save_grid
from ncsn.model_loading import load_score_model

FIGURES = ("cfid", "cscore", "nn_median")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the trained run folder (its latest checkpoint)")
    p.add_argument("--seeds", default="0,1,2", help="sampler seeds (and the baselines' seeds)")
    p.add_argument("--n", type=int, default=1000, help="samples per seed, for the model and every baseline")
    p.add_argument("--gmm", default="10,30", help="Gaussian-mixture components, comma-separated (empty: none)")
    p.add_argument("--gmm-fit-n", type=int, default=10000, help="training images each mixture is fitted on")
    p.add_argument("--eval-arg", action="append", default=[], help="an extra `ncsn eval` argument, e.g. --sampler=heun")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the evaluation")
    p.add_argument("--out", required=True, help="output path stem: OUT.json, OUT.md, OUT_grid.png, OUT_nn.png")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        args.gmm = [int(k) for k in args.gmm.split(",") if k.strip()]
    except ValueError:
        p.error("--seeds and --gmm take comma-separated integers")
    if not args.seeds or args.n < 100 or args.gmm_fit_n < 1 or any(k < 1 for k in args.gmm):
        p.error("--seeds needs at least one seed; --n >= 100 (a 10x10 grid); --gmm-fit-n and --gmm components >= 1")
    return args


def model_figures(workdir: Path, seed: int, args, folder: Path) -> dict:
    """One seed of the model: `ncsn eval` in a fresh process, its report read back."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "ncsn.cli", "eval", "--workdir", str(workdir), "--device", "cpu", "--n", str(args.n),
           "--seed", str(seed), "--metrics", "cfid,cscore,nn", "--out", str(folder / "eval.json"), *args.eval_arg]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.perf_counter() - start
    report = json.loads((folder / "eval.json").read_text())
    m = report["metrics"]
    return {"cfid": m["cfid"]["samples"], "cscore": m["cscore"]["samples"], "nn_median": m["nn"]["samples_nearest"]["median"],
            "nn_p_closer": m["nn"]["closeness"]["p_samples_closer"], "eval_seconds": round(seconds, 1),
            "sample_seconds": report["seconds"]["sampling"], "samples": report["samples"], "nn_png": m["nn"]["png"],
            "real_test_all": {"cfid": m["cfid"]["real_test"], "cscore": m["cscore"]["real_test"],
                              "nn_median": m["nn"]["real_test_nearest"]["median"]}}


def image_figures(images: torch.Tensor, data, seed: int, out_dir: Path) -> dict:
    """The same metrics on uint8 images (N, C, H, W) that are not a model's: a mixture's draws, real test images."""
    m = evaluate_samples(images, ["cfid", "cscore", "nn"], data, seed=seed, out_dir=out_dir)["metrics"]
    return {"cfid": m["cfid"]["samples"], "cscore": m["cscore"]["samples"], "nn_median": m["nn"]["samples_nearest"]["median"]}


def neighbour_tiles(samples: torch.Tensor, train: torch.Tensor, indices: list[list[int]], rows: int = 8,
                    blocks: int = 3) -> tuple[torch.Tensor, int]:
    """The first rows x blocks samples (uint8, N, C, H, W), each followed by its nearest training images, laid out as
    `blocks` columns of `rows` lines with a white tile between columns; returns the tiles and the tiles per line."""
    k = len(indices[0])
    blank = torch.full_like(samples[0], 255)
    tiles = []
    for r in range(rows):
        for b in range(blocks):
            i = b * rows + r
            tiles += [samples[i], *train[torch.tensor(indices[i])]] + ([blank] if b < blocks - 1 else [])
    return torch.stack(tiles), blocks * (k + 1) + blocks - 1


def spread(rows: list[dict]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max of every figure over the seeds."""
    out = {}
    for key in FIGURES:
        values = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def table(result: dict) -> str:
    seeds = "/".join(map(str, result["seeds"]))
    lines = [f"| {result['n']:,} images per seed, seeds {seeds} | classifier FID | classifier score | "
             "nearest-training L2 median |", "| --- | --- | --- | --- |"]
    for label, entry in result["rows"].items():
        s = entry["spread"]
        cells = [f"{s[k]['mean']:.{d}f} ± {s[k]['std']:.{d}f}" for k, d in zip(FIGURES, (2, 2, 3))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    workdir, out = Path(args.workdir), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _, config, info = load_score_model(workdir, device="cpu")
    files = out.parent / f"{out.name}_files"
    model_rows = []
    for seed in args.seeds:
        folder = files / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        model_rows.append({"seed": seed, **model_figures(workdir, seed, args, folder)})
    first = torch.from_numpy(np.load(model_rows[0]["samples"])["samples"][:100]).permute(0, 3, 1, 2)  # uint8 NCHW
    save_grid(out.parent / f"{out.name}_grid.png", first.float() / 255.0, nrow=10)
    train, test = load_split(config.data, "train").images, load_split(config.data, "test").images
    indices = json.loads((files / f"seed{args.seeds[0]}" / "eval.json").read_text())["metrics"]["nn"]["neighbour_indices"]
    tiles, per_line = neighbour_tiles(first, train, indices)
    save_grid(out.parent / f"{out.name}_nn.png", tiles.float() / 255.0, nrow=per_line)
    rows = {"model": {"per_seed": model_rows}}
    for k in args.gmm:
        per_seed = []
        for seed in args.seeds:
            fit = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:args.gmm_fit_n]]
            start = time.perf_counter()
            drawn = gmm_samples(fit, args.n, k, seed)
            per_seed.append({"seed": seed, "fit_seconds": round(time.perf_counter() - start, 1),
                             **image_figures(drawn, config.data, seed, files / f"gmm{k}_seed{seed}")})
        rows[f"Gaussian mixture, {k} components"] = {"per_seed": per_seed}
    real = []
    for seed in args.seeds:
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:args.n]
        real.append({"seed": seed, **image_figures(test[pick], config.data, seed, files / f"real_seed{seed}")})
    rows[f"real test images ({args.n:,} drawn per seed)"] = {"per_seed": real}
    for entry in rows.values():
        entry["spread"] = spread(entry["per_seed"])
    result = {"benchmark": "showcase", "machine": machine(torch.device("cpu")), "threads": args.threads,
              "workdir": str(workdir), "step": info.get("step"), "dataset": config.data.dataset,
              "image_size": config.data.image_size, "sampler": config.sampling.sampler, "eval_args": args.eval_arg,
              "n": args.n, "seeds": args.seeds, "gmm_fit_n": args.gmm_fit_n, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = table(result)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
