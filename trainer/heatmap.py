"""Pictures of RL episodes for TensorBoard: navigation heatmaps and evaluation-episode videos.

Pure functions (no Lightning imports) behind ``callbacks/heatmap.py`` (``NavigationHeatmapCallback``) and
``callbacks/video.py`` (``EpisodeVideoCallback``); hasard.md §8 ("Images") and rl_core.md §9 ("Videos").

* Heatmaps: :func:`heatmap_shape` and :func:`position_histogram` bin the ``[L, 2]`` x, y positions of
  an episode on a grid over the scenario's coordinate box; :func:`episodes_histogram` sums them over
  the episodes of a rollout; :func:`heatmap_image` draws ``log1p(counts)`` inside the box as an RGB
  array.
* Videos: :func:`record_episode` plays one episode of a single gymnasium-style env with a given action
  function and keeps its ``render()`` frames, each annotated with the running reward and cost
  (:func:`annotate_frame`); :func:`write_gif` saves them as an animated GIF with Pillow (the fallback
  when ``moviepy`` is missing) and :func:`frame_strip` puts a few of them side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "annotate_frame",
    "episodes_histogram",
    "frame_strip",
    "heatmap_image",
    "heatmap_shape",
    "position_histogram",
    "record_episode",
    "to_rgb",
    "write_gif",
]


# ----------------------------------------------------------------------------------------------
# heatmaps (HASARD §8)
# ----------------------------------------------------------------------------------------------


def heatmap_shape(box: Sequence[float], bins_long_axis: int) -> tuple[int, int]:
    """``(ny, nx)`` of a heatmap: ``bins_long_axis`` on the longer side, proportionally fewer (floor) on the other."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
        raise ValueError(f"empty heatmap box {tuple(box)}")
    if w >= h:
        return max(1, int(h / w * bins_long_axis)), int(bins_long_axis)  # HASARD §6: PP int(448/2176*75)=15
    return int(bins_long_axis), max(1, int(w / h * bins_long_axis))


def position_histogram(positions: Any, box: Sequence[float], bins_long_axis: int) -> np.ndarray:
    """Counts of ``positions`` ``[L, 2]`` (x, y) on the heatmap grid, shape ``(ny, nx)`` (rows = y).

    Positions outside the box are clipped onto its border; one on the upper limit lands in the last bin.
    """
    ny, nx = heatmap_shape(box, bins_long_axis)
    x0, y0, x1, y1 = (float(v) for v in box)
    hist = np.zeros((ny, nx), dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    if pos.shape[0] == 0:
        return hist
    fx = (np.clip(pos[:, 0], x0, x1) - x0) / (x1 - x0)
    fy = (np.clip(pos[:, 1], y0, y1) - y0) / (y1 - y0)
    ix = np.minimum((fx * nx).astype(np.int64), nx - 1)
    iy = np.minimum((fy * ny).astype(np.int64), ny - 1)
    np.add.at(hist, (iy, ix), 1)
    return hist


def episodes_histogram(episodes: Iterable[dict[str, Any]], box: Sequence[float], bins_long_axis: int) -> np.ndarray:
    """The sum of :func:`position_histogram` over the episodes that carry ``positions`` (others are skipped);
    zeros of shape :func:`heatmap_shape` when none does."""
    total = np.zeros(heatmap_shape(box, bins_long_axis), dtype=np.int64)
    for ep in episodes:
        pos = ep.get("positions") if isinstance(ep, dict) else None
        if pos is not None:
            total += position_histogram(pos, box, bins_long_axis)
    return total


def _figure_to_rgb(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3], dtype=np.uint8)


def heatmap_image(counts: Any, box: Sequence[float], title: str = "") -> np.ndarray:
    """``log1p(counts)`` drawn inside the coordinate ``box`` (x_min, y_min, x_max, y_max), rows = y with the
    origin at the bottom, with a colour bar: an RGB ``[H, W, 3]`` uint8 array (matplotlib, Agg canvas)."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, safe without a display

    m = np.asarray(counts, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"counts must be a non-empty 2-D array, got shape {m.shape}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty heatmap box {tuple(box)}")
    aspect = (y1 - y0) / (x1 - x0)
    fig = Figure(figsize=(6.0, float(np.clip(4.8 * aspect + 1.0, 2.4, 7.0))), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.log1p(m), origin="lower", extent=(x0, x1, y0, y1), cmap="inferno", interpolation="nearest",
                   aspect="equal", vmin=0.0)  # fmt: skip
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="log(1 + visits)", shrink=0.9)
    fig.tight_layout()
    return _figure_to_rgb(fig)


# ----------------------------------------------------------------------------------------------
# evaluation-episode videos (rl_core.md §9, HASARD §8)
# ----------------------------------------------------------------------------------------------


def to_rgb(frame: Any) -> np.ndarray:
    """``frame`` as an ``[H, W, 3]`` uint8 array (a grayscale ``[H, W]`` or ``[H, W, 1]`` frame is repeated,
    an alpha channel dropped)."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HWC frame with 1, 3 or 4 channels, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def annotate_frame(frame: Any, text: str) -> np.ndarray:
    """A copy of ``frame`` upscaled ×2 (nearest neighbour) with ``text`` printed in its top-left corner on a
    dark box (Pillow); RGB ``[2H, 2W, 3]`` uint8."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(frame)
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # HASARD §8: 128×72 upscaled ×2
    img = Image.fromarray(big)
    if text:
        draw = ImageDraw.Draw(img)
        left, top, right, bottom = draw.textbbox((3, 2), text)
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(0, 0, 0))
        draw.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(img, dtype=np.uint8).copy()


def frame_strip(frames: Sequence[Any], n: int = 8) -> np.ndarray:
    """``n`` evenly spaced frames (first and last included; all of them when there are fewer) side by side:
    RGB ``[H, k·W, 3]`` uint8."""
    if len(frames) == 0:
        raise ValueError("frame_strip needs at least one frame")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = min(int(n), len(frames))
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, k)).astype(int))
    picked = [to_rgb(frames[i]) for i in idx]
    if len({p.shape for p in picked}) != 1:
        raise ValueError(f"frames differ in shape: {sorted({p.shape for p in picked})}")
    return np.concatenate(picked, axis=1)


def write_gif(frames: Sequence[Any], path: str | os.PathLike, fps: int) -> str:
    """Save ``frames`` (HWC uint8) as an animated GIF at ``fps`` that loops forever (Pillow); returns the path.

    Pillow merges identical consecutive frames into one longer frame; the duration is kept.
    """
    from PIL import Image

    if len(frames) == 0:
        raise ValueError("write_gif needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    images = [Image.fromarray(to_rgb(f)) for f in frames]
    duration = max(1, int(round(1000.0 / float(fps))))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return path


def record_episode(
    env: Any,
    select_action: Callable[[Any, int], Any],
    max_frames: int,
    seed: int | None = None,
    annotate: bool = True,
) -> dict[str, Any]:
    """Play one episode of ``env`` and keep its frames.

    ``env`` is a single gymnasium-style env with ``reset(seed=)``, ``step`` (``info["cost"]`` is the
    step's cost, 0 when absent) and ``render()`` returning an RGB frame. ``select_action(obs, t)``
    returns the action to pass to ``env.step``. The first frame is the reset state; one frame follows
    every step; the episode stops when it terminates or truncates, or once ``max_frames`` frames are
    kept (then ``return``, ``cost`` and ``length`` cover the recorded part only). Each frame is
    annotated with the step and the running reward and cost (:func:`annotate_frame`) unless
    ``annotate`` is False.

    Returns ``{"frames": [HWC uint8, ...], "return": float, "cost": float, "length": int, "done": bool}``
    (``done``: the episode ended within ``max_frames``).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    obs, _ = env.reset(seed=seed) if seed is not None else env.reset()
    ret, cost, t, done = 0.0, 0.0, 0, False

    def frame() -> np.ndarray:
        raw = env.render()
        return annotate_frame(raw, f"t {t}  R {ret:.2f}  C {cost:.2f}") if annotate else to_rgb(raw)

    frames = [frame()]
    while len(frames) < max_frames:
        obs, r, terminated, truncated, info = env.step(select_action(obs, t))
        t += 1
        ret += float(r)
        cost += float((info or {}).get("cost", 0.0))
        frames.append(frame())
        if terminated or truncated:
            done = True
            break
    return {"frames": frames, "return": ret, "cost": cost, "length": t, "done": done}
