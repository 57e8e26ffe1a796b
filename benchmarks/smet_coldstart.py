"""SMET cold start, the optimizer alone (smet.md §6): the first updates of one regrown entry per state policy.

A constant gradient, ε = 0, β = (0.9, 0.999); the entry is regrown after global step τ − 1 = 5000 and
updated 100 times (``trainer.sparse.spikes.cold_start_updates``, both layouts). Columns: update k = 1, the
peak and where it occurs, the sum over k ≤ 100, all in units of lr·sign(g), and the spec's value.

Run: ``python benchmarks/smet_coldstart.py`` (a few seconds). The last line is
``RESULT p0_k1=<x> p2_k1=<y> p3_linear_k1=<z> p3_damping_k1=<w> ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.sparse.spikes import cold_start_updates  # noqa: E402

TAU = 5001
CASES = {
    # name: (policy, options, spec's k=1 value, spec's Σ k ≤ 100)
    "P0 cold (global step)": ("P0", {}, "3.1516 (τ = 5001)", "≈ 465.7"),
    "P2 local step, reset 0": ("P2", {}, "1", "100"),
    "P3 linear_lr, W 100": ("P3", {"warmup_steps": 100, "warmup_mode": "linear_lr"}, "0.01", "50.5"),
    "P3 m_damping, W 100, reset 1": ("P3", {"warmup_steps": 100, "warmup_mode": "m_damping", "reset_step": 1}, "0.014883", "≈ 16.21"),
    "P3 m_damping, W 100, reset 0": ("P3", {"warmup_steps": 100, "warmup_mode": "m_damping"}, "0.01", "–"),
}


def main() -> None:
    header = f"{'policy':<30}{'layout':>9}{'k=1':>10}{'peak':>10}{'at k':>6}{'Σ k≤100':>10}   spec k=1 / Σ"
    print(header)
    print("-" * len(header))
    result = {}
    for name, (policy, opts, spec_k1, spec_sum) in CASES.items():
        for layout in ("dense", "compact"):
            ks = cold_start_updates(layout, policy, TAU, 100, **opts)
            peak = max(ks)
            print(f"{name:<30}{layout:>9}{ks[0]:>10.6f}{peak:>10.4f}{ks.index(peak) + 1:>6}{sum(ks):>10.3f}   {spec_k1} / {spec_sum}")
        key = {"P0": "p0", "P2": "p2"}.get(policy, "p3_linear" if opts.get("warmup_mode") == "linear_lr" else
                                           f"p3_damping_reset{opts.get('reset_step', 0)}")  # fmt: skip
        result[f"{key}_k1"] = ks[0]
        result[f"{key}_sum100"] = sum(ks)
    asymptote = cold_start_updates("dense", "P0", 10**7, 1)[0]
    print(f"P0 first update for τ → ∞ (τ = 1e7): {asymptote:.4f} (spec: (1−β1)/√(1−β2) = 3.1623)")
    result["p0_k1_tau_inf"] = asymptote
    print("RESULT " + " ".join(f"{k}={v:.6f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
