"""One evaluation of a sample set: the requested metrics, each with the time it took.

Metric names: ``is``, ``fid``, ``kid`` (torch-fidelity's Inception, FID/KID against the training split), ``cfid`` and
``cscore`` (the small classifier of grey-scale data: FID in its feature space and the IS formula with its
predictions, each next to the same figure for real held-out images), ``loss`` (held-out DSM loss per level) and
``nn`` (nearest training images).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data import DATASETS, DataConfig, load_split
from ..errors import InputError
from .classifier import classifier_outputs, classifier_reference, get_classifier
from .fidelity import inception_features, inception_metrics, inception_reference, resolve_inception_weights
from .heldout import heldout_dsm_loss
from .metrics import classifier_score, fid_of_features
from .neighbours import neighbour_report

METRICS = ("is", "fid", "kid", "cfid", "cscore", "loss", "nn")
INCEPTION = frozenset({"is", "fid", "kid"})
CLASSIFIER = frozenset({"cfid", "cscore"})


def is_grey(dataset: str) -> bool:
    return DATASETS[dataset].channels == 1


def default_metrics(dataset: str) -> list[str]:
    """Grey-scale data: the classifier metrics (Inception features say little there); RGB: the paper's IS/FID/KID."""
    return ["cfid", "cscore", "loss", "nn"] if is_grey(dataset) else ["is", "fid", "kid", "loss", "nn"]


def default_n(dataset: str) -> int:
    """50,000 samples for RGB data (the paper's CIFAR-10 protocol), 10,000 for grey-scale data."""
    return 10_000 if is_grey(dataset) else 50_000


def sweep_metric(dataset: str) -> str:
    """The FID that selects checkpoints: the classifier's for grey-scale data, Inception's for RGB."""
    return "cfid" if is_grey(dataset) else "fid"


def parse_metrics(text: str | None, dataset: str) -> list[str]:
    """A comma-separated list of metric names, checked against the dataset; None gives the dataset's default."""
    if text is None:
        return default_metrics(dataset)
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise InputError(f"--metrics: unknown {unknown or 'empty list'}; choose from {','.join(METRICS)}")
    if not is_grey(dataset) and CLASSIFIER & set(names):
        raise InputError(f"--metrics: cfid and cscore are for grey-scale data; {dataset} is RGB (use is,fid,kid)")
    return list(dict.fromkeys(names))


def headline(report: dict, metric: str) -> float:
    """The single number of a metric in a report (the samples' value)."""
    return report["metrics"][metric]["mean" if metric in ("is", "kid", "loss") else "samples"]


def evaluate_samples(
    samples: torch.Tensor, metrics: list[str], data: DataConfig, *, score_model=None, anneal_power: float = 2.0,
    device="cpu", seed: int = 0, loss_images: int | None = None, inception_weights: str | Path | None = None,
    out_dir: str | Path | None = None, nn_k: int = 5, kid_subset_size: int = 1000,
) -> dict:
    """Compute ``metrics`` for uint8 (N, C, H, W) samples; returns {"metrics": {...}, "seconds": {...}}.

    ``score_model`` is needed for ``loss``; ``out_dir`` for ``nn`` (its PNG goes there).
    """
    wanted, results, seconds = set(metrics), {}, {}

    def timed(key, fn):
        start = time.perf_counter()
        value = fn()
        seconds[key] = round(time.perf_counter() - start, 3)
        return value

    if wanted & INCEPTION:
        weights = resolve_inception_weights(inception_weights)
        feats = timed("inception_samples", lambda: inception_features(samples, weights, device))
        reference = None
        if wanted & {"fid", "kid"}:
            reference = timed("inception_reference", lambda: inception_reference(data, "train", weights, device))
        for name in sorted(wanted & INCEPTION):
            results.update(timed(name, lambda n=name: inception_metrics(
                feats, {n}, reference, kid_subset_size=kid_subset_size, seed=seed)))
        results["inception"] = {"weights": str(weights), "reference": "train split"}

    if wanted & CLASSIFIER:
        model, info, path = timed("classifier", lambda: get_classifier(data, device))
        train_ref = timed("classifier_reference", lambda: classifier_reference(model, path, data, "train"))
        test_ref = classifier_reference(model, path, data, "test")
        mine = timed("classifier_samples", lambda: classifier_outputs(model, samples))
        results["classifier"] = {"path": str(path), "test_accuracy": info.test_accuracy,
                                 "train_seconds": info.train_seconds, "steps": info.steps}
        if "cfid" in wanted:
            results["cfid"] = timed("cfid", lambda: _classifier_fid(mine, train_ref, test_ref))
        if "cscore" in wanted:
            results["cscore"] = timed("cscore", lambda: {
                "samples": classifier_score(mine["probs"]), "real_test": classifier_score(test_ref["probs"]),
                "n_classes": info.n_classes, "n_samples": len(mine["probs"]), "n_test": len(test_ref["probs"])})

    if "loss" in wanted:
        if score_model is None:
            raise ValueError("the loss metric needs the score model")
        test = load_split(data, "test").images[:loss_images]
        results["loss"] = timed("loss", lambda: heldout_dsm_loss(
            score_model, test, score_model.sigmas, anneal_power, seed=seed, dequantize=data.dequantize, device=device))

    if "nn" in wanted:
        if out_dir is None:
            raise ValueError("the nn metric needs an output folder for its PNG")
        train, test = load_split(data, "train").images, load_split(data, "test").images
        results["nn"] = timed("nn", lambda: neighbour_report(samples, train, test, Path(out_dir) / "nn.png", nn_k))

    return {"metrics": results, "seconds": seconds}


def _classifier_fid(mine: dict, train_ref: dict, test_ref: dict) -> dict:
    """FID of the samples and of the real held-out images to the training split, and the samples' at the test size."""
    n, n_test = len(mine["features"]), len(test_ref["features"])
    out = {"samples": fid_of_features(mine["features"], train_ref["features"]),
           "real_test": fid_of_features(test_ref["features"], train_ref["features"]),
           "n_samples": n, "n_test": n_test, "n_train": len(train_ref["features"])}
    if n > n_test:  # FID is biased upwards at small N: this one compares like with like
        out["samples_at_test_n"] = fid_of_features(mine["features"][:n_test], train_ref["features"])
    return out
