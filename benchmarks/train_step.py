"""Time the library's training step (batch drawing + forward + backward + Adam + EMA) and print JSON.

    python benchmarks/train_step.py --config fashion_mnist --repeats 3
    python benchmarks/train_step.py --config cifar10 --device cuda --compile --precision bf16 --channels-last
    python benchmarks/train_step.py --config cifar10_ncsnpp --batch-size 8 --set training.activation_checkpointing=true

Images are random uint8 of the config's shape (the speed does not depend on the pixels, and no dataset is
needed). Reports images/s and seconds per step (median, min, max over the repeats) and peak memory.
"""

from __future__ import annotations

import json

import torch
from common import machine, parser, peak_memory, setup, spread, timed

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ncsn.data import prepare_batch
from ncsn.losses import objective_for
from ncsn.runtime import autotunes, cudnn_benchmark, prepare_model, resolve
from ncsn.score_model import build_score_model
from ncsn.training import EpochBatches, make_optimizer, train_step


def main() -> None:
    args = parser(__doc__).parse_args()
    config, runtime, device, batch, warmup = setup(args)
    t = config.training
    torch.manual_seed(0)
    model = build_score_model(config.model).to(device)
    model.net.activation_checkpointing = t.activation_checkpointing  # as ncsn.training does
    shape = (config.model.in_channels, config.data.image_size, config.data.image_size)
    runtime = resolve(runtime, model, device, (batch, *shape), training=True)  # what `ncsn train` would run
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, t)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_rate), use_buffers=True)  # as training
           if t.ema else None)
    objective = objective_for(config, model.sigmas)
    net = prepare_model(model, runtime, device)
    images = torch.randint(0, 256, (4 * batch, *shape), dtype=torch.uint8, device=device)
    batches = EpochBatches(len(images), batch, t.seed, device)
    gen = torch.Generator(device=device).manual_seed(0)
    state = {"step": 0}

    def step():
        x = prepare_batch(images[batches.indices(state["step"])], gen, config.data.random_flip, config.data.dequantize)
        sigma = objective.draw_sigma(batch, gen, device)
        noise = torch.randn(x.shape, generator=gen, device=device)
        state["loss"] = train_step(net, model, optimizer, x, sigma, noise, objective, t, ema, runtime=runtime)
        state["step"] += 1

    with cudnn_benchmark(autotunes(device)):  # as ncsn.training.train does
        warm, times = timed(step, device, args.repeats, warmup)
    print(json.dumps({
        "benchmark": "train_step",
        "machine": machine(device),
        "config": {"name": args.config, "overrides": args.overrides, "ngf": config.model.ngf, "image_shape": shape,
                   "batch_size": batch, "device": str(device), "compile": runtime.compile,
                   "precision": runtime.precision, "channels_last": runtime.channels_last,
                   "arch": config.model.arch, "objective": t.objective, "ema": t.ema,
                   "activation_checkpointing": t.activation_checkpointing,
                   "parameters": sum(p.numel() for p in model.parameters())},
        "warmup": {"calls": warmup, "seconds": round(warm, 3)},
        "seconds_per_step": {k: round(v, 4) if isinstance(v, float) else v for k, v in spread(times).items()},
        "images_per_s": {k: round(v, 1) if isinstance(v, float) else v
                         for k, v in spread([batch / s for s in times]).items()},
        "hours_for_config_n_iters": round(t.n_iters * spread(times)["median"] / 3600, 2),
        "final_loss_finite": bool(torch.isfinite(state["loss"]).item()),
        **peak_memory(device),
    }, indent=2))


if __name__ == "__main__":
    main()
