"""Sparse scaling miniature (sparse_scaling.md §7b): does sparsity delay data saturation on repeated data?

Runs the grid of ``yaml/sparse_scaling/sweep_plays_tiny.yaml`` through ``trainer sweep`` (tiny LLaMA h128/L2
on a 250k-token unique budget of the Shakespeare plays; d ∈ {1, 0.5, 0.25} × epochs ∈ {1, 4, 16}; lr 1e-3/d;
the sparse_dc preset with ΔT 20; validation 8 times per epoch), then prints:

1. the table of §7b: d, epochs, steps, best val loss, step of best, final val loss, final − best, final train loss;
2. the per-epoch validation loss of the 16-epoch runs (at each epoch's end) and its gain per epoch, dense
   against 50% sparse;
3. a fit of the law's free coefficients to the 9 final losses. The miniature has one N and one U, so only
   the level and the density and repetition terms can be identified: starting from ``PUBLISHED``, stage 2
   fits b (the data term's level) and c on the 1-epoch runs, stage 3 log R_N* and log R_D* on the dense multi-epoch runs, stage 4
   λ1 and σ1 on the sparse multi-epoch runs (the rest stays published). R² of L over all 9 runs with the
   full form, on the final losses (the paper's) and, separately, on the best losses of each run. The models
   are far outside the fitted regime: compare orderings, not absolute losses (§7b);
4. a control (``sweep_plays_tiny_lrcontrol.yaml``, not in the paper): the sparse 16-epoch runs at the dense
   lr 1e-3 instead of lr_dense / d, to tell the effect of sparsity from that of the larger lr.

``sparse_saturation_delay`` = (epoch of the best validation loss at d = 0.5) − (the same at d = 1) in the
16-epoch runs: positive means the sparse model keeps improving for longer on the same repeated data.

Run: ``python benchmarks/sparse_scaling_repetition.py [--jobs 2] [--out DIR]`` (28 min on 2 idle cores, plus about 15 min for the control;
finished points are kept, so a rerun only tabulates). Last line:
``RESULT mini_fit_r2=<y> sparse_saturation_delay=<z> ...``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.scaling_law import PUBLISHED, FitSettings, SparseDCScalingLaw, r2_score  # noqa: E402
from trainer.sweep import format_table, load_sweep, run_sweep  # noqa: E402

YAML = Path(__file__).resolve().parent.parent / "yaml" / "sparse_scaling"
SWEEP, CONTROL = YAML / "sweep_plays_tiny.yaml", YAML / "sweep_plays_tiny_lrcontrol.yaml"
FREE = {2: ("b", "c"), 3: ("log_rn_star", "log_rd_star"), 4: ("lambda1", "sigma1")}
GRID = {2: {"b": (4.0, 6.0, 8.0), "c": (-0.5, 0.0, 0.5)}, 3: {"log_rn_star": (0.0, 2.0), "log_rd_star": (0.0, 2.0)},
        4: {"lambda1": (-1.0, 1.0, 3.0), "sigma1": (-1.0, 1.0)}}  # fmt: skip


def per_epoch(row: dict) -> list[float]:
    """Validation loss at the end of each epoch (the evaluation closest to it) of one run."""
    curve, steps, epochs = row["val_curve"], row["steps"], int(row["epochs"])
    per = steps / epochs
    out = []
    for e in range(1, epochs + 1):
        target = e * per
        out.append(min(curve, key=lambda sv: abs(sv[0] + 1 - target))[1])
    return out


def fit_free(rows: list[dict], which: str) -> tuple[float, float]:
    """Fit the free coefficients (``FREE``) to ``rows``; print the stages and predictions; (R², R_D*(0.5)/R_D*(0))."""
    settings = FitSettings(tolerance_grad=1e-12, tolerance_change=0.0)
    result = SparseDCScalingLaw(PUBLISHED).fit(rows, stages=(2, 3, 4), grid=GRID, settings=settings, free=FREE)
    law = SparseDCScalingLaw(result.coefficients)
    predicted = [law.predict(r["n_total"], r["density"], r["unique_tokens"], r["total_tokens"]) for r in rows]
    r2 = r2_score([r["loss"] for r in rows], predicted)
    k = result.coefficients
    print(f"\nLaw fit of the free coefficients to the {which} losses (the others published):")
    for s in result.stages:
        print(f"  stage {s.stage}: {s.rows} runs, free {', '.join(s.free)}: objective {s.objective:.3e}, R² {s.r2:.4f}")
    print(f"  b {k.b:.4f} (B {math.exp(k.b):.2f}), c {k.c:.4f}, R_N* {k.rn_star:.4g}, R_D* {k.rd_star:.4g}, "
          f"λ1 {k.lambda1:.4f}, σ1 {k.sigma1:.4f}; R² of L over all 9 runs (full form) {r2:.4f}")  # fmt: skip
    ratio = law.half_lives(0.5)[1] / law.half_lives(0.0)[1]
    print(f"  fitted R_D*(S=0.5) / R_D*(0) = {ratio:.3f} (> 1: repeated data stays useful longer when sparse)")
    for r, p in zip(rows, predicted):
        print(f"  {r['run_id']:>10}: observed {r['loss']:.4f}  predicted {p:.4f}")
    return r2, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/sparse_scaling/bench_repetition")
    parser.add_argument("--no-control", action="store_true", help="skip the lr-control runs (2 × 16 epochs)")
    args = parser.parse_args()
    t0 = time.time()
    sweep = load_sweep(SWEEP, out=args.out)
    rows, failed = run_sweep(sweep, jobs=args.jobs, threads=args.threads)
    if failed or len(rows) != len(sweep.points()):
        raise SystemExit(f"sweep incomplete: failed {failed}, {len(rows)} of {len(sweep.points())} rows")
    rows.sort(key=lambda r: (-r["density"], r["epochs"]))
    print("\nRepetition grid (sparse_scaling.md §7b):\n" + format_table(rows))

    by = {(r["density"], int(r["epochs"])): r for r in rows}
    print("\nValidation loss at the end of each epoch, 16-epoch runs (gain = previous − this):")
    curves = {d: per_epoch(by[(d, 16)]) for d in (1.0, 0.5, 0.25)}
    print("epoch  " + "  ".join(f"d={d:<4g} loss   gain" for d in curves))
    for e in range(16):
        cells = []
        for d, c in curves.items():
            gain = (c[e - 1] - c[e]) if e else float("nan")
            cells.append(f"{c[e]:10.4f} {gain:+7.4f}")
        print(f"{e + 1:5d}  " + "  ".join(cells))

    # final val loss by epochs, and the gain per extra epoch between grid points
    print("\nFinal val loss by epochs, and the gain per extra epoch:")
    print("    d    ep1     ep4    ep16   (L1−L4)/3  (L4−L16)/12")
    for d in (1.0, 0.5, 0.25):
        l1, l4, l16 = (by[(d, e)]["loss"] for e in (1, 4, 16))
        print(f"{d:5g} {l1:7.4f} {l4:7.4f} {l16:7.4f}   {(l1 - l4) / 3:+.4f}    {(l4 - l16) / 12:+.4f}")

    # the law's free coefficients on the 9 points: final losses (the paper's), then best losses
    fits = {}
    for which, key in (("final", "loss"), ("best", "best_val_loss")):
        data = [{**r, "loss": r[key]} for r in rows]
        r2, ratio = fit_free(data, which)
        fits[which] = (r2, ratio)
    r2, rd_ratio = fits["final"]

    control = []
    if not args.no_control:
        control, failed = run_sweep(load_sweep(CONTROL, out=args.out + "_lrcontrol"), jobs=args.jobs, threads=args.threads)
        if failed:
            raise SystemExit(f"control sweep failed: {failed}")
        print("\nControl: sparse 16-epoch runs at lr 1e-3 (no 1/d scaling):\n" + format_table(control))
        for r in control:
            c = per_epoch(r)
            print(f"  {r['run_id']}: best epoch {r['best_epoch']:.2f}, per-epoch val " + " ".join(f"{v:.3f}" for v in c))

    best_ep = {d: by[(d, 16)]["best_epoch"] for d in (1.0, 0.5, 0.25)}
    gap = {d: by[(d, 16)]["final_minus_best"] for d in (1.0, 0.5, 0.25)}
    delay = best_ep[0.5] - best_ep[1.0]
    one_epoch_order = by[(1.0, 1)]["loss"] <= by[(0.5, 1)]["loss"] <= by[(0.25, 1)]["loss"]
    print(f"\nbest epoch at 16 epochs: d=1 {best_ep[1.0]:.2f}, d=0.5 {best_ep[0.5]:.2f}, d=0.25 {best_ep[0.25]:.2f}; "
          f"final − best: {gap[1.0]:.4f} / {gap[0.5]:.4f} / {gap[0.25]:.4f}")  # fmt: skip
    print(f"one-epoch order dense ≤ d0.5 ≤ d0.25: {one_epoch_order}; total {time.time() - t0:.0f} s")
    ctl = {r["density"]: r for r in control}
    ctl_txt = "".join(f" control_best_epoch_d{str(d).replace('.', '')}={ctl[d]['best_epoch']:.2f}"
                      f" control_best_val_d{str(d).replace('.', '')}={ctl[d]['best_val_loss']:.4f}" for d in sorted(ctl, reverse=True))  # fmt: skip
    print(
        f"RESULT mini_fit_r2={r2:.4f} sparse_saturation_delay={delay:.2f} mini_fit_r2_best={fits['best'][0]:.4f} "
        f"best_epoch_d1={best_ep[1.0]:.2f} "
        f"best_epoch_d050={best_ep[0.5]:.2f} best_epoch_d025={best_ep[0.25]:.2f} gap16_d1={gap[1.0]:.4f} "
        f"gap16_d050={gap[0.5]:.4f} gap16_d025={gap[0.25]:.4f} one_epoch_order_holds={str(one_epoch_order).lower()} "
        f"fit_rd_ratio_s050={rd_ratio:.3f} val16_d1={by[(1.0, 16)]['loss']:.4f} "
        f"val16_d050={by[(0.5, 16)]['loss']:.4f} val16_d025={by[(0.25, 16)]['loss']:.4f}{ctl_txt}"
    )


if __name__ == "__main__":
    main()
