"""Time the annealed Langevin sampler on a batch and print JSON: steps/s and seconds for a full chain.

    python benchmarks/sampler.py --config fashion_mnist --batch-size 64 --steps-each 2 --repeats 3
    python benchmarks/sampler.py --config cifar10 --device cuda --compile --precision bf16 --full-chain

One timed call runs ``--steps-each`` Langevin steps at every noise level (one network evaluation on the whole
batch per step). The full chain (levels x the config's n_steps_each) is extrapolated from the measured rate, or
run and timed once with ``--full-chain``. Weights are freshly initialised: the speed does not depend on them.
"""

from __future__ import annotations

import json
import math
import time

import torch
from common import machine, parser, peak_memory, setup, spread, sync, timed

from ncsn.runtime import resolve, score_function
from ncsn.samplers import annealed_langevin, uniform_init
from ncsn.score_model import build_score_model


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps-each", type=int, default=2, help="Langevin steps per level in one timed call")
    p.add_argument("--full-chain", action="store_true", help="also run and time one full chain of the config")
    p.add_argument("--total-samples", type=int, default=None, help="also estimate the minutes for this many samples")
    args = p.parse_args()
    config, runtime, device, batch, warmup = setup(args)
    if args.batch_size is None:
        batch = config.sampling.batch_size
    s = config.sampling.ald
    torch.manual_seed(0)
    model = build_score_model(config.model).to(device).eval()
    shape = (batch, config.model.in_channels, config.data.image_size, config.data.image_size)
    runtime = resolve(runtime, model, device, shape, training=False)  # what `ncsn sample` would run
    score = score_function(model, runtime, device)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = uniform_init(shape, generator=gen, device=device)
    sigmas = model.sigmas

    def chain(steps_each: int) -> torch.Tensor:
        return annealed_langevin(score, x0, sigmas, steps_each, s.step_lr, s.denoise, s.convention, generator=gen)

    warm, times = timed(lambda: chain(args.steps_each), device, args.repeats, warmup)
    steps = len(sigmas) * args.steps_each
    rates = [steps / t for t in times]
    full_steps = len(sigmas) * s.n_steps_each
    report = {
        "benchmark": "sampler",
        "machine": machine(device),
        "config": {"name": args.config, "overrides": args.overrides, "ngf": config.model.ngf,
                   "batch_size": batch, "image_shape": shape[1:], "device": str(device), "compile": runtime.compile,
                   "precision": runtime.precision, "channels_last": runtime.channels_last,
                   "steps_per_call": steps, "full_chain_steps": full_steps},
        "warmup": {"calls": warmup, "seconds": round(warm, 3)},
        "steps_per_s": {k: round(v, 3) if isinstance(v, float) else v for k, v in spread(rates).items()},
        "images_x_steps_per_s": round(batch * spread(rates)["median"], 1),
        "full_chain_seconds_estimated": round(full_steps / spread(rates)["median"], 1),
    }
    if args.total_samples:
        chains = math.ceil(args.total_samples / batch)
        report["total_samples"] = args.total_samples
        report["total_minutes_estimated"] = round(chains * full_steps / spread(rates)["median"] / 60, 1)
    if args.full_chain:
        start = time.perf_counter()
        out = chain(s.n_steps_each)
        sync(device)
        report["full_chain_seconds_measured"] = round(time.perf_counter() - start, 1)
        report["full_chain_finite"] = bool(torch.isfinite(out).all().item())
    report.update(peak_memory(device))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
