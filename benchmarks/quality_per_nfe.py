"""Sample quality per network evaluation: every sampler at several budgets on one trained model, same seeds.

    python benchmarks/quality_per_nfe.py --workdir runs/demo --out benchmarks/results/quality_per_nfe_digits
    python benchmarks/quality_per_nfe.py --workdir runs/fashion_v2 --n 2000 --device cuda --out results/fashion

For each (sampler, budget) it draws --n samples (>= 1,000; batch b seeded from (--seed, b) for every run) and scores
them with the project's classifier metrics against the real splits (grey-scale data): classifier FID to the training
split and classifier score, beside the same figures for the real test split. Budgets: ald T steps per level, pc N
levels (a level-conditioned v1 model runs pc only on its own ladder, so there the corrector steps vary instead),
heun N steps, ode tolerances (rtol = atol). Samplers the model cannot run are skipped, with the reason. All samplers
end noise-free (ald/ode with the Tweedie step, pc on its mean, heun at sigma = 0) unless --no-denoise.

Writes OUT.json (every run: settings, NFE actually spent, seconds, figures; the skipped ones; whether a sampler at
<= 100 NFE matched ald at ~1,000 NFE by classifier FID), OUT.png (quality against NFE, log x, one line per sampler) and
OUT.md (the table, also printed). `--merge A.json B.json --out STEM` combines runs of the same model and seeds made
in separate processes (say, the samplers split over two cores) into one result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, sync

from ncsn.data import to_uint8_hwc
from ncsn.evaluation import evaluate_samples
from ncsn.evaluation.reference import hwc_to_nchw
from ncsn.evaluation.report import is_grey
from ncsn.generate import generate
from ncsn.model_loading import load_score_model
from ncsn.samplers import SAMPLERS, SPECS, check_fits, settings_from, used_settings
from ncsn.sigmas import SigmaOffLadderError, ncsnv2_step_lr

MIN_SAMPLES = 1000
GOAL_NFE = 100
REFERENCE_NFE = 1000
# EDM's churn over every sigma at unit noise: a run folder's own s_min/s_max/s_noise (an old flat config maps ald's
# temperature range onto heun too) would make a 'heun churn' line a different sampler from one model to the next
PLAIN_CHURN = {"s_min": 0.0, "s_max": None, "s_noise": 1.0}
PLANNED = ("ald", "pc", "heun", "ode", "dpmpp_2m", "dpmpp_2m_sde")  # the samplers plan() has budgets for


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="run folder of the trained model (its latest checkpoint)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine earlier OUT.json files of one model instead")
    p.add_argument("--out", required=True, help="output path stem: writes OUT.json, OUT.png and OUT.md")
    p.add_argument("--n", type=int, default=MIN_SAMPLES, help=f"samples per run (>= {MIN_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (batch b uses (seed, b))")
    p.add_argument("--batch-size", type=int, default=None, help="chains per batch [default: the config's]")
    p.add_argument("--device", default=None, help="cpu, cuda ... [default: cuda if available]")
    p.add_argument("--samplers", default=",".join(s for s in SAMPLERS if s in PLANNED), help="which samplers to run")
    p.add_argument("--ald-steps", type=ints, default=ints("1,2,5,10,100"), help="ald: steps per level T")
    p.add_argument("--ald-planned-eps", action="store_true",
                   help="ald: the step size of NCSNv2's technique 4 for each T on the model's ladder (an 'ald planned "
                        "eps' line) instead of the config's one step size for every T")
    p.add_argument("--pc-steps", type=ints, default=ints("10,20,50,100,250,500"),
                   help="pc: levels N (sigma-scaled models; a v1 model uses its ladder)")
    p.add_argument("--pc-corrector-steps", type=ints, default=None,
                   help="pc: corrector moves per level [default: 1; 0,1,2,4,9 on a v1 model's ladder]")
    p.add_argument("--heun-steps", type=ints, default=ints("5,10,18,35,50"), help="heun: steps N")
    p.add_argument("--heun-churn", type=floats, default=floats("0"),
                   help="heun: S_churn values (0 deterministic; > 0 a separate 'heun churn' line)")
    p.add_argument("--ode-tols", type=floats, default=floats("1e-1,1e-2,1e-3,1e-4,1e-5"), help="ode: rtol = atol")
    p.add_argument("--dpmpp-steps", type=ints, default=ints("10,15,20,30"),
                   help="dpmpp_2m and dpmpp_2m_sde: steps N (N evaluations)")
    p.add_argument("--no-denoise", dest="denoise", action="store_false", help="do not end noise-free")
    args = p.parse_args(argv)
    if (args.workdir is None) == (args.merge is None):
        p.error("give either --workdir (to measure) or --merge (to combine results)")
    if args.n < MIN_SAMPLES:
        p.error(f"--n must be >= {MIN_SAMPLES} (classifier FID is biased at small N), got {args.n}")
    unknown = set(args.samplers.split(",")) - set(SAMPLERS)
    if unknown:
        p.error(f"--samplers: unknown {sorted(unknown)}; choose from {','.join(SAMPLERS)}")
    unplanned = set(args.samplers.split(",")) - set(PLANNED)
    if unplanned:
        p.error(f"--samplers: no budgets planned for {sorted(unplanned)} in this script; choose from {','.join(PLANNED)}")
    return args


def plan(args, model, sampling) -> tuple[list[tuple[str, object, object]], list[dict]]:
    """(sampler, budget, settings) for every run, and the skipped samplers with the reason."""
    runs, skipped = [], []
    ladder = len(model.sigmas)
    level_conditioned = model.level_conditioned
    def variant(name: str, **keys):
        """The config's settings with sampler ``name`` chosen, its chains' own start, ``keys`` and --denoise."""
        if "denoise" in SPECS[name].keys():
            keys["denoise"] = args.denoise
        return settings_from(sampling, sampler=name, init="auto", **keys)

    wanted = args.samplers.split(",")
    if "ald" in wanted:
        sig = model.sigmas.double()
        ratio, sigma_l = float(sig[0] / sig[1]), float(sig[-1])
        label = "ald planned eps" if args.ald_planned_eps else "ald"
        for t in args.ald_steps:
            step = {"step_lr": ncsnv2_step_lr(t, sigma_l, ratio)} if args.ald_planned_eps else {}
            runs.append((label, t, variant("ald", n_steps_each=t, **step)))
    if "pc" in wanted:
        if level_conditioned:
            steps = args.pc_corrector_steps if args.pc_corrector_steps is not None else [0, 1, 2, 4, 9]
            others = sorted(set(args.pc_steps) - {ladder})
            if others:
                reason = (f"level-conditioned network: pc runs only on its own {ladder}-level ladder (N = {ladder}); "
                          "the corrector steps vary instead")
                skipped.append({"sampler": "pc", "budgets": others, "reason": reason})
            for c in steps:
                runs.append(("pc", f"N={ladder},c={c}", variant(
                    "pc", n_steps=None, corrector="none" if c == 0 else "langevin", corrector_steps=c)))
        else:
            steps = args.pc_corrector_steps if args.pc_corrector_steps is not None else [1]
            for n in args.pc_steps:
                for c in steps:
                    runs.append(("pc", f"N={n},c={c}", variant(
                        "pc", n_steps=n, corrector="none" if c == 0 else "langevin", corrector_steps=c)))
    for name, budgets, key in (("heun", args.heun_steps, "n_steps"), ("ode", args.ode_tols, "rtol"),
                               ("dpmpp_2m", args.dpmpp_steps, "n_steps"), ("dpmpp_2m_sde", args.dpmpp_steps, "n_steps")):
        if name not in wanted:
            continue
        variants = [(name, {})] if name != "heun" else [
            ("heun" if c == 0 else f"heun churn {c:g}", {"s_churn": c, **({} if c == 0 else PLAIN_CHURN)})
            for c in args.heun_churn]
        settings = [(label, b, variant(name, **extra, **(
            {key: b} if key == "n_steps" else {"rtol": b, "atol": b}))) for label, extra in variants for b in budgets]
        try:
            check_fits(model, settings[0][2], model.sigmas)
        except SigmaOffLadderError as err:
            skipped.append({"sampler": name, "budgets": list(budgets), "reason": str(err)})
            continue
        runs += settings
    return runs, skipped


def measure(model, config, settings, args, device) -> dict:
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    spent: dict = {}
    sync(device)
    start = time.perf_counter()
    _, images, _ = generate(model, model.sigmas, args.n, shape, settings, seed=args.seed, device=device,
                            batch_size=args.batch_size or config.sampling.batch_size, info=spent)
    sync(device)
    seconds = time.perf_counter() - start
    samples = hwc_to_nchw(to_uint8_hwc(images))
    report = evaluate_samples(samples, ["cfid", "cscore"], config.data, device=device, seed=args.seed)["metrics"]
    nfe = spent["nfe_per_batch"]
    return {"nfe": sum(nfe) / len(nfe), "nfe_total": sum(nfe), "seconds": round(seconds, 3),
            "cfid": report["cfid"]["samples"], "cscore": report["cscore"]["samples"],
            "real": {"cfid_test": report["cfid"]["real_test"], "cscore_test": report["cscore"]["real_test"]}}


def goal(rows: list[dict]) -> dict:
    """Did a sampler at <= GOAL_NFE evaluations match or beat ald at ~REFERENCE_NFE (the paper's T = 100 on 10
    levels) by classifier FID? The reference is the ald run nearest REFERENCE_NFE among those with at least half of
    it (T = 59 on a 17-level ladder is 1,004), or none."""
    candidates = [r for r in rows if r["sampler"].startswith("ald") and r["nfe"] >= REFERENCE_NFE / 2]
    # nearest the budget; between step-size rules at that budget, the better one (the fairer reference)
    reference = min(candidates, key=lambda r: (abs(r["nfe"] - REFERENCE_NFE), -r["nfe"], r["cfid"]), default=None)
    cheap = [r for r in rows if r["nfe"] <= GOAL_NFE]
    best = min(cheap, key=lambda r: r["cfid"], default=None)
    return {"reference": reference and {k: reference[k] for k in ("sampler", "budget", "nfe", "cfid")},
            "best_at_most_100_nfe": best and {k: best[k] for k in ("sampler", "budget", "nfe", "cfid")},
            "reached": bool(reference and best and best["cfid"] <= reference["cfid"])}


def table(rows: list[dict], real: dict | None) -> str:
    lines = ["| sampler | budget | NFE | seconds | classifier FID | classifier score |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['budget']} | {r['nfe']:g} | {r['seconds']:.1f} | {r['cfid']:.2f} | "
                     f"{r['cscore']:.2f} |")
    if real:
        lines.append(f"| real test split | | | | {real['cfid_test']:.2f} | {real['cscore_test']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], real: dict | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "cfid", "classifier FID (lower is better)"),
                           (axes[1], "cscore", "classifier score (higher is better)")):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], marker="o", label=name)
        if real:
            ax.axhline(real[f"{key}_test"], color="grey", linestyle="--", label="real test split")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        if key == "cfid":  # FIDs span two decades; the good end must stay readable
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.merge:
        return write_outputs(merge(args.merge), Path(args.out))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config, info = load_score_model(args.workdir, device=device)
    if not is_grey(config.data.dataset):
        raise SystemExit(f"{config.data.dataset}: the classifier metrics are for grey-scale data")
    runs, skipped = plan(args, model, config.sampling)
    for item in skipped:
        print(f"skipped {item['sampler']} {item['budgets']}: {item['reason']}")
    rows, real = [], None
    for name, budget, settings in runs:
        found = measure(model, config, settings, args, device)
        real = found.pop("real")
        rows.append({"sampler": name, "budget": budget, **found, "settings": used_settings(settings)})
        print(f"{name} {budget}: NFE {found['nfe']:g}, {found['seconds']:.1f}s, classifier FID {found['cfid']:.2f}, "
              f"score {found['cscore']:.2f}")
    result = {"benchmark": "quality_per_nfe", "workdir": str(args.workdir), "weights": info["weights"],
              "step": info.get("step"), "dataset": config.data.dataset, "level_conditioned": model.level_conditioned,
              "n": args.n, "seed": args.seed, "denoise": args.denoise, "machine": machine(device), "real": real,
              "runs": rows, "skipped": skipped, "goal": goal(rows)}
    return write_outputs(result, Path(args.out))


SAME_MODEL_KEYS = ("workdir", "weights", "step", "dataset", "n", "seed", "denoise")


def merge(paths: list[str]) -> dict:
    """One result from several runs of this script on the same model and seeds (e.g. samplers split over processes)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for key in SAME_MODEL_KEYS:
        values = {json.dumps(part.get(key)) for part in parts}
        if len(values) > 1:
            raise SystemExit(f"--merge: the results differ in {key!r} ({', '.join(sorted(values))}); "
                             "they must come from the same model, sample count and seed")
    rows = [row for part in parts for row in part["runs"]]
    result = {**parts[0], "runs": rows, "skipped": [s for part in parts for s in part["skipped"]], "goal": goal(rows),
              "merged_from": [str(p) for p in paths]}
    result["real"] = next((part["real"] for part in parts if part.get("real")), None)
    return result


def write_outputs(result: dict, out: Path) -> dict:
    """OUT.json, OUT.png and OUT.md of a result, with the table and the goal's verdict printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, real = result["runs"], result["real"]
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(rows, real, out.with_suffix(".png"), f"{result['dataset']}, {result['n']} samples, step {result['step']}")
    text = table(rows, real)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    g = result["goal"]
    verdict = "reached" if g["reached"] else "not reached"
    print(f"goal (<= {GOAL_NFE} NFE matching ald at ~{REFERENCE_NFE} NFE by classifier FID): {verdict}; best cheap run "
          f"{g['best_at_most_100_nfe']}, reference {g['reference']}")
    return result


if __name__ == "__main__":
    main()
