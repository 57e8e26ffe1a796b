"""Loss spikes after topology updates and the size of regrown weights' first updates (smet.md §7).

Pure functions behind ``callbacks.loss_spike_probe.LossSpikeProbe``. Steps are optimizer steps; the
probe loss L(t) is the loss of a fixed held-out batch after optimizer step t (and after the topology
update of step t, when t is an update step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

__all__ = ["loss_spike", "probe_steps", "windows_holding", "regrown_update_ratio"]


def probe_steps(update_steps: Iterable[int], before: int = 5, after: int = 10) -> set[int]:
    """Every step t with u − before ≤ t ≤ u + after for some update step u (where L(t) is needed)."""
    if before < 1 or after < 1:
        raise ValueError(f"before and after must be positive, got {before}, {after}")
    out: set[int] = set()
    for u in update_steps:
        out.update(range(max(u - before, 0), u + after + 1))
    return out


def windows_holding(t: int, is_update: Callable[[int], bool], before: int = 5, after: int = 10) -> list[int]:
    """The update steps u (ascending) whose window [u − before, u + after] holds step t."""
    return [u for u in range(max(t - after, 1), t + before + 1) if is_update(u)]


def loss_spike(losses: Mapping[int, float], update_step: int, before: int = 5, after: int = 10) -> float:
    """spike_j = max L(t_j+1 … t_j+after) − mean L(t_j−before … t_j−1)  (smet.md §7, ``LossSpikeProbe``).

    Steps missing from ``losses`` (the run's first steps, before step 1) are left out of either side;
    ValueError if a side is empty.
    """
    pre = [losses[t] for t in range(update_step - before, update_step) if t in losses]
    post = [losses[t] for t in range(update_step + 1, update_step + after + 1) if t in losses]
    if not pre or not post:
        raise ValueError(f"loss_spike: no probe losses around update step {update_step}")
    return max(post) - sum(pre) / len(pre)


def regrown_update_ratio(
    w_start: torch.Tensor, w_end: torch.Tensor, regrown: torch.Tensor, old: torch.Tensor, steps: int
) -> tuple[float, float, float]:
    """(mean |Δw| per step of regrown entries, that of old entries, their ratio) over ``steps`` steps.

    ``w_start``/``w_end``: flat weights right after the update and ``steps`` optimizer steps later;
    ``regrown``/``old``: flat positions. The mean |Δw| of a set is Σ|w_end − w_start| / (|set|·steps)
    (smet.md §7, "mean first-10-step |Δw| of regrown entries ÷ that of old entries"). The ratio is NaN
    when the old entries did not move.
    """
    delta = (w_end.detach().float() - w_start.detach().float()).abs()
    r = float(delta[regrown].mean()) / steps if regrown.numel() else float("nan")
    o = float(delta[old].mean()) / steps if old.numel() else float("nan")
    return r, o, (r / o if o > 0 else float("nan"))
