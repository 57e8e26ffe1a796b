"""What a drift run reports: the summary numbers and the TensorBoard pictures (ficsum.md §8).

* :func:`drift_summary`: C-F1, model F1, detections against the true change points (delay, false
  alarms, missed), drift_δ accuracies and counts, from an engine's per-observation history, through the
  ``torchmetrics`` metrics of :mod:`trainer.metrics.stream`.
* :func:`timeline_figure`: a top band coloured by the true concept, a bottom band by the active state
  (coloured like the concept it overlaps most), ticks for true drifts and detections, rolling accuracy.
* :func:`weights_figure`: the meta-feature × source weight heatmap; :func:`similarity_figure`: the
  distance of the current window to each state over time; :func:`confusion_markdown`: concept × state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer.metrics.stream import ConceptF1, DriftDetections, concept_contingency, drift_window_accuracy
from trainer.plots import plt

__all__ = ["confusion_markdown", "drift_summary", "similarity_figure", "state_colours", "timeline_figure",
           "weights_figure"]  # fmt: skip


def drift_summary(
    concepts: Sequence[int],
    states: Sequence[int],
    correct: Sequence[int],
    detections: Sequence[int],
    true_drifts: Sequence[int],
    detection_window: int = 1000,
    n_switches: int | None = None,
) -> dict[str, float]:
    """The end-of-run numbers of ficsum.md §3 "Metrics" over the first ``len(concepts)`` observations.

    ``concepts`` are the true concept ids (-1 = unknown: C-F1 is then NaN), ``states`` the active state
    id of each observation, ``correct`` 1 where the prediction was right, ``detections`` and
    ``true_drifts`` observation indices.
    """
    n = len(concepts)
    G = torch.as_tensor(np.asarray(concepts, dtype=np.int64))
    S = torch.as_tensor(np.asarray(states, dtype=np.int64))
    out: dict[str, float] = {"observations": float(n), "acc": float(np.mean(correct)) if n else float("nan")}
    if n and int(G.max()) >= 0:
        cf1 = ConceptF1(sync_on_compute=False)  # every rank holds the whole stream: nothing to gather
        cf1.update(G, S)
        out.update({k: float(v) for k, v in cf1.compute().items()})
    else:
        out.update({"c_f1": float("nan"), "model_f1": float("nan"), "n_states": float(len(set(states)))})
    drifts = np.asarray([t for t in true_drifts if 0 < t < n], dtype=np.int64)
    flags_true = torch.zeros(n, dtype=torch.long)
    flags_det = torch.zeros(n, dtype=torch.long)
    flags_true[torch.as_tensor(drifts)] = 1
    det = np.asarray([t for t in detections if 0 <= t < n], dtype=np.int64)
    flags_det[torch.as_tensor(det)] = 1
    dd = DriftDetections(window=detection_window, sync_on_compute=False)
    dd.update(flags_true, flags_det)
    out.update({k: float(v) for k, v in dd.compute().items()})
    for delta in (50, 250, 500):
        out[f"acc_drift{delta}"] = float(drift_window_accuracy(np.asarray(correct), drifts, delta))
    out["true_drifts"] = float(len(drifts))
    if n_switches is not None:
        out["switches"] = float(n_switches)
    return out


def state_colours(concepts: np.ndarray, states: np.ndarray) -> dict[int, int]:
    """Each state's colour index: the true concept it overlaps most (ficsum.md §8)."""
    out: dict[int, int] = {}
    if not len(states):
        return out
    g_ids, s_ids, counts = concept_contingency(concepts, states)
    for j, s in enumerate(s_ids):
        out[int(s)] = int(g_ids[int(np.argmax(counts[:, j]))]) if len(g_ids) else int(s)
    return out


def _downsample(a: np.ndarray, width: int) -> np.ndarray:
    step = max(1, int(np.ceil(len(a) / width)))
    return a[::step]


def timeline_figure(
    concepts: Sequence[int],
    states: Sequence[int],
    correct: Sequence[int],
    detections: Sequence[int],
    true_drifts: Sequence[int],
    title: str = "",
    rolling: int = 500,
    width: int = 3000,
) -> Any:
    """The drift timeline: true concepts (top band), active states (bottom band), drifts, accuracy."""
    G = np.asarray(concepts, dtype=np.int64)
    S = np.asarray(states, dtype=np.int64)
    n = len(G)
    colour = state_colours(G, S) if G.size and G.max() >= 0 else {}
    # tab20 pairs a dark and a light shade: concept c is dark; its main state dark, other states light
    main: dict[int, int] = {}
    for s_id, c in colour.items():
        if c not in main or np.sum(S == s_id) > np.sum(S == main[c]):
            main[c] = s_id
    G_col = 2.0 * (np.maximum(G, 0) % 10)
    S_col = np.zeros(n)
    for s_id in np.unique(S):
        c = colour.get(int(s_id), int(s_id))
        S_col[S == s_id] = 2 * (c % 10) + (0 if main.get(c) == s_id else 1)
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(10, 3.2))
    bands = np.vstack([_downsample(G_col, width), _downsample(S_col, width)])
    ax.imshow(bands, aspect="auto", cmap=cmap, vmin=0, vmax=20, extent=(0, n, 2, 0), interpolation="nearest")
    for t in true_drifts:
        if 0 < t < n:
            ax.plot([t, t], [0, 1], color="k", lw=0.8)
    for t in detections:
        if 0 <= t < n:
            ax.plot([t, t], [1, 2], color="red", lw=0.8)
    ax.set_yticks([0.5, 1.5])
    ax.set_yticklabels(["true concept", "active state"])
    ax.set_xlabel("observation")
    if n:
        c = np.asarray(correct, dtype=float)
        k = min(rolling, n)
        roll = np.convolve(c, np.ones(k) / k, mode="valid")
        ax2 = ax.twinx()
        ax2.plot(np.arange(k - 1, n), roll, color="white", lw=1.6)
        ax2.plot(np.arange(k - 1, n), roll, color="black", lw=0.8)
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel(f"accuracy (rolling {k})")
    ax.set_title((title + ": " if title else "") + "black ticks true drifts, red detections; light = another state of that concept", fontsize=9)
    fig.tight_layout()
    return fig


def weights_figure(weights: np.ndarray, sources: Sequence[str], features: Sequence[str], title: str = "") -> Any:
    """Heatmap of the fingerprint weights, sources as rows and meta-features as columns."""
    m = np.asarray(weights, dtype=float).reshape(len(sources), len(features))
    fig, ax = plt.subplots(figsize=(1.5 + 0.55 * len(features), 1.0 + 0.32 * len(sources)))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(features)))
    ax.set_xticklabels(list(features), rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(sources)))
    ax.set_yticklabels(list(sources), fontsize=7)
    ax.set_title(title or "meta-feature weights")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def similarity_figure(state_sims: Sequence[tuple[int, int, float]], sims: Sequence[tuple[int, float, float]]) -> Any:
    """Distance of the current window to each state's fingerprint over time, and the active distance."""
    fig, ax = plt.subplots(figsize=(10, 3))
    arr = np.asarray(state_sims, dtype=float).reshape(-1, 3)
    for k in np.unique(arr[:, 1]).astype(int) if len(arr) else []:
        sel = arr[arr[:, 1] == k]
        ax.plot(sel[:, 0], sel[:, 2], ".", ms=2, label=f"state {k}")
    act = np.asarray(sims, dtype=float).reshape(-1, 3)
    if len(act):
        ax.plot(act[:, 0], act[:, 1], color="k", lw=0.5, alpha=0.6, label="active (head window)")
    ax.set_xlabel("observation")
    ax.set_ylabel("weighted cosine distance")
    if len(arr) or len(act):
        ax.legend(fontsize=6, ncol=4, loc="upper right")
    ax.set_title("similarity to each state")
    fig.tight_layout()
    return fig


def confusion_markdown(concepts: Sequence[int], states: Sequence[int]) -> str:
    """The concept × state table (observation counts) as Markdown."""
    g_ids, s_ids, counts = concept_contingency(np.asarray(concepts), np.asarray(states))
    head = "| concept \\ state | " + " | ".join(str(int(s)) for s in s_ids) + " |"
    rule = "|---" * (len(s_ids) + 1) + "|"
    rows = [f"| {int(g)} | " + " | ".join(str(int(v)) for v in counts[i]) + " |" for i, g in enumerate(g_ids)]
    return "\n".join([head, rule, *rows])
