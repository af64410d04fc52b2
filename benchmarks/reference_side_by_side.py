"""Time the reference code (ermongroup/ncsn) and ncsn side by side on one config, in alternating processes.

    git clone https://github.com/ermongroup/ncsn /tmp/ncsn_ref        # GPL-3.0: it stays outside this repository
    python benchmarks/reference_side_by_side.py --reference /tmp/ncsn_ref --rounds 2

The reference is imported at run time from ``--reference`` (nothing of it is copied here). Both sides run the
Fashion-MNIST paper config (CondRefineNetDilated, ngf 64, 1x28x28, 10 levels, batch 128) on the CPU:

- training step: dequantise a uint8 batch, the DSM loss, backward, Adam, read the loss. The reference's step is the
  loop body of its ``AnnealRunner.train`` (its ``anneal_dsm_score_estimation`` on its ``nn.DataParallel``-wrapped
  network, its Adam settings); ncsn's is ``ncsn.training.train_step`` with the library's defaults.
- sampler: one annealed-Langevin step at each of ``--levels`` levels per call, batch 128. The reference runs its
  ``AnnealRunner.anneal_Langevin_dynamics`` (n_steps_each 1, which also clamps and copies each step's images, as it
  does); ncsn runs ``ncsn.samplers.annealed_langevin`` through ``ncsn.runtime.score_function`` with the defaults.

Each (side, job) is a fresh process; a round runs reference, ncsn for training, then for sampling, and the order
flips every round so neither side always runs first. Each process reports its median, spread and peak RSS, the
load average around it, and the float32 rate of a 4096x4096 matmul measured right after its timings: the fraction
of the floor is (the job's FLOPs / that rate) / the measured time, with the FLOPs of ncsn's network as
``compute_floor.py`` counts them (1,430.3 GFLOP per training step, 477.0 per network evaluation at batch 128, scaled
to the batch; the reference's own step counts 1,454, as it runs the conv-then-mean-pool layers unfolded).

Shims, applied by monkeypatching, never by editing the reference's files: a stand-in for ``tensorboardX`` when it
is not installed (only its import is needed), ``datasets`` bound to the reference's own folder, and
``runners/anneal_runner.py`` loaded on its own (``runners/__init__`` imports the toy runner, which needs seaborn).
Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBS = ("train", "sample")
SIDES = ("reference", "ncsn")


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="folder of an ermongroup/ncsn checkout (main.py, models/...)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of reference/ncsn processes per job")
    p.add_argument("--train-steps", type=int, default=4, help="timed training steps per process (after 1 warm-up)")
    p.add_argument("--sampler-calls", type=int, default=2, help="timed sampler calls per process (after 1 warm-up)")
    p.add_argument("--levels", type=int, default=10, help="noise levels per sampler call (one step each)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads [default: torch's]")
    p.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    p.add_argument("--gflop-train", type=float, default=1430.3,
                   help="GFLOP of one training step at batch 128 (compute_floor.py)")
    p.add_argument("--gflop-eval", type=float, default=477.0, help="GFLOP of one network evaluation at batch 128")
    p.add_argument("--matmul-size", type=int, default=4096, help="side of the float32 product timed for the floor")
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    ref = Path(args.reference).resolve()
    if not (ref / "models" / "cond_refinenet_dilated.py").is_file() or not (ref / "losses" / "dsm.py").is_file():
        p.error(f"--reference {ref} is not an ermongroup/ncsn checkout (no models/cond_refinenet_dilated.py)")
    args.reference = ref
    return args


# ---- the reference side -------------------------------------------------------------------------------------


def _namespace(d):
    return types.SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v for k, v in d.items()})


def reference_parts(ref: Path, batch: int):
    """(network, optimizer, sigmas, loss function, runner) of the reference code, built as its AnnealRunner does."""
    import numpy as np
    import torch
    import yaml

    sys.path.insert(0, str(ref))
    if importlib.util.find_spec("tensorboardX") is None:  # imported at the top of its runner, used only in train()
        sys.modules["tensorboardX"] = types.ModuleType("tensorboardX")
    datasets = types.ModuleType("datasets")  # its namespace folder, whatever else is installed under that name
    datasets.__path__ = [str(ref / "datasets")]
    sys.modules["datasets"] = datasets
    spec = importlib.util.spec_from_file_location("reference_anneal_runner", ref / "runners" / "anneal_runner.py")
    runner_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_module)
    from losses.dsm import anneal_dsm_score_estimation
    from models.cond_refinenet_dilated import CondRefineNetDilated

    config = _namespace(yaml.safe_load((ref / "configs" / "anneal.yml").read_text()))  # MNIST: ngf 64, 28x28
    config.training.batch_size = batch
    config.device = torch.device("cpu")
    runner = runner_module.AnnealRunner(types.SimpleNamespace(), config)
    score = torch.nn.DataParallel(CondRefineNetDilated(config).to(config.device))
    optimizer = runner.get_optimizer(score.parameters())
    sigmas = torch.tensor(np.exp(np.linspace(np.log(config.model.sigma_begin), np.log(config.model.sigma_end),
                                             config.model.num_classes))).float()
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    return score, optimizer, sigmas, anneal_dsm_score_estimation, runner, config, shape


def reference_worker(args, job: str):
    import torch

    torch.manual_seed(0)
    score, optimizer, sigmas, loss_fn, runner, config, shape = reference_parts(args.reference, args.batch_size)
    if job == "train":
        images = torch.randint(0, 256, (4 * args.batch_size, *shape), dtype=torch.uint8)
        state = {"k": 0}

        def step():  # the body of AnnealRunner.train's loop (ToTensor's /255 first), minus the tensorboard line
            k = state["k"] % 4
            state["k"] += 1
            score.train()
            X = images[k * args.batch_size:(k + 1) * args.batch_size].float() / 255.0
            X = X / 256.0 * 255.0 + torch.rand_like(X) / 256.0
            labels = torch.randint(0, len(sigmas), (X.shape[0],), device=X.device)
            loss = loss_fn(score, X, labels, sigmas, config.training.anneal_power)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

        return step, 1, {"network_params": sum(p.numel() for p in score.parameters())}
    score.eval()
    x0 = torch.rand(args.batch_size, *shape)
    levels = sigmas[: args.levels]

    def chain():
        runner.anneal_Langevin_dynamics(x0, score, levels, n_steps_each=1, step_lr=0.00002)

    return chain, len(levels), {"network_params": sum(p.numel() for p in score.parameters())}


# ---- the ncsn side ------------------------------------------------------------------------------------------


def ncsn_worker(args, job: str):
    import torch

    from ncsn.config import load_config
    from ncsn.data import prepare_batch
    from ncsn.losses import objective_for
    from ncsn.runtime import RuntimeOptions, prepare_model, resolve, score_function
    from ncsn.samplers import annealed_langevin, uniform_init
    from ncsn.score_model import build_score_model
    from ncsn.training import EpochBatches, make_optimizer, train_step

    config = load_config("fashion_mnist")
    t, device = config.training, torch.device("cpu")
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    torch.manual_seed(0)
    model = build_score_model(config.model)
    extra = {"network_params": sum(p.numel() for p in model.parameters())}
    if job == "train":
        runtime = resolve(RuntimeOptions(), model, device, (args.batch_size, *shape), training=True)
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, t)
        net = prepare_model(model, runtime, device)
        images = torch.randint(0, 256, (4 * args.batch_size, *shape), dtype=torch.uint8)
        batches = EpochBatches(len(images), args.batch_size, t.seed)
        gen = torch.Generator().manual_seed(0)
        state = {"k": 0}
        objective = objective_for(config, model.sigmas)

        def step():
            x = prepare_batch(images[batches.indices(state["k"])], gen, config.data.random_flip, config.data.dequantize)
            sigma = objective.draw_sigma(args.batch_size, gen)
            noise = torch.randn(x.shape, generator=gen)
            train_step(net, model, optimizer, x, sigma, noise, objective, t, runtime=runtime).item()
            state["k"] += 1

        return step, 1, {**extra, "precision": runtime.precision, "channels_last": runtime.channels_last}
    model.eval()
    runtime = resolve(RuntimeOptions(), model, device, (args.batch_size, *shape), training=False)
    score = score_function(model, runtime, device)
    gen = torch.Generator().manual_seed(0)
    x0 = uniform_init((args.batch_size, *shape), generator=gen)
    levels = model.sigmas[: args.levels]
    s = config.sampling.ald

    def chain():
        annealed_langevin(score, x0, levels, 1, s.step_lr, False, s.convention, generator=gen)

    return chain, len(levels), {**extra, "precision": runtime.precision, "channels_last": runtime.channels_last}


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    side, job = args.worker
    load_before = os.getloadavg()[0]
    build = time.perf_counter()
    fn, evaluations, extra = (reference_worker if side == "reference" else ncsn_worker)(args, job)
    build = time.perf_counter() - build
    repeats = args.train_steps if job == "train" else args.sampler_calls
    start = time.perf_counter()
    fn()
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    per = [t / evaluations for t in times]  # per training step, or per network evaluation of the sampler
    a, b = (torch.randn(args.matmul_size, args.matmul_size) for _ in range(2))
    a @ b
    products = []
    for _ in range(2):
        start = time.perf_counter()
        a @ b
        products.append(time.perf_counter() - start)
    rate = 2 * args.matmul_size**3 / min(products) / 1e9
    print(json.dumps({
        "side": side, "job": job, "seconds": per, "median": statistics.median(per), "warmup_seconds": warm,
        "setup_seconds": build, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "matmul_gflop_per_s": rate, "torch_threads": torch.get_num_threads(),
        "load_average_1min": [load_before, os.getloadavg()[0]], **extra,
    }))


# ---- the parent: alternate the processes and sum up ---------------------------------------------------------


def run_child(args, side: str, job: str) -> dict:
    cmd = [sys.executable, __file__, "--reference", str(args.reference), "--worker", side, job,
           "--train-steps", str(args.train_steps), "--sampler-calls", str(args.sampler_calls),
           "--levels", str(args.levels), "--batch-size", str(args.batch_size), "--matmul-size", str(args.matmul_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} {job} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["stderr"] = [line for line in proc.stderr.splitlines() if line.startswith(("precision", "warning"))]
    gflop = (args.gflop_train if job == "train" else args.gflop_eval) * args.batch_size / 128  # counted at 128
    row["fraction_of_floor"] = gflop / row["matmul_gflop_per_s"] / row["median"]
    print(f"{side:9s} {job:6s} median {row['median']:.3f} s  peak RSS {row['peak_rss_mib']:.0f} MiB  "
          f"floor fraction {row['fraction_of_floor']:.2f}  "
          f"load {row['load_average_1min'][0]:.1f}->{row['load_average_1min'][1]:.1f}", file=sys.stderr, flush=True)
    return row


def summary(rows: list[dict], args) -> dict:
    out = {}
    for job in args.jobs:
        mine = {side: [r for r in rows if r["job"] == job and r["side"] == side] for side in SIDES}
        medians = {side: [r["median"] for r in mine[side]] for side in SIDES}
        out[job] = {
            "unit": "seconds per training step" if job == "train" else "seconds per network evaluation",
            "median_per_round": medians,
            "ncsn_speedup_per_round": [ref / new for ref, new in zip(medians["reference"], medians["ncsn"])],
            "peak_rss_mib": {side: [round(r["peak_rss_mib"]) for r in mine[side]] for side in SIDES},
            "matmul_gflop_per_s": {side: [round(r["matmul_gflop_per_s"], 1) for r in mine[side]] for side in SIDES},
            "fraction_of_floor": {side: [round(r["fraction_of_floor"], 3) for r in mine[side]] for side in SIDES},
            "ncsn_defaults": {k: mine["ncsn"][0][k] for k in ("precision", "channels_last")} if mine["ncsn"] else {},
        }
    return out


def main() -> None:
    args = options()
    if args.worker:
        return worker(args)
    import torch

    start, rows = time.perf_counter(), []
    for round_index in range(args.rounds):
        sides = SIDES if round_index % 2 == 0 else SIDES[::-1]
        for job in args.jobs:
            for side in sides:
                rows.append({**run_child(args, side, job), "round": round_index})
    print(json.dumps({
        "benchmark": "reference_side_by_side",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cpu": _cpu_model()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "reference")}
        | {"reference": str(args.reference), "reference_commit": _commit(args.reference)},
        "summary": summary(rows, args),
        "processes": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }, indent=2))


def _cpu_model() -> str:
    from ncsn.autotune import cpu_info

    return cpu_info()[0]


def _commit(ref: Path) -> str | None:
    proc = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    main()
