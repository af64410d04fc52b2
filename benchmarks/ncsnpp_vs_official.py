"""NCSN++ against Score-SDE's own model (yang-song/score_sde_pytorch, Apache-2.0) on the same weights.

    git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch
    python benchmarks/ncsnpp_vs_official.py --reference /tmp/score_sde_pytorch

The reference is imported at run time from ``--reference``; nothing of it is copied here. Its ``op`` package
compiles a CUDA extension when imported, so a stand-in ``op`` module is put in ``sys.modules`` first, holding the
reference's own native (pure PyTorch) ``upfirdn2d_native`` read from ``op/upfirdn2d.py`` (the path it takes on the
CPU anyway). Its configs are ``ml_collections`` objects; a namespace with the same attributes stands in.

Per config, both models are built, every official tensor (re-drawn at a seeded DDPM-like scale, so that no layer
is the near-zero identity it starts as) is copied into ncsn's ``ScoreModel`` by name, and the two scores
(output divided by sigma) are compared in float32 in eval mode on seeded images in [0, 1]: continuous models at
log-spread sigmas, the discrete one at ladder levels; then the gradients of one seeded linear functional of the
score with respect to every parameter, by name. Prints JSON: parameter counts, the largest absolute difference of
the scores and the relative one (largest difference over the largest official value, and the L2 ratio), and the
largest gradient difference over the largest gradient.

``--write-tiny FILE`` instead writes the official model's weights and scores for three tiny variants (nf 8, 8 px,
one block per level: residual/none, input_skip/output_skip, and the discrete one), which
``tests/test_ncsnpp.py`` checks ncsn against without the reference at hand (tests/data/ncsnpp_official_tiny.pt).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ncsn.score_model import ModelConfig, NCSNppConfig, build_score_model

VE = dict(resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
          resblock_type="biggan", progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16,
          conv_size=3, nonlinearity="swish", normalization="GroupNorm", scale_by_sigma=True, embedding_type="fourier",
          sigma_min=0.01, sigma_max=50.0, num_scales=1000, attn_resolutions=(16,))
CIFAR = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, dropout=0.1, progressive="none",
             progressive_input="residual")
STYLE_256 = dict(ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, dropout=0.0, progressive="output_skip",
                 progressive_input="input_skip", sigma_max=348.0, num_scales=2000)
CONFIGS = {
    "cifar10_continuous": dict(image_size=32, **CIFAR),
    "cifar10_deep_continuous": dict(image_size=32, **{**CIFAR, "num_res_blocks": 8}),
    "cifar10_discrete": dict(image_size=32, **CIFAR, embedding_type="positional"),
    # the 256 px layout (input_skip / output_skip) scaled to 32 px: nf 32, six levels
    "style256_small": dict(image_size=32, nf=32, **{**STYLE_256, "ch_mult": (1, 1, 2, 2, 2, 2)}),
    "small_cat": dict(image_size=16, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0, attn_resolutions=(8,),
                      progressive="output_skip", progressive_input="input_skip", progressive_combine="cat",
                      num_scales=10),
    "ffhq256": dict(image_size=256, nf=128, **STYLE_256),
}
TINY_BASE = dict(image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 num_scales=10, progressive="none", progressive_input="residual")
TINY = {
    "residual": TINY_BASE,
    "skip": {**TINY_BASE, "progressive": "output_skip", "progressive_input": "input_skip"},
    "discrete": {**TINY_BASE, "embedding_type": "positional"},
}
DEFAULT = ["cifar10_continuous", "cifar10_deep_continuous", "cifar10_discrete", "style256_small", "small_cat"]


def options() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="folder of a score_sde_pytorch checkout (models/, op/, ...)")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=DEFAULT,
                   help="configs to compare (ffhq256 is the full 256 px model: slow on a CPU)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads [default: torch's]")
    p.add_argument("--write-tiny", type=Path, default=None, metavar="FILE",
                   help="write the official tiny variants' weights and scores to FILE instead of comparing")
    return p.parse_args()


def stub_op(reference: Path) -> None:
    """``op`` with the reference's native upfirdn2d, read from its source (the CUDA build is never attempted)."""
    source = (reference / "op" / "upfirdn2d.py").read_text()
    tree = ast.parse(source)
    native = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "upfirdn2d_native")
    module = types.ModuleType("op")
    module.__dict__.update(torch=torch, F=F)
    exec(compile(ast.Module(body=[native], type_ignores=[]), str(reference / "op" / "upfirdn2d.py"), "exec"),
         module.__dict__)

    def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):  # the reference's CPU dispatch
        return module.upfirdn2d_native(x, kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])

    module.upfirdn2d = upfirdn2d
    sys.modules["op"] = module


def official_config(settings: dict) -> SimpleNamespace:
    model = {**VE, **{k: v for k, v in settings.items() if k != "image_size"}}
    return SimpleNamespace(
        model=SimpleNamespace(**model),
        data=SimpleNamespace(image_size=settings["image_size"], num_channels=3, centered=False),
        training=SimpleNamespace(continuous=model["embedding_type"] == "fourier"),
    )


def ncsn_config(settings: dict) -> ModelConfig:
    s = {**VE, **settings}
    return ModelConfig(
        arch="ncsnpp", in_channels=3, ngf=s["nf"], sigma_max=s["sigma_max"], sigma_min=s["sigma_min"],
        num_scales=s["num_scales"], scale_by_sigma=True,
        ncsnpp=NCSNppConfig(
            image_size=s["image_size"], ch_mult=list(s["ch_mult"]), num_res_blocks=s["num_res_blocks"],
            attn_resolutions=list(s["attn_resolutions"]), dropout=s["dropout"], progressive=s["progressive"],
            progressive_input=s["progressive_input"], progressive_combine=s["progressive_combine"],
            embedding=s["embedding_type"], fourier_scale=float(s["fourier_scale"]),
            fir_kernel=[float(v) for v in s["fir_kernel"]], skip_rescale=s["skip_rescale"], init_scale=s["init_scale"],
        ),
    )


def redraw_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every tensor at an O(1)-activation scale: matrices uniform at DDPM's fan-avg bound, vectors N(0, 0.1²)
    (GroupNorm scales around 1); the Fourier frequencies keep their draw."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("0.W") and p.dim() == 1:
                continue
            if p.dim() >= 2:
                receptive = p[0, 0].numel() if p.dim() > 2 else 1
                bound = math.sqrt(3 / ((p.shape[0] + p.shape[1]) * receptive / 2))
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            else:
                base = 1.0 if "GroupNorm" in name or (name.split(".")[-1] == "weight" and p.dim() == 1) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=generator))


def official_model(settings: dict, seed: int) -> torch.nn.Module:
    from models.ncsnpp import NCSNpp as Official  # the reference, on sys.path

    torch.manual_seed(seed)
    official = Official(official_config(settings)).eval()
    redraw_(official, torch.Generator().manual_seed(seed))
    return official


def inputs(settings: dict, batch: int, seed: int, ladder: torch.Tensor):
    """Seeded images in [0, 1], their sigmas, and what the official model takes (sigma, or the ladder index)."""
    g = torch.Generator().manual_seed(seed + 1)
    size = settings["image_size"]
    x = torch.rand(batch, 3, size, size, generator=g)
    if settings.get("embedding_type", "fourier") == "fourier":
        sigma = torch.exp(torch.empty(batch).uniform_(math.log(0.01), math.log(50.0), generator=g))
        return x, sigma, sigma
    labels = torch.randint(0, len(ladder), (batch,), generator=g)
    return x, ladder[labels].float(), labels


def write_tiny(path: Path, seed: int) -> None:
    out = {}
    for name, settings in TINY.items():
        official = official_model(settings, seed)
        weights = official.state_dict()
        x, sigma, cond = inputs(settings, 3, seed, weights["sigmas"])
        with torch.no_grad():
            score = official(x, cond).float()
        out[name] = {"state": {k: v.clone() for k, v in weights.items()}, "x": x, "sigma": sigma, "score": score}
    torch.save(out, path)
    print(json.dumps({"wrote": str(path), "variants": sorted(out)}))


def compare(name: str, settings: dict, batch: int, seed: int) -> dict:
    official = official_model(settings, seed)
    ours = build_score_model(ncsn_config(settings)).eval()
    weights = official.state_dict()
    ours.net.load_state_dict({k: v for k, v in weights.items() if k != "sigmas"}, strict=True)
    ladder_rel = float(((ours.sigmas.double() - weights["sigmas"].double()).abs() / weights["sigmas"].double()).max())

    size = settings["image_size"]
    x, sigma, cond = inputs(settings, batch, seed, weights["sigmas"])
    # the discrete model takes the ladder index; ncsn's wrapper maps sigma back to it
    t0 = time.perf_counter()
    ref = official(x, cond)
    t1 = time.perf_counter()
    out = ours(x, sigma)
    t2 = time.perf_counter()
    # gradients of one fixed linear functional of the score, per parameter name, as training would take them
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 2))
    (ref.float() * probe).sum().backward()
    (out * probe).sum().backward()
    named = dict(ours.net.named_parameters())
    pairs = [(p.grad.double(), named[n].grad.double()) for n, p in official.named_parameters() if p.grad is not None]
    grad_diff = max(float((a - b).abs().max()) for a, b in pairs)
    grad_max = max(float(a.abs().max()) for a, _ in pairs)
    ref, out = ref.detach().double(), out.detach()
    diff = (out.double() - ref).abs()
    return {
        "config": name, "image_size": size, "batch": batch,
        "parameters": {"official": sum(p.numel() for p in official.parameters()),
                       "ncsn": sum(p.numel() for p in ours.parameters())},
        "state_dict_entries": {"official": len(weights), "ncsn": len(ours.state_dict())},
        "ladder_max_rel_diff": ladder_rel,
        "max_abs_diff": float(diff.max()), "max_abs_official": float(ref.abs().max()),
        "rel_diff_max": float(diff.max() / ref.abs().max()),
        "rel_diff_l2": float(diff.norm() / ref.norm()),
        "grad_tensors": len(pairs), "grad_max_abs_diff": grad_diff, "grad_rel_diff_max": grad_diff / grad_max,
        "seconds": {"official": round(t1 - t0, 3), "ncsn": round(t2 - t1, 3)},
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    args = options()
    if args.threads:
        torch.set_num_threads(args.threads)
    reference = Path(args.reference).resolve()
    if not (reference / "models" / "ncsnpp.py").is_file():
        sys.exit(f"--reference {reference}: no models/ncsnpp.py there (a score_sde_pytorch checkout is needed)")
    stub_op(reference)
    sys.path.insert(0, str(reference))
    if args.write_tiny:
        write_tiny(args.write_tiny, args.seed)
        return
    results = [compare(name, CONFIGS[name], args.batch_size, args.seed) for name in args.configs]
    print(json.dumps({"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
