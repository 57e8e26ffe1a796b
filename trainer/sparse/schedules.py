"""Drop-fraction schedules and update timing, in optimizer steps (dst_core.md §4)."""

from __future__ import annotations

import math

__all__ = ["DECAYS", "DEFAULT_F_MIN", "end_step", "drop_fraction", "is_update_step", "drop_count"]

DECAYS: tuple[str, ...] = ("cosine", "cosine_floor", "linear", "constant")
DEFAULT_F_MIN = 0.005  # dst_core §4: cosine_floor f_min


def end_step(total_steps: int, end_fraction: float | None) -> float:
    """T_end = end_fraction × total steps, or the total when there is no end (dst_core §4)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if end_fraction is None:
        return float(total_steps)
    if not 0.0 < end_fraction <= 1.0:
        raise ValueError(f"end_fraction must lie in (0, 1], got {end_fraction}")
    return float(end_fraction) * total_steps  # dst_core §4: T_end


def drop_fraction(
    t: int,
    f0: float,
    decay: str,
    total_steps: int,
    end_fraction: float | None = None,
    f_min: float = DEFAULT_F_MIN,
) -> float:
    """The drop fraction f_t after optimizer step ``t`` (dst_core §4).

    Args:
        t: the global step (after the optimizer step).
        f0: the initial fraction.
        decay: one of :data:`DECAYS`.
        total_steps: T, the total number of optimizer steps of the run.
        end_fraction: T_end = end_fraction·T for ``cosine``; ``None`` means T_end = T.
        f_min: the floor of ``cosine_floor``.
    """
    if decay == "cosine":
        t_end = end_step(total_steps, end_fraction)
        return (f0 / 2.0) * (1.0 + math.cos(math.pi * t / t_end))  # dst_core §4, cosine (RigL)
    if decay == "cosine_floor":
        T = float(total_steps)
        return f_min + (f0 - f_min) * (1.0 + math.cos(math.pi * min(t, T) / T)) / 2.0  # dst_core §4, cosine_floor
    if decay == "linear":
        return max(f0 * (1.0 - t / float(total_steps)), 0.0)  # dst_core §4, linear (SpIEL)
    if decay == "constant":
        return float(f0)  # dst_core §4, constant
    raise ValueError(f"unknown decay {decay!r}; valid: {DECAYS}")


def is_update_step(t: int, delta_t: int, t_end: float) -> bool:
    """True iff an update follows optimizer step ``t``: t % ΔT == 0 and 0 < t < T_end (dst_core §4)."""
    if delta_t <= 0:
        raise ValueError(f"delta_t must be positive, got {delta_t}")
    return t % delta_t == 0 and 0 < t < t_end  # dst_core §4


def drop_count(fraction: float, active: int, numel: int) -> int:
    """k = floor(f_t·c); 0 when the layer is dense (c == n) (dst_core §3)."""
    if active >= numel:
        return 0
    return max(math.floor(fraction * active), 0)  # dst_core §3: k = floor(f_t·c)
