"""`ncsn eval`: sample a model and measure it (IS/FID/KID, classifier FID/score, held-out loss, nearest neighbours)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import distributed
from ..checkpoint import CheckpointError, load_score_model, sweep_checkpoints
from ..errors import InputError
from ..evaluation import evaluate_samples, parse_metrics, pick_best, sweep_metric, write_sweep
from ..evaluation.fidelity import resolve_inception_weights
from ..evaluation.reference import read_samples
from ..evaluation.report import INCEPTION, default_n, headline
from .option_groups import n_option, out_option, output_options
from .options import user_errors, write_json
from .sample import resolved_sampling, sample_to_folder, sampling_options


def _files_dir(out: Path) -> Path:
    """The folder beside FILE.json for its samples and pictures: FILE/."""
    return out.with_suffix("") if out.suffix == ".json" else out.with_name(out.name + "_files")


def _sweep(workdir, n, seed, folder, dist_info, load, evaluate, runtime) -> Path:
    """FID on ``n`` samples (same seed) for every checkpoint; rank 0 writes the table, every rank returns the best."""
    found = sweep_checkpoints(workdir)  # slim snapshots where the run made them, full checkpoints otherwise
    if not found:
        raise CheckpointError(f"--sweep: no checkpoints/snapshot_*.pt or checkpoint_*.pt in {workdir}")
    rows = []
    for step, path in found:
        model, config, info = load(path)
        metric = sweep_metric(config.data.dataset)
        step_dir = folder / f"step_{step:08d}"
        summary = sample_to_folder(model, config, info, n, seed, step_dir, dist_info, runtime=runtime)
        if dist_info.is_main:
            samples = read_samples(step_dir / "samples.npz")
            start = time.perf_counter()
            report = evaluate(samples, [metric], config, model, step_dir)
            fid = headline(report, metric)
            rows.append({"step": step, "fid": fid, "metric": metric, "n": n, "checkpoint": str(path),
                         "seconds": round(summary["seconds"] + time.perf_counter() - start, 2)})
            click.echo(f"sweep: step {step}: {metric} {fid:.4f}")
    best = None
    if dist_info.is_main:
        best = pick_best(rows)
        paths = write_sweep(folder, rows, best)
        click.echo(f"sweep: best step {best['step']} ({best['metric']} {best['fid']:.4f}); table {paths['csv']}")
    return Path(distributed.broadcast_from_main(best["checkpoint"] if best else None))  # no shared files needed


@click.command("eval")
@sampling_options
@output_options(
    n=n_option(None, "Samples to generate [default: 50,000 for RGB data (the paper), 10,000 for grey-scale].",
               minimum=2, torchrun=True),
    out=out_option("file", "Report FILE.json; samples, grids and plots go to the folder FILE/ beside it."),
)
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated: is,fid,kid (Inception), cfid,cscore (small classifier, grey-scale data), loss, "
                   "nn [default: is,fid,kid,loss,nn for RGB data; cfid,cscore,loss,nn for grey-scale].")
@click.option("--samples", "samples_file", type=click.Path(exists=True, dir_okay=False),
              help="Evaluate this samples.npz (uint8 NxHxWxC) instead of sampling.")
@click.option("--inception-weights", type=click.Path(dir_okay=False),
              help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth [default: torch hub cache/download].")
@click.option("--loss-images", type=click.IntRange(min=1), default=None, help="Test images for `loss` [default: all].")
@click.option("--nn-k", type=click.IntRange(1, 20), default=5, help="Training neighbours shown per sample for `nn`.")
@click.option("--sweep", is_flag=True, help="First pick the checkpoint of --workdir with the lowest FID on --sweep-n.")
@click.option("--sweep-n", type=click.IntRange(min=2), default=1000, help="Samples per checkpoint in the sweep.")
@user_errors
def eval_command(source, device, runtime, sampler, output, metrics, samples_file,
                 inception_weights, loss_images, nn_k, sweep, sweep_n):
    """Sample N images (sharded under torchrun) and measure them against the dataset's training split."""
    n, seed, out = output.n, output.seed, output.out
    if sweep and not source.workdir:
        raise click.UsageError("--sweep needs --workdir (it compares the run's checkpoints)")
    if sweep and samples_file:
        raise click.UsageError("--sweep samples every checkpoint itself; drop --samples")
    files = _files_dir(out)
    dist_info = distributed.setup(device)

    def load(path):
        model, config, info = load_score_model(path, device=dist_info.device, **source.load_kwargs())
        return model, resolved_sampling(config, sampler, output.batch_size), info

    model, config, info = load(source.path)
    wanted = parse_metrics(metrics, config.data.dataset)
    if INCEPTION & set(wanted) or (sweep and sweep_metric(config.data.dataset) == "fid"):
        resolve_inception_weights(inception_weights)  # fail before sampling, not after

    def evaluate(samples, names, cfg, score_model, folder):
        return evaluate_samples(
            samples, names, cfg.data, score_model=score_model, anneal_power=cfg.training.anneal_power,
            device=dist_info.device, seed=seed, loss_images=loss_images, inception_weights=inception_weights,
            out_dir=folder, nn_k=nn_k,
        )

    selected = None
    if sweep:
        selected = _sweep(source.workdir, sweep_n, seed, files / "sweep", dist_info, load, evaluate, runtime)
        model, config, info = load(selected)
    n = n or default_n(config.data.dataset)
    sampling = {}
    if samples_file is None:
        sampling = sample_to_folder(model, config, info, n, seed, files, dist_info, runtime=runtime)
        samples_file = files / "samples.npz"
    if not dist_info.is_main:
        distributed.cleanup()
        return
    samples = read_samples(samples_file)
    expected = (config.model.in_channels, config.data.image_size, config.data.image_size)
    if tuple(samples.shape[1:]) != expected:
        raise InputError(f"{samples_file}: samples of shape {tuple(samples.shape[1:])}, the model makes {expected}")
    report = evaluate(samples, wanted, config, model, files)
    report["seconds"] = {"sampling": round(sampling.get("seconds", 0.0), 3), **report["seconds"]}
    result = {
        "source": str(selected or source.path), "weights": info["weights"], "step": info.get("step"),
        "dataset": config.data.dataset, "image_size": config.data.image_size, "n": len(samples), "seed": seed,
        "samples": str(samples_file), "sampling": sampling, "sweep": str(files / "sweep" / "sweep.json") if sweep else None,
        **report,
    }
    write_json(out, result)
    for name in wanted:
        click.echo(f"{name}: {_describe(name, report['metrics'][name])}  ({report['seconds'].get(name, 0):.1f}s)")
    click.echo(f"report: {out}")
    distributed.cleanup()


def _describe(name: str, value: dict) -> str:
    if name in ("is", "kid"):
        return f"{value['mean']:.4f} +- {value['std']:.4f}"
    if name == "fid":
        return f"{value['samples']:.3f} ({value['n_samples']} samples vs {value['n_reference']} training images)"
    if name in ("cfid", "cscore"):
        return f"samples {value['samples']:.3f}, real held-out {value['real_test']:.3f}"
    if name == "loss":
        return f"mean {value['mean']:.4f} over {len(value['per_level'])} levels ({value['n_images']} test images)"
    return (f"nearest-training-image L2 median {value['samples_nearest']['median']:.3f} (real held-out "
            f"{value['real_test_nearest']['median']:.3f}); {value['png']}")
