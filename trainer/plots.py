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

__all__ = [
    "bar_figure", "heatmap_figure", "histogram_figure", "image_grid", "lines_figure", "log_figure", "log_image", "log_text",
    "pareto_figure", "scatter_figure",
]  # fmt: skip


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


def heatmap_figure(
    matrix: Any, labels: Sequence[str] | None = None, title: str = "", fmt: str = "{:.2f}",
    col_labels: Sequence[str] | None = None,
) -> Any:  # fmt: skip
    """A heatmap with the value written in every cell; rows (and, unless ``col_labels`` is given, columns) take
    ``labels``."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * m.shape[1], 0.8 + 0.6 * m.shape[0]))
    im = ax.imshow(m, cmap="viridis")
    labels = list(labels) if labels is not None else [str(i) for i in range(m.shape[0])]
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xticklabels(list(col_labels) if col_labels is not None else labels[: m.shape[1]], fontsize=7)
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


def lines_figure(
    x: Sequence[float], series: dict[str, Sequence[float]], title: str = "", xlabel: str = "", ylabel: str = "",
    baseline: float | None = None,
) -> Any:  # fmt: skip
    """One line per named series over ``x`` (e.g. accuracy against severity per corruption), with an optional
    dashed horizontal ``baseline`` (e.g. the clean accuracy)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    cmap = plt.get_cmap("tab20")
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(list(x), list(ys), marker="o", ms=3, color=cmap(i % 20), label=name)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label="clean")
    ax.set_xticks(list(x))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def image_grid(rows: Sequence[Sequence[Any]], pad: int = 2) -> Any:
    """Tile ``rows`` of equally sized H×W×3 images (float in [0, 1] or uint8) into one uint8 image with ``pad``
    white pixels between tiles."""
    import numpy as np

    tiles = [[np.asarray(t) for t in row] for row in rows]
    if not tiles or not tiles[0]:
        raise ValueError("image_grid needs at least one row with one image")
    h, w = tiles[0][0].shape[:2]
    ncols = max(len(r) for r in tiles)
    out = np.full((len(tiles) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(tiles):
        for j, t in enumerate(row):
            if t.shape[:2] != (h, w):
                raise ValueError(f"image_grid: tile ({i}, {j}) is {t.shape[:2]}, expected {(h, w)}")
            u8 = t if t.dtype == np.uint8 else np.clip(np.rint(t * 255.0), 0, 255).astype(np.uint8)
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = u8 if u8.ndim == 3 else u8[..., None]
    return out


def log_image(trainer: Any, tag: str, image: Any, step: int | None = None) -> None:
    """Send an H×W×3 uint8 image to every TensorBoard logger of ``trainer`` (rank 0 only)."""
    for logger in _tensorboard_loggers(trainer):
        logger.experiment.add_image(tag, image, global_step=trainer.global_step if step is None else step,
                                    dataformats="HWC")  # fmt: skip


def log_text(trainer: Any, tag: str, text: str, step: int | None = None) -> None:
    """Send Markdown ``text`` (e.g. a table) to every TensorBoard logger of ``trainer`` (rank 0 only)."""
    for logger in _tensorboard_loggers(trainer):
        logger.experiment.add_text(tag, text, global_step=trainer.global_step if step is None else step)


def _tensorboard_loggers(trainer: Any) -> list[Any]:
    if trainer is None or not getattr(trainer, "is_global_zero", True):
        return []
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]


def log_figure(trainer: Any, tag: str, figure: Any, step: int | None = None) -> None:
    """Send ``figure`` to every TensorBoard logger of ``trainer`` (rank 0 only), then close it."""
    try:
        for logger in _tensorboard_loggers(trainer):
            logger.experiment.add_figure(tag, figure, global_step=trainer.global_step if step is None else step)
    finally:
        plt.close(figure)


def pareto_figure(
    seen_prefs: Any,
    seen_rewards: Any,
    unseen_prefs: Any,
    unseen_rewards: Any,
    objective_names: Sequence[str],
    initial: Any = None,
    ref: Any = None,
    shares: Any = None,
    space: str = "normalised",
) -> Any:
    """The Pareto plot of one evaluation (moc.md §8, "Pareto plot image"); ``space`` names the rewards' space.

    Mean normalised reward vectors per preference coloured by p₁; seen preferences are filled markers joined in
    grid order (N = 2), unseen ones hollow; the initial policy's seen points are grey crosses and the reference
    point a red star. N = 2: one axes. N ≥ 3: the three pairwise projections of the first three objectives, and
    the achieved share s against the preference p (all objectives, seen grid) when ``shares`` is given.
    ``unseen_prefs``/``unseen_rewards``, ``initial``, ``ref`` and ``shares`` may be None.
    """
    import numpy as np
    from matplotlib.colors import Normalize

    sp, sr = np.asarray(seen_prefs, float), np.asarray(seen_rewards, float)
    up = None if unseen_prefs is None else np.asarray(unseen_prefs, float)
    ur = None if unseen_rewards is None else np.asarray(unseen_rewards, float)
    init = None if initial is None else np.asarray(initial, float)
    refp = None if ref is None else np.asarray(ref, float)
    names = [str(n) for n in objective_names]
    cmap, norm = plt.get_cmap("viridis"), Normalize(0.0, 1.0)

    def front(ax: Any, i: int, j: int, join: bool) -> Any:
        if join:
            ax.plot(sr[:, i], sr[:, j], color="grey", lw=0.7, zorder=1)
        sc = ax.scatter(sr[:, i], sr[:, j], c=sp[:, 0], cmap=cmap, norm=norm, s=28, zorder=3, label="seen p")
        if ur is not None and len(ur):
            ax.scatter(ur[:, i], ur[:, j], facecolors="none", edgecolors=cmap(norm(up[:, 0])), s=28,
                       linewidths=1.2, zorder=3, label="unseen p")  # fmt: skip
        if init is not None and len(init):
            ax.scatter(init[:, i], init[:, j], marker="x", color="grey", s=18, zorder=2, label="initial policy")
        if refp is not None:
            ax.scatter([refp[i]], [refp[j]], marker="*", color="red", s=70, zorder=4, label="reference point")
        ax.set_xlabel(f"R {names[i]} ({space})")
        ax.set_ylabel(f"R {names[j]} ({space})")
        return sc

    if sp.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(5.2, 4.2), layout="constrained")
        sc = front(ax, 0, 1, join=True)
        ax.legend(fontsize=7, loc="best")
        fig.colorbar(sc, ax=ax, label=f"p {names[0]}")
    else:
        fig, axes = plt.subplots(2, 2, figsize=(8.4, 7.2), layout="constrained")
        for ax, (i, j) in zip(axes.flat, [(0, 1), (0, 2), (1, 2)]):
            sc = front(ax, i, j, join=False)
        axes[0, 0].legend(fontsize=6, loc="best")
        fig.colorbar(sc, ax=list(axes.flat), label=f"p {names[0]}")
        ax = axes[1, 1]
        if shares is None:
            ax.axis("off")
        else:
            s = np.asarray(shares, float)
            for k in range(s.shape[1]):
                ax.scatter(sp[:, k], s[:, k], s=12, alpha=0.7, label=names[k])
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
            ax.set_xlabel("preference p_k")
            ax.set_ylabel("achieved share s_k")
            ax.legend(fontsize=6)
    fig.suptitle(f"Pareto front (mean {space} rewards per preference)", fontsize=9)
    return fig
