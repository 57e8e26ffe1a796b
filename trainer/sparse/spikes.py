"""Loss spikes after topology updates and the size of regrown weights' first updates (smet.md §7).

Pure functions behind ``callbacks.loss_spike_probe.LossSpikeProbe``. Steps are optimizer steps; the
probe loss L(t) is the loss of a fixed held-out batch after optimizer step t (and after the topology
update of step t, when t is an update step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

__all__ = ["cold_start_updates", "loss_spike", "probe_steps", "windows_holding", "regrown_update_ratio"]


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
    regrown_start: torch.Tensor, regrown_end: torch.Tensor, old_start: torch.Tensor, old_end: torch.Tensor, steps: int
) -> tuple[float, float, float]:
    """(mean |Δw| per step of the regrown entries, that of the old entries, their ratio) over ``steps`` steps.

    The arguments are the weights of each set right after the update and ``steps`` optimizer steps later.
    The mean |Δw| of a set is Σ|w_end − w_start| / (|set|·steps) (smet.md §7, "mean first-10-step |Δw| of
    regrown entries ÷ that of old entries"). A mean is NaN for an empty set, the ratio NaN when the old
    entries did not move.
    """

    def mean_step(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((b.double() - a.double()).abs().mean()) / steps if a.numel() else float("nan")

    r, o = mean_step(regrown_start, regrown_end), mean_step(old_start, old_end)
    return r, o, (r / o if o > 0 else float("nan"))


def cold_start_updates(
    layout: str, policy: str, tau: int, steps: int, lr: float = 0.01, **optimizer_options: object
) -> list[float]:
    """The first ``steps`` updates of one entry regrown after global step τ − 1, in units of lr (smet.md §6).

    A two-entry ``MaskedAdam`` (ε = 0, β = (0.9, 0.999), float64) sees a constant gradient 1; entry 0 is
    active throughout, entry 1 (dense layout: flat position 1; compact: slot 1) is reset by
    ``reset_entries`` after step τ − 1 and then updated ``steps`` times. ``optimizer_options`` go to
    ``MaskedAdam`` (``reset_step``, ``warmup_steps``, ``warmup_mode`` ...).
    """
    from torch import nn

    from trainer.sparse.optim import MaskedAdam, reset_entries

    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = MaskedAdam([p], lr=lr, eps=0.0, betas=(0.9, 0.999), state_policy=policy, **optimizer_options)
    mask = torch.tensor([True, False])
    opt.attach_masks({p: mask} if layout == "dense" else {p: torch.tensor([3, 5])})  # compact: 2 slots
    p.grad = torch.ones(2, dtype=torch.float64)
    opt.step()  # allocate the state
    opt.state[p]["step"].fill_(tau - 1)
    if "step_i" in opt.state[p]:
        opt.state[p]["step_i"].fill_(tau - 1)
    mask[1] = True
    reset_entries(opt, p, torch.tensor([1]))  # dense: flat position 1; compact: slot 1
    out = []
    for _ in range(steps):
        before = float(p.detach()[1])
        p.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
        out.append((before - float(p.detach()[1])) / lr)
    return out
