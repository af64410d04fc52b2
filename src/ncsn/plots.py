"""Figures of the toy experiments, drawn with matplotlib's Agg backend (no display needed) from plain arrays."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .io import save_figure

DPI = 110


def _density_image(ax, density: np.ndarray, half_width: float, title: str) -> None:
    """A density on a square grid (rows = y, x varying fastest), origin at the bottom left."""
    extent = (-half_width, half_width, -half_width, half_width)
    ax.imshow(density, origin="lower", extent=extent, cmap="inferno")
    ax.set_title(title)
    ax.set_aspect("equal")


def _scatter(ax, points: np.ndarray, half_width: float, title: str) -> None:
    ax.scatter(points[:, 0], points[:, 1], s=1.5, alpha=0.6, linewidths=0)
    ax.set_xlim(-half_width, half_width)
    ax.set_ylim(-half_width, half_width)
    ax.set_aspect("equal")
    ax.set_title(title)


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    save_figure(path, fig, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def langevin_figure(
    density: np.ndarray, samples: dict[str, np.ndarray], titles: dict[str, str], half_width: float, path
) -> pathlib.Path:
    """Figure 3: the data density next to one scatter panel per sample set (titles keyed like ``samples``)."""
    fig, axes = plt.subplots(1, 1 + len(samples), figsize=(3.2 * (1 + len(samples)), 3.6), layout="constrained")
    _density_image(axes[0], density, half_width, "data density")
    for ax, (name, points) in zip(axes[1:], samples.items()):
        _scatter(ax, points, half_width, titles[name])
    return _save(fig, path)


def scores_figure(
    density: np.ndarray,
    arrow_points: np.ndarray,
    fields: dict[str, np.ndarray],
    high_density: np.ndarray,
    half_width: float,
    path,
) -> pathlib.Path:
    """Figure 2: the data density, then one quiver panel per score field; the dashed contour bounds the region
    counted as high density (``high_density`` is a boolean mask on the density's grid)."""
    fig, axes = plt.subplots(1, 1 + len(fields), figsize=(3.4 * (1 + len(fields)), 3.6), layout="constrained")
    _density_image(axes[0], density, half_width, "data density")
    axis = np.linspace(-half_width, half_width, density.shape[0])
    for ax, (title, field) in zip(axes[1:], fields.items()):
        ax.quiver(arrow_points[:, 0], arrow_points[:, 1], field[:, 0], field[:, 1], width=0.004)
        ax.contour(axis, axis, high_density.astype(float), levels=[0.5], colors="tab:red", linestyles="--")
        ax.set_xlim(-half_width, half_width)
        ax.set_ylim(-half_width, half_width)
        ax.set_aspect("equal")
        ax.set_title(title)
    return _save(fig, path)


def loss_curves_figure(curves: dict[str, np.ndarray], titles: dict[str, str], path) -> pathlib.Path:
    """Figure 1: one panel per loss curve against training step, each on its own y scale as in the paper."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.4), layout="constrained")
    for ax, (name, losses) in zip(np.atleast_1d(axes), curves.items()):
        ax.plot(np.arange(1, len(losses) + 1), losses, linewidth=0.6)
        ax.set_xlabel("iteration")
        ax.set_ylabel("SSM loss")
        ax.set_title(titles[name])
    return _save(fig, path)
