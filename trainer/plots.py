"""Figures for TensorBoard: where people would rather look than read.

Figures are drawn with matplotlib's Agg backend (no display needed) and sent to every
TensorBoard logger of a trainer with :func:`log_figure`; other loggers are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["bar_figure", "heatmap_figure", "histogram_figure", "log_figure", "scatter_figure"]


def bar_figure(
    labels: Sequence[str],
    values: Sequence[float],
    title: str = "",
    ylabel: str = "",
    groups: Sequence[str] | None = None,
) -> Any:
    """A bar chart, one bar per label; bars are coloured by ``groups`` when given."""
    width = max(4.0, 0.35 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 3.2))
    colors = None
    if groups is not None:
        palette = plt.get_cmap("tab10")
        order = list(dict.fromkeys(groups))
        colors = [palette(order.index(g) % 10) for g in groups]
    ax.bar(range(len(values)), list(values), color=colors)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(list(labels), rotation=60, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if groups is not None:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=palette(i % 10), label=g) for i, g in enumerate(order)], fontsize=7)
    fig.tight_layout()
    return fig


def heatmap_figure(matrix: Any, labels: Sequence[str] | None = None, title: str = "", fmt: str = "{:.2f}") -> Any:
    """A square heatmap with the value written in every cell."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * m.shape[1], 0.8 + 0.6 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis")
    labels = list(labels) if labels is not None else [str(i) for i in range(m.shape[0])]
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xticklabels(labels[: m.shape[1]], fontsize=7)
    ax.set_yticklabels(labels[: m.shape[0]], fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", color="w", fontsize=7)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def scatter_figure(x: Sequence[float], y: Sequence[float], title: str = "", xlabel: str = "", ylabel: str = "") -> Any:
    """A scatter plot of ``y`` against ``x`` with the diagonal ``y = x`` for reference."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.scatter(list(x), list(y), s=6, alpha=0.5)
    if len(x):
        lo, hi = min(min(x), min(y)), max(max(x), max(y))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def histogram_figure(groups: dict[str, Sequence[float]], bins: int = 40, title: str = "", xlabel: str = "") -> Any:
    """Overlaid histograms, one per named group (empty groups are left out)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, values in groups.items():
        if len(values):
            ax.hist(list(values), bins=bins, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_figure(trainer: Any, tag: str, figure: Any, step: int | None = None) -> None:
    """Send ``figure`` to every TensorBoard logger of ``trainer`` (rank 0 only), then close it."""
    try:
        if trainer is not None and getattr(trainer, "is_global_zero", True):
            from lightning.pytorch.loggers import TensorBoardLogger

            for logger in getattr(trainer, "loggers", []):
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(tag, figure, global_step=trainer.global_step if step is None else step)
    finally:
        plt.close(figure)
