"""The digits demo's report: the samples' classifier FID and score beside real held-out digits and beside a
Gaussian-mixture baseline fitted in the same run, nearest training images, and the class shares.

A generative model is worth showing only if it beats a simple density model of the same data; the mixture (full
covariances, fitted on the same training digits in a few seconds) is that yardstick.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import DataConfig, load_split
from .evaluation import digits_quality, evaluate_samples

GMM_COMPONENTS = (10, 30)


def gmm_samples(train: torch.Tensor, n: int, components: int, seed: int = 0) -> torch.Tensor:
    """``n`` uint8 images (N, C, H, W) from a full-covariance Gaussian mixture fitted on uint8 training images."""
    from sklearn.mixture import GaussianMixture

    flat = train.flatten(1).double().numpy() / 255.0
    gmm = GaussianMixture(n_components=components, covariance_type="full", random_state=seed).fit(flat)
    drawn, _ = gmm.sample(n)
    drawn = np.random.default_rng(seed).permutation(drawn)  # sklearn returns the draws grouped by component
    images = torch.from_numpy(np.clip(drawn, 0.0, 1.0) * 255.0).round().to(torch.uint8)
    return images.view(n, *train.shape[1:])


def _figures(samples: torch.Tensor, data: DataConfig, out_dir: Path | None) -> dict:
    metrics = ["cfid", "cscore"] + (["nn"] if out_dir is not None else [])
    m = evaluate_samples(samples, metrics, data, out_dir=out_dir)["metrics"]
    row = {"cfid": m["cfid"]["samples"], "cfid_at_test_n": m["cfid"].get("samples_at_test_n"),
           "cscore": m["cscore"]["samples"], "n": len(samples)}
    if "nn" in m:
        row["nn_median"] = m["nn"]["samples_nearest"]["median"]
        row["nn_min"] = m["nn"]["samples_nearest"]["min"]
        row["nn_p10"] = m["nn"]["samples_nearest"]["p10"]
        row["nn_p_closer"] = m["nn"]["closeness"]["p_samples_closer"]
        row["nn_prob_farther"] = m["nn"]["closeness"]["prob_sample_farther"]
    return row, m


def sample_figures(samples: np.ndarray, data: DataConfig, out_dir: str | Path) -> dict:
    """Classifier FID and score and nearest-training distances of uint8 samples (N, H, W, C); the PNG to ``out_dir``."""
    images = torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).contiguous()
    return _figures(images, data, Path(out_dir))[0]


def demo_report(samples: np.ndarray, data: DataConfig, out_dir: str | Path, seed: int = 0) -> dict:
    """Figures for uint8 samples (N, H, W, C): the model's, the mixtures' and the real held-out digits'."""
    out_dir = Path(out_dir)
    images = torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).contiguous()
    model, m = _figures(images, data, out_dir)
    real = {"cfid_at_test_n": m["cfid"]["real_test"], "cscore": m["cscore"]["real_test"], "n": m["cfid"]["n_test"],
            "nn_median": m["nn"]["real_test_nearest"]["median"], "nn_min": m["nn"]["real_test_nearest"]["min"],
            "nn_p10": m["nn"]["real_test_nearest"]["p10"],
            "nn_median_interval": m["nn"]["closeness"]["real_median_interval"],
            "classifier_test_accuracy": m["classifier"]["test_accuracy"]}
    train = load_split(data, "train").images
    baselines = {f"gmm_{k}": _figures(gmm_samples(train, len(images), k, seed), data, None)[0] for k in GMM_COMPONENTS}
    shares = digits_quality(samples, seed=seed)
    return {
        "samples": model, "real_test": real, "baselines": baselines, "nn_png": m["nn"]["png"],
        "class_shares": shares["class_shares"], "max_share_deviation": shares["max_share_deviation"],
        "logistic_confidence": {"samples": shares["sample_confidence"], "real_test": shares["real_confidence"]},
        "beats_baselines": all(model["cfid"] < b["cfid"] for b in baselines.values()),
    }


def format_report(report: dict) -> str:
    """The summary table the demo prints."""
    rows = [("samples", report["samples"])]
    rows += [(f"Gaussian mixture, {k.split('_')[1]} components", v) for k, v in report["baselines"].items()]
    r = report["real_test"]
    n, n_test = report["samples"]["n"], r["n"]
    lines = [f"{'':34s} {'classifier FID':>15s} {f'FID at N={n_test}':>13s} {'classifier score':>17s}"]
    for name, v in rows:
        at = v["cfid_at_test_n"]
        lines.append(f"{name:34s} {v['cfid']:15.2f} {'' if at is None else f'{at:.2f}':>13s} {v['cscore']:17.2f}")
    lines.append(f"{'real held-out digits':34s} {'-':>15s} {r['cfid_at_test_n']:13.2f} {r['cscore']:17.2f}")
    s = report["samples"]
    lines.append(f"(FID against the training split, N = {n}; lower is better; score out of 10, higher is better)")
    lines.append(f"nearest training image, L2 median / 10th percentile: samples {s['nn_median']:.3f} / "
                 f"{s.get('nn_p10', float('nan')):.3f}, real held-out {r['nn_median']:.3f} / {r.get('nn_p10', float('nan')):.3f} "
                 f"(copies of training images would pull the samples' low tail well below the real one)")
    if "nn_p_closer" in s:
        lo, hi = r["nn_median_interval"]
        lines.append(f"  real median 95 % interval {lo:.3f}-{hi:.3f}; P(sample farther than a real digit) "
                     f"{s['nn_prob_farther']:.3f} (0.5 = alike); one-sided Mann-Whitney p(samples closer) "
                     f"{s['nn_p_closer']:.3g}")
    lines.append("class shares 0-9: " + " ".join(f"{v:.3f}" for v in report["class_shares"]))
    d = report.get("deterministic")
    if d is not None:
        lines.append(f"deterministic sampler ({d['sampler']}, {d['nfe']} NFE, same seed): classifier FID {d['cfid']:.2f}, "
                     f"score {d['cscore']:.2f}, nearest training image median {d['nn_median']:.3f}")
    return "\n".join(lines)
