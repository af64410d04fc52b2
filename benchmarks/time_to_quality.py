"""Training recipes raced at equal wall time (issue 25, item 2): classifier FID and score against CPU minutes.

    python benchmarks/time_to_quality.py --budgets 1,2,4,8 --threads 2 --n 1000 \
        --out benchmarks/results/time_to_quality_digits

A recipe is a network, an objective, optimiser settings and its samplers, as config overrides (RECIPES). Each recipe
trains in its own process (`ncsn train`, OMP_NUM_THREADS = --threads), the recipes alternating (or, with
--side-by-side, running at the same time on separate cores), for every budget:

1. calibration: a --calibration-steps run of each recipe measures its steps per second, so that each budget's run
   gets the n_iters that fill it (its warm-up and learning-rate decay then end with the budget; --fill below 1 aims
   them a little short, so that a run finishes its schedule and ``ncsn train`` with that n_iters repeats it);
2. each budget B is trained in three stages stopped by ``training.time_budget_s`` (B/4, B/4, B/2 of wall time in the
   training loop; process start and data loading are not counted), each resuming the last, so the checkpoints at
   1/4, 1/2 and the whole budget are snapshots of one run (a resumed run repeats an uninterrupted one bit for bit);
3. every snapshot draws --n samples with the recipe's fast sampler (<= 100 NFE); the whole-budget snapshot also
   with its deterministic sampler (Heun without churn, where the network is sigma-continuous) and with annealed
   Langevin. The project's classifier metrics score them against the real splits (FID to the training split; the
   real test split's figures are the floor), and the median distance to the nearest training digit beside the real
   held-out digits' tells copying from generalising.

Writes OUT.json (every snapshot and sampler: step, NFE, seconds, figures; the calibration; the launch order),
OUT.png (classifier FID against training minutes, log y: one line per recipe through its whole-budget runs with its
fast sampler, its 1/4 and 1/2 snapshots as open markers, ALD dashed) and OUT.md (the table, also printed).
`--merge A.json B.json --out STEM` combines races run at other budgets on the same machine (a long race split over
sessions). `--resume` continues a stopped race in its --workdir with the same options: the calibration is read back,
finished stages are not trained again (a stage cut off midway is refused: its time would not be the budget's), and
finished scores are read from their folders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import machine

from ncsn.checkpoint import list_checkpoints
from ncsn.config import from_dict, load_config, to_dict
from ncsn.data import load_split, to_uint8_hwc
from ncsn.evaluation import evaluate_samples
from ncsn.evaluation.reference import hwc_to_nchw
from ncsn.generate import generate
from ncsn.model_loading import load_score_model
from ncsn.noise_plan import noise_plan
from ncsn.runtime import RuntimeOptions, resolve
from ncsn.samplers import used_settings

FRACTIONS = (0.25, 0.5, 1.0)
CALIBRATION_STEPS = 50
NEVER = 10**9  # no held-out loss, checkpoint or grid inside a timed stage: only at its end
# 69 NFE, the best <= 100 on the digits NCSNv2 model
HEUN_CHURN = ["sampling.sampler=heun", "sampling.heun.n_steps=35", "sampling.heun.s_churn=10.0",
              "sampling.heun.s_min=0.0", "sampling.heun.s_max=null", "sampling.heun.s_noise=1.0"]
# 15 NFE: DPM-Solver++(2M) SDE, within 0.2 FID of the best <= 100 NFE on the digits NCSN++ model (README)
DPMPP_SDE = ["sampling.sampler=dpmpp_2m_sde", "sampling.dpmpp_2m_sde.n_steps=15"]
# 35 NFE: Heun on the probability-flow ODE (EDM's deterministic sampler), 18 steps
HEUN_ODE = ["sampling.sampler=heun", "sampling.heun.n_steps=18", "sampling.heun.s_churn=0.0"]
SAMPLERS = ("fast", "det", "ald")
EVERY_SNAPSHOT = ("fast",)  # the others score the whole-budget snapshot only


@dataclass
class Recipe:
    """A preset and its overrides; ``samplers`` maps a label to the sampling overrides of a sampler to score with.
    ``plan``: NCSNv2's noise plan (``ncsn noise-plan``) of the training data sets the ladder and ALD's step."""

    preset: str
    overrides: list[str] = field(default_factory=list)
    samplers: dict[str, list[str]] = field(default_factory=dict)
    plan: bool = False


RECIPES = {
    # today's demo: the v1 network on its 12 levels; ald with T = 8 (97 NFE) is its fast sampler, T = 10 its own
    "digits": Recipe("digits", [], {"fast": ["sampling.ald.n_steps_each=8"], "ald": []}),
    # NCSNv2 (unconditional, s = f(x)/sigma) on its noise plan (17 levels 4.81 -> 0.05, T = 5), the digits optimiser
    "digits_v2": Recipe("digits", ["model.arch=ncsnv2", "model.scale_by_sigma=true"],
                        {"fast": HEUN_CHURN, "det": HEUN_ODE, "ald": []}, plan=True),
    # a small NCSN++ with Score-SDE's continuous VE loss, and the same with EDM's preconditioning and objective
    "digits_ncsnpp": Recipe("digits_ncsnpp", [], {"fast": DPMPP_SDE, "det": HEUN_ODE, "ald": ["sampling.sampler=ald"]}),
    "digits_ncsnpp_edm": Recipe("digits_ncsnpp", ["training.objective=edm", "model.preconditioning=edm"],
                                {"fast": DPMPP_SDE, "det": HEUN_ODE, "ald": ["sampling.sampler=ald"]}),
    # Fashion-MNIST at 28x28: the NCSN++ recipes at nf 32 (fashion_mnist_ncsnpp), sampled at 20 NFE and by Heun
    "fashion_ncsnpp": Recipe("fashion_mnist_ncsnpp", [], {"fast": [], "det": HEUN_ODE}),
    "fashion_ncsnpp_edm": Recipe("fashion_mnist_ncsnpp", ["training.objective=edm", "model.preconditioning=edm"],
                                 {"fast": [], "det": HEUN_ODE}),
}


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=floats, default=None, help="training wall-clock budgets in minutes, e.g. 1,2,4,8")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine earlier OUT.json files instead of racing")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"which recipes ({', '.join(RECIPES)})")
    p.add_argument("--threads", type=int, default=2, help="threads of every training process (and of the sampling, "
                   "times the number of recipes with --side-by-side)")
    p.add_argument("--side-by-side", action="store_true",
                   help="train the recipes at the same time, each in its own process at --threads, instead of "
                        "alternating: a race on N cores in 1/N of the wall time, every recipe seeing the same load")
    p.add_argument("--fill", type=float, default=1.0,
                   help="the fraction of each budget that a run's n_iters aims at (from the calibration)")
    p.add_argument("--n", type=int, default=1000, help="samples per snapshot and sampler")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (batch b uses (seed, b))")
    p.add_argument("--precision", default="auto", help="--precision of every training process")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every recipe")
    p.add_argument("--sample-set", action="append", default=[], help="sampling KEY=VALUE for every sampler")
    p.add_argument("--samplers", default=",".join(SAMPLERS),
                   help=f"which of each recipe's samplers score the snapshots ({', '.join(SAMPLERS)}); "
                        f"only {', '.join(EVERY_SNAPSHOT)} at every snapshot, the others at the whole budget")
    p.add_argument("--snapshot-budgets", type=floats, default=None,
                   help="budgets whose 1/4 and 1/2 snapshots are scored (default: every budget's)")
    p.add_argument("--calibration-steps", type=int, default=CALIBRATION_STEPS,
                   help="steps timed per recipe to size n_iters; 0 keeps each recipe's n_iters")
    p.add_argument("--sample-precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="precision of the scoring samplers (auto: the library's decision for sampling on this CPU)")
    p.add_argument("--workdir", default="runs/time_to_quality", help="folder for the run folders (must be new)")
    p.add_argument("--resume", action="store_true", help="continue a stopped race in --workdir")
    p.add_argument("--out", required=True, help="output path stem: writes OUT.json, OUT.png and OUT.md")
    args = p.parse_args(argv)
    if (args.budgets is None) == (args.merge is None):
        p.error("give either --budgets (to race) or --merge (to combine results)")
    if args.merge:
        return args
    names = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown or not names:
        p.error(f"--recipes: unknown {unknown}; choose from {', '.join(RECIPES)}")
    if not args.budgets or min(args.budgets) <= 0 or args.threads < 1 or args.n < 1 or args.calibration_steps < 0:
        p.error("--budgets must be positive minutes; --threads and --n >= 1; --calibration-steps >= 0")
    if not 0 < args.fill <= 1:
        p.error(f"--fill must be in (0, 1]; got {args.fill}")
    args.recipes = names
    args.samplers = [s for s in args.samplers.split(",") if s]
    if not args.samplers or set(args.samplers) - set(SAMPLERS):
        p.error(f"--samplers: choose from {', '.join(SAMPLERS)}; got {args.samplers}")
    return args


def start(argv: list[str], threads: int) -> subprocess.Popen:
    """``ncsn ARGV`` started in a fresh process at ``threads`` threads (the tests run it in-process instead)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "ncsn.cli", *argv], env=env)


def launch_all(argvs: list[list[str]], threads: int, side_by_side: bool) -> None:
    """Every ``ncsn ARGV`` in turn, or all at once when ``side_by_side``; a failed one stops the race."""
    waiting = []
    for argv in argvs:
        waiting.append((argv, start(argv, threads)))
        if not side_by_side:
            _wait(*waiting.pop())
    for argv, process in waiting:
        _wait(argv, process)


def _wait(argv: list[str], process) -> None:
    if process.wait() != 0:
        raise SystemExit(f"a race process failed (exit {process.returncode}): ncsn {' '.join(argv)}")


def plan_overrides(recipe: Recipe, overrides: list[str]) -> list[str]:
    """The recipe's overrides, with its noise plan's ladder and ALD step when it asks for one."""
    found = [*recipe.overrides, *overrides]
    if not recipe.plan:
        return found
    config = load_config(recipe.preset, found)
    plan = noise_plan(load_split(config.data, "train").images, steps_each=5, sigma_min=config.model.sigma_min)
    return [*found, *[f"{section}.{key}={value}" for section, keys in plan.config_overrides().items()
                      for key, value in keys.items()]]


def train_args(recipe: Recipe, overrides: list[str], workdir: Path, precision: str) -> list[str]:
    return ["train", "--config", recipe.preset, "--workdir", str(workdir), "--device", "cpu", "--no-progress",
            "--precision", precision, *[f"--set={s}" for s in overrides]]


def calibrate(recipes: dict, sets: dict, args, root: Path, order: list) -> dict:
    """Steps per second of each recipe, from the images/s its training log reports over the second half of
    --calibration-steps (the first steps pay one-off costs that a long run does not)."""
    found, steps = {}, args.calibration_steps
    launch_all([train_args(recipe, [*sets[name], f"training.n_iters={steps}", f"training.log_every={max(1, steps // 2)}",
                                    "training.sample_n=1"], root / "calibration" / name, args.precision)
                for name, recipe in recipes.items() if not (root / "calibration" / name / "metrics.jsonl").is_file()],
               args.threads, args.side_by_side)
    for name, recipe in recipes.items():
        order.append([name, "calibration"])
        rows = [json.loads(line) for line in (root / "calibration" / name / "metrics.jsonl").read_text().splitlines()
                if line]
        images_per_s = [r["images_per_s"] for r in rows if "images_per_s" in r][-1]
        batch = load_config(recipe.preset, sets[name]).training.batch_size
        found[name] = {"steps": steps, "images_per_s": images_per_s, "steps_per_s": images_per_s / batch}
    return found


def train_stages(recipes: dict, sets: dict, budget: float, calibration: dict, args, root: Path,
                 order: list) -> dict:
    """Each recipe trained for ``budget`` minutes in stages, alternating or side by side; {(recipe, fraction):
    checkpoint info}."""
    snapshots, done = {}, 0.0
    n_iters = {name: (max(1, int(args.fill * budget * 60 * calibration[name]["steps_per_s"])) if name in calibration
                      else load_config(recipe.preset, sets[name]).training.n_iters) for name, recipe in recipes.items()}
    for index, fraction in enumerate(FRACTIONS):
        seconds = (fraction - done) * budget * 60
        stages = []
        for name, recipe in recipes.items():
            workdir = root / f"{name}_{budget:g}min"
            ends = list_checkpoints(workdir)  # the race checkpoints only at a stage's end: one per stage
            if len(ends) > index or (ends and ends[-1][0] >= n_iters[name]):
                continue  # this stage ran already (a resumed race), or the run reached its n_iters
            if (workdir / "config.yaml").exists() and len(ends) < max(index, 1):
                raise SystemExit(f"{workdir}: a stage was cut off before its first checkpoint; delete the folder to "
                                 "race this budget again")
            if not ends:
                stages.append(train_args(recipe, [*sets[name], f"training.n_iters={n_iters[name]}",
                                                  f"training.time_budget_s={seconds}"], workdir, args.precision))
            else:
                stages.append(["train", "--resume", "--workdir", str(workdir), "--device", "cpu", "--no-progress",
                               "--precision", args.precision, f"--set=training.time_budget_s={seconds}"])
            order.append([name, budget, fraction])
        launch_all(stages, args.threads, args.side_by_side)
        for name in recipes:
            ends = list_checkpoints(root / f"{name}_{budget:g}min")
            step, checkpoint = ends[min(index, len(ends) - 1)]  # a run that reached its n_iters early ends there
            snapshots[name, fraction] = {"checkpoint": checkpoint, "step": step, "n_iters": n_iters[name]}
        done = fraction
    return snapshots


def score(checkpoint: Path, sampling: list[str], args, out_dir: Path) -> dict:
    """--n samples of a snapshot with one sampler: their classifier FID and score, and the median L2 distance to
    the nearest training image beside the real held-out images' (its PNG goes to ``out_dir``)."""
    done = out_dir / "score.json"
    if done.is_file():  # scored before this race was resumed
        return json.loads(done.read_text())
    model, config, _ = load_score_model(checkpoint, device="cpu")
    config = from_dict(to_dict(config), [*sampling, *args.sample_set])
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    runtime = resolve(RuntimeOptions(precision=args.sample_precision), model, "cpu",
                      (config.sampling.batch_size, *shape), training=False)
    spent: dict = {}
    start = time.perf_counter()
    _, images, _ = generate(model, model.sigmas, args.n, shape, config.sampling, seed=args.seed, info=spent,
                            runtime=runtime)
    seconds = time.perf_counter() - start
    figures = evaluate_samples(hwc_to_nchw(to_uint8_hwc(images)), ["cfid", "cscore", "nn"], config.data,
                               seed=args.seed, out_dir=out_dir)["metrics"]
    nn = figures["nn"]
    nfe = spent["nfe_per_batch"]
    found = {"settings": used_settings(config.sampling), "nfe": sum(nfe) / len(nfe), "sample_seconds": round(seconds, 2),
             "sample_precision": runtime.precision, "cfid": figures["cfid"]["samples"],
             "cscore": figures["cscore"]["samples"], "nn_median": nn["samples_nearest"]["median"],
             "nn_p_closer": nn["closeness"]["p_samples_closer"],
             "real": {"cfid_test": figures["cfid"]["real_test"], "cscore_test": figures["cscore"]["real_test"],
                      "nn_median_test": nn["real_test_nearest"]["median"]}}
    done.write_text(json.dumps(found))
    return found


def series(rows: list[dict]) -> dict[str, dict]:
    """What the plot draws, per recipe and sampler: the whole-budget points (the line) and the 1/4, 1/2 snapshots
    (markers), each as (training minutes, classifier FID) in order of minutes."""
    lines: dict[str, dict] = {}
    for r in rows:
        key = f"{r['recipe']} ({r['sampler']}, {r['nfe']:g} NFE)"
        line = lines.setdefault(key, {"recipe": r["recipe"], "sampler": r["sampler"], "line": [], "snapshots": []})
        line["line" if r["fraction"] == 1.0 else "snapshots"].append((r["minutes"], r["cfid"]))
    for line in lines.values():
        line["line"].sort()
        line["snapshots"].sort()
    return lines


def plot(rows: list[dict], real: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for label, s in series(rows).items():
        colour = colours.setdefault(s["recipe"], f"C{len(colours)}")
        style = {"ald": "--", "det": ":"}.get(s["sampler"], "-")
        ax.plot(*zip(*s["line"]), style, marker="o", color=colour, label=label)
        if s["snapshots"]:
            ax.plot(*zip(*s["snapshots"]), linestyle="none", marker="o", mfc="none", color=colour)
    ax.axhline(real["cfid_test"], color="grey", linestyle=":", label="real test split")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("training wall time (minutes); open markers: 1/4 and 1/2 snapshots of a run")
    ax.set_ylabel("classifier FID (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict], budgets: list[float], real: dict) -> str:
    """Classifier FID / score / nearest-training median (steps) of each recipe and sampler at the whole of each
    budget."""
    head = "| recipe | sampler | NFE | " + " | ".join(f"{b:g} min" for b in budgets) + " |"
    lines = [head, "|" + " --- |" * (3 + len(budgets))]
    for label, s in series(rows).items():
        whole = {r["budget_min"]: r for r in rows if r["fraction"] == 1.0
                 and f"{r['recipe']} ({r['sampler']}, {r['nfe']:g} NFE)" == label}
        cells = [f"{whole[b]['cfid']:.2f} / {whole[b]['cscore']:.2f} / {whole[b]['nn_median']:.3f} "
                 f"({whole[b]['step']:,} steps)" if b in whole else "" for b in budgets]
        nfe = next(iter(whole.values()))["nfe"] if whole else ""
        lines.append(f"| {s['recipe']} | {s['sampler']} | {nfe:g} | " + " | ".join(cells) + " |")
    lines.append(f"| real test split | | | {real['cfid_test']:.2f} / {real['cscore_test']:.2f} / "
                 f"{real['nn_median_test']:.3f} |"
                 + " |" * (len(budgets) - 1))
    return "\n".join(lines)


SAME_RACE_KEYS = ("threads", "side_by_side", "fill", "n", "seed", "precision", "sample_precision", "samplers_scored",
                  "overrides", "sample_overrides")


def merge(paths: list[str]) -> dict:
    """One result from races of the same settings at different budgets; a recipe must be the same in every part
    that has it, and the CPU model the same in all."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for key in SAME_RACE_KEYS:
        values = {json.dumps(part.get(key)) for part in parts}
        if len(values) > 1:
            raise SystemExit(f"--merge: the races differ in {key!r} ({', '.join(sorted(values))})")
    models = {part["machine"].get("cpu_model") for part in parts}
    if len(models) > 1:
        raise SystemExit(f"--merge: the races ran on different CPUs ({', '.join(sorted(map(str, models)))}): "
                         "their minutes do not compare")
    recipes: dict = {}
    for part in parts:
        for name, recipe in part["recipes"].items():
            if recipes.setdefault(name, recipe) != recipe:
                raise SystemExit(f"--merge: recipe {name!r} differs between the races")
    seen = [(r["recipe"], r["budget_min"]) for part in parts for r in part["runs"] if r["fraction"] == 1.0
            and r["sampler"] == "fast"]
    if len(seen) != len(set(seen)):
        raise SystemExit("--merge: a recipe was raced at the same budget twice")
    return {**parts[0], "budgets_min": sorted({b for part in parts for b in part["budgets_min"]}), "recipes": recipes,
            "calibration": [part["calibration"] for part in parts], "order": [part["order"] for part in parts],
            "runs": [r for part in parts for r in part["runs"]], "merged_from": [str(p) for p in paths]}


def write_outputs(result: dict, out: Path) -> dict:
    """OUT.json, OUT.png and OUT.md of a result; the table is also printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    together = ", side by side" if result.get("side_by_side") else ""
    title = f"time to quality ({result['threads']} threads per process{together}, {result['n']} samples per point)"
    plot(result["runs"], result["real"], out.with_suffix(".png"), title)
    text = table(result["runs"], result["budgets_min"], result["real"])
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return result


def main(argv=None) -> dict:
    args = parse(argv)
    if args.merge:
        return write_outputs(merge(args.merge), Path(args.out))
    torch.set_num_threads(min(os.cpu_count() or 1, args.threads * (len(args.recipes) if args.side_by_side else 1)))
    root = Path(args.workdir)
    if root.exists() and any(root.iterdir()) and not args.resume:
        raise SystemExit(f"{root} is not empty: every recipe must train from scratch to be timed (or --resume)")
    recipes = {name: RECIPES[name] for name in args.recipes}
    race = [f"training.{k}={NEVER}" for k in ("checkpoint_every", "snapshot_every", "sample_every", "eval_every")]
    sets = {name: plan_overrides(r, [*race, "training.keep_last=10", "training.sample_n=16", *args.overrides])
            for name, r in recipes.items()}
    for name, recipe in recipes.items():  # every recipe and sampler is a valid config before anything trains
        for sampling in recipe.samplers.values():
            load_config(recipe.preset, [*sets[name], *sampling, *args.sample_set])
    order: list = []
    calibration = calibrate(recipes, sets, args, root, order) if args.calibration_steps else {}
    rows, real = [], None
    for budget in sorted(args.budgets):
        snapshots = train_stages(recipes, sets, budget, calibration, args, root, order)
        for (name, fraction), snap in snapshots.items():
            for label, sampling in recipes[name].samplers.items():
                if label not in args.samplers or (fraction < 1.0 and (label not in EVERY_SNAPSHOT or (
                        args.snapshot_budgets is not None and budget not in args.snapshot_budgets))):
                    continue
                found = score(snap["checkpoint"], sampling, args,
                              root / "scores" / f"{name}_{budget:g}min_{fraction:g}_{label}")
                real = found.pop("real")
                rows.append({"recipe": name, "budget_min": budget, "fraction": fraction, "minutes": fraction * budget,
                             "step": snap["step"], "n_iters": snap["n_iters"], "sampler": label, **found})
    result = {"benchmark": "time_to_quality", "machine": machine(torch.device("cpu")), "threads": args.threads,
              "side_by_side": args.side_by_side, "fill": args.fill, "sampling_threads": torch.get_num_threads(),
              "budgets_min": sorted(args.budgets), "fractions": list(FRACTIONS), "n": args.n, "seed": args.seed,
              "precision": args.precision, "sample_precision": args.sample_precision, "samplers_scored": args.samplers, "overrides": args.overrides, "sample_overrides": args.sample_set,
              "recipes": {name: {"preset": r.preset, "overrides": sets[name], "samplers": r.samplers}
                          for name, r in recipes.items()},
              "calibration": calibration, "order": order, "runs": rows, "real": real}
    return write_outputs(result, Path(args.out))


if __name__ == "__main__":
    main()
