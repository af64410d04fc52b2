"""Count the arithmetic of one training step and one network evaluation, and the least time this device needs
for it: the floor that any speed-up of the library is bounded by. Prints JSON.

    python benchmarks/compute_floor.py --config fashion_mnist
    python benchmarks/compute_floor.py --config cifar10 --device cuda

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, forward and backward; the
elementwise work is not counted). The rate is the device's float32 matrix-multiply throughput on a large square
product (median of the repeats). floor = FLOPs / rate: every convolution as fast as the best matmul, all else free.
"""

from __future__ import annotations

import json
import statistics

import torch
from common import machine, parser, setup, timed
from torch.utils.flop_counter import FlopCounterMode

from ncsn.score_model import build_score_model
from ncsn.training import make_optimizer, train_step


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(device: torch.device, repeats: int, size: int = 4096) -> float:
    """float32 FLOP/s of a size x size matrix product (plain float32: PyTorch keeps TF32 off for matmuls by default)."""
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    _, times = timed(lambda: a @ b, device, max(repeats, 3), warmup=1)
    return 2 * size**3 / statistics.median(times)


def main() -> None:
    args = parser(__doc__).parse_args()
    config, _, device, batch, _ = setup(args)
    torch.manual_seed(0)
    model = build_score_model(config.model).to(device)
    optimizer = make_optimizer(model, config.training)
    shape = (batch, config.model.in_channels, config.data.image_size, config.data.image_size)
    x, noise = torch.rand(shape, device=device), torch.randn(shape, device=device)
    labels = torch.randint(0, model.num_scales, (batch,), device=device)
    step = counted_flops(lambda: train_step(model, model, optimizer, x, labels, noise, model.sigmas, config.training))
    with torch.no_grad():
        forward = counted_flops(lambda: model.at_levels(x, labels))
    rate = matmul_rate(device, args.repeats)
    print(json.dumps({
        "benchmark": "compute_floor",
        "machine": machine(device),
        "config": {"name": args.config, "overrides": args.overrides, "ngf": config.model.ngf,
                   "image_shape": shape[1:], "batch_size": batch, "device": str(device)},
        "gflop_per_train_step": round(step / 1e9, 1),
        "gflop_per_network_evaluation": round(forward / 1e9, 1),
        "matmul_gflop_per_s": round(rate / 1e9, 1),
        "floor_seconds_per_train_step": round(step / rate, 3),
        "floor_seconds_per_network_evaluation": round(forward / rate, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
