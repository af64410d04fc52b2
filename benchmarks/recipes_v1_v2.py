"""The v1 and v2 recipes trained for the same wall time on one dataset, then compared (issue 12, item 6).

    python benchmarks/recipes_v1_v2.py --minutes 60 --set model.ngf=32 --out benchmarks/results/fashion_v1_v2
    python benchmarks/recipes_v1_v2.py --minutes 5 --device cuda --out results/fashion_v1_v2   # on a GPU

Each recipe (``--v1`` / ``--v2`` presets, default ``fashion_mnist`` / ``fashion_mnist_v2``, with the shared ``--set``
overrides, e.g. the network width) trains in its own run folder for ``--minutes``: a short calibration run measures
its seconds per step, then the run resumes to the step count that fills the budget (the measured total is
reported). Then each model draws ``--n`` samples with its own recipe's sampler (``--sample-set`` changes both) and
is scored with the project's classifier metrics against the real test split, and by the held-out DSM loss on the
v1 ladder (the v2 network is sigma-continuous, so both are measured at the same levels; each on its own ladder too).
Writes OUT.json and OUT.md (the table, also printed).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import machine, sync

from ncsn.config import load_config
from ncsn.data import load_split, to_uint8_hwc
from ncsn.evaluation import evaluate_samples, heldout_dsm_loss
from ncsn.evaluation.reference import hwc_to_nchw
from ncsn.generate import generate
from ncsn.model_loading import load_score_model
from ncsn.training import train

CALIBRATION_STEPS = 50


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--v1", default="fashion_mnist", help="preset or YAML of the v1 recipe")
    p.add_argument("--v2", default="fashion_mnist_v2", help="preset or YAML of the v2 recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for both recipes")
    p.add_argument("--v2-set", action="append", default=[], help="KEY=VALUE for the v2 recipe only")
    p.add_argument("--sample-set", action="append", default=[], help="sampling KEY=VALUE for both recipes")
    p.add_argument("--minutes", type=float, required=True, help="training wall time of each recipe")
    p.add_argument("--n", type=int, default=10_000, help="samples per recipe")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--workdir", default="runs/recipes_v1_v2", help="folder for the two run folders")
    p.add_argument("--device", default=None, help="cpu, cuda ... [default: cuda if available]")
    p.add_argument("--out", required=True, help="output path stem: writes OUT.json and OUT.md")
    p.add_argument("--calibration-steps", type=int, default=CALIBRATION_STEPS, help="steps timed before the budget")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.n < 1 or args.calibration_steps < 1:
        p.error(f"--minutes must be > 0, --n and --calibration-steps >= 1; got {args.minutes}, {args.n}, "
                f"{args.calibration_steps}")
    return args


def train_for(config_name: str, overrides: list[str], seconds: float, workdir: Path, device, steps: int) -> dict:
    """Train until ``seconds`` of wall time are spent (calibrated on a ``steps``-step run); the measured times."""
    config = load_config(config_name, [*overrides, f"training.n_iters={steps}"])
    start = time.perf_counter()
    train(config, workdir, device=device, progress=False)
    sync(torch.device(device))
    calibration = time.perf_counter() - start
    total = max(steps, math.floor(steps * seconds / calibration))
    if total > steps:
        config = load_config(config_name, [*overrides, f"training.n_iters={total}"])
        train(config, workdir, resume=True, device=device, progress=False)
        sync(torch.device(device))
    return {"steps": total, "seconds": time.perf_counter() - start, "calibration_seconds": calibration,
            "budget_seconds": seconds}


def score(workdir: Path, sample_sets: list[str], v1_sigmas: torch.Tensor, args, device) -> dict:
    model, config, info = load_score_model(workdir, device=device)
    if sample_sets:
        config = load_config(str(workdir / "config.yaml"), sample_sets)
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    spent: dict = {}
    start = time.perf_counter()
    _, images, _ = generate(model, model.sigmas, args.n, shape, config.sampling, seed=args.seed, device=device,
                            info=spent)
    sync(torch.device(device))
    seconds = time.perf_counter() - start
    figures = evaluate_samples(hwc_to_nchw(to_uint8_hwc(images)), ["cfid", "cscore"], config.data, device=device,
                               seed=args.seed)["metrics"]
    test = load_split(config.data, "test").images
    loss = {name: heldout_dsm_loss(model, test, sigmas, config.training.anneal_power, seed=args.seed,
                                   dequantize=False, device=device)
            for name, sigmas in (("v1_ladder", v1_sigmas), ("own_ladder", model.sigmas))}
    nfe = spent["nfe_per_batch"]
    return {"weights": info["weights"], "sampler": config.sampling.sampler, "nfe": sum(nfe) / len(nfe),
            "sample_seconds": round(seconds, 2), "cfid": figures["cfid"]["samples"],
            "cscore": figures["cscore"]["samples"],
            "real": {"cfid_test": figures["cfid"]["real_test"], "cscore_test": figures["cscore"]["real_test"]},
            "heldout_loss_v1_ladder": loss["v1_ladder"]["mean"], "heldout_loss_own_ladder": loss["own_ladder"]["mean"],
            "heldout_per_level_v1_ladder": loss["v1_ladder"]["per_level"]}


def table(rows: dict) -> str:
    lines = ["| recipe | steps | train s | sampler NFE | classifier FID | classifier score | held-out loss (v1 ladder) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['train']['steps']} | {r['train']['seconds']:.0f} | {r['nfe']:g} | {r['cfid']:.2f} | "
                     f"{r['cscore']:.2f} | {r['heldout_loss_v1_ladder']:.4f} |")
    real = next(iter(rows.values()))["real"]
    lines.append(f"| real test split | | | | {real['cfid_test']:.2f} | {real['cscore_test']:.2f} | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(args.workdir)
    recipes = {"v1": (args.v1, args.overrides), "v2": (args.v2, [*args.overrides, *args.v2_set])}
    for name in recipes:
        if (root / name).exists() and any((root / name).iterdir()):
            raise SystemExit(f"{root / name} is not empty: each recipe must train from scratch to be timed")
    trained = {name: train_for(cfg, sets, args.minutes * 60, root / name, device,
                                   args.calibration_steps) for name, (cfg, sets) in recipes.items()}
    v1_sigmas = load_score_model(root / "v1", device=device)[0].sigmas
    rows = {name: {"config": recipes[name][0], "train": trained[name],
                   **score(root / name, args.sample_set, v1_sigmas, args, device)} for name in recipes}
    winner = min(rows, key=lambda k: rows[k]["cfid"])
    other = "v2" if winner == "v1" else "v1"
    result = {"benchmark": "recipes_v1_v2", "n": args.n, "seed": args.seed, "minutes": args.minutes,
              "overrides": args.overrides, "machine": machine(torch.device(device)), "recipes": rows,
              "winner_by_cfid": winner, "cfid_ratio": rows[other]["cfid"] / rows[winner]["cfid"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    text = table(rows)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"{winner} wins by classifier FID ({result['cfid_ratio']:.2f}x lower)")
    return result


if __name__ == "__main__":
    main()
