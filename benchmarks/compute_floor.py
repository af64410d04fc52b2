"""Count the arithmetic of one training step and one network evaluation, and the least time this device needs
for it: the floor that any speed-up of the library is bounded by. Prints JSON.

    python benchmarks/compute_floor.py --config fashion_mnist
    python benchmarks/compute_floor.py --config cifar10 --device cuda

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions and matrix products, forward and backward; the
elementwise work is not counted). The rates are the device's matrix-multiply throughput on a large square product
(median of the repeats), in float32 and in bf16. floor = FLOPs / rate: every convolution as fast as the best matmul
of that precision, all else free. On CPUs without native bf16 the bf16 rate is an emulation's, far below float32.
"""

from __future__ import annotations

import json
import statistics

import torch
from common import machine, parser, setup, timed
from torch.utils.flop_counter import FlopCounterMode

from ncsn.losses import objective_for
from ncsn.runtime import native_bf16
from ncsn.score_model import build_score_model
from ncsn.training import make_optimizer, train_step


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(device: torch.device, repeats: int, size: int = 4096, dtype=torch.float32) -> float:
    """FLOP/s of a size x size matrix product in ``dtype`` (float32 is plain float32: PyTorch keeps TF32 off for
    matmuls by default)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    _, times = timed(lambda: a @ b, device, max(repeats, 3), warmup=1)
    return 2 * size**3 / statistics.median(times)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--bf16-size", type=int, default=None,
                   help="side of the bf16 product [default: 4096 with native bf16, else 1024: an emulated bf16 "
                        "4096^2 product took ~20 minutes on a 2-core AVX2 CPU]")
    args = p.parse_args()
    config, _, device, batch, _ = setup(args)
    torch.manual_seed(0)
    model = build_score_model(config.model).to(device)
    optimizer = make_optimizer(model, config.training)
    shape = (batch, config.model.in_channels, config.data.image_size, config.data.image_size)
    x, noise = torch.rand(shape, device=device), torch.randn(shape, device=device)
    labels = torch.randint(0, model.num_scales, (batch,), device=device)
    objective = objective_for(config, model.sigmas)
    step = counted_flops(lambda: train_step(model, model, optimizer, x, model.sigmas[labels], noise, objective,
                                            config.training))
    with torch.no_grad():
        forward = counted_flops(lambda: model.at_levels(x, labels))
    rate = matmul_rate(device, args.repeats)
    bf16_size = args.bf16_size or (4096 if native_bf16(device) else 1024)
    bf16_rate = matmul_rate(device, args.repeats, size=bf16_size, dtype=torch.bfloat16)
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
        "bf16_matmul": {"size": bf16_size, "native_bf16": native_bf16(device)},
        "bf16_matmul_gflop_per_s": round(bf16_rate / 1e9, 1),
        "bf16_floor_seconds_per_train_step": round(step / bf16_rate, 3),
        "bf16_floor_seconds_per_network_evaluation": round(forward / bf16_rate, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
