"""MOC miniatures (moc.md §7): MOC against linear scalarisation (and fixed weights) with the same budget.

    python benchmarks/moc_mini.py [--env synthetic|synthetic3|fishwood] [--methods moc linear fixed soups]
                                  [--seeds 0 1 2] [--workers 1] [--quick] [--set=--model.init_args.X=Y ...]

Each run is exactly a YAML of ``yaml/moc/`` (``mini_<env>_<method>.yaml``) built with ``TrainerCLI(run=False)``; the
numbers are those of its ``ParetoFrontEvalCallback`` at the last evaluation (raw rewards and a reference point fixed
in the YAML, so hypervolumes compare across methods and seeds). The seed sets the LM initialisation, the rollouts and
the global seed. ``soups`` (synthetic, on request) trains two ``single`` runs of ``mini_synthetic_fixed.yaml`` with
half the rollouts each and scores their weight interpolations (Rewarded Soups). ``--quick`` runs 4 rollouts to check
the script. Prints the table of
moc.md §7 (mean ± sd over seeds), whether the expected effects held, then
``RESULT moc_hv=<x> linear_hv=<y> moc_kendall_tau=<z>`` (seen-grid hypervolume and Kendall τ, means over seeds).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import mean_sd, run_in_workers  # noqa: E402

YAML = ROOT / "yaml" / "moc"
METHODS = {"synthetic": ("moc", "linear", "fixed"), "synthetic3": ("moc", "linear"), "fishwood": ("moc", "linear")}
#: methods run only when asked for (``--methods soups``): Rewarded Soups from ``single`` runs of the fixed YAML
OPTIONAL = {"synthetic": ("soups",)}
COLUMNS = (("hv_seen", "HV seen", 3), ("hv_unseen", "HV unseen", 3), ("kendall_tau", "Kendall τ", 3),
           ("local_order_rate", "local order rate", 2), ("local_order_rate_union", "local order rate (union)", 2),
           ("ctl_error", "mean abs(s − p)", 3), ("extreme_frac", "points near an extreme", 2),
           ("front_size", "non-dominated points", 1), ("diversity", "spread (mean pairwise distance)", 3),
           ("sec", "wall-clock s", 0))  # fmt: skip


def run_job(job: tuple[str, str, int, bool, tuple[str, ...]]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from trainer.cli import TrainerCLI

    torch.set_num_threads(1)
    env, method, seed, quick, extra = job
    if method == "soups":
        return run_soup(job)
    args = ["fit", "--config", str(YAML / f"mini_{env}_{method}.yaml"), "--seed_everything", str(seed),
            "--model.init_args.seed", str(seed), "--data.init_args.seed", str(seed),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix="moc_mini_"), "--trainer.logger", "false"]  # fmt: skip
    if quick:
        args += ["--trainer.max_epochs", "4"]
    args += list(extra)
    cli = TrainerCLI(args=args, run=False)
    cb = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ParetoFrontEvalCallback")
    if quick:
        cb.every_n_epochs = 2
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    row = {k: float(v) for k, v in cb.last_metrics.items()}
    row.update(env=env, method=method, seed=seed, sec=time.perf_counter() - t0, ref=list(cb.ref_point),
               epochs=int(cli.trainer.current_epoch))  # fmt: skip
    return row


def run_soup(job: tuple[str, str, int, bool, tuple[str, ...]]) -> dict[str, Any]:
    """Rewarded Soups (moc.md §3 baselines): N ``single`` runs of ``mini_<env>_fixed.yaml`` with 1/N of the budget
    each, then every preference p is scored by the policy with weights Σ_k p_k θ_k."""
    import torch

    from modules.moc import MOC
    from trainer.cli import TrainerCLI
    from trainer.pareto import front_metrics

    torch.set_num_threads(1)
    env, _, seed, quick, extra = job
    out_dir = Path(tempfile.mkdtemp(prefix="moc_soup_"))
    t0 = time.perf_counter()
    paths, cli = [], None
    for k in range(2):
        base = ["fit", "--config", str(YAML / f"mini_{env}_fixed.yaml"), "--seed_everything", str(seed),
                "--model.init_args.seed", str(seed), "--data.init_args.seed", str(seed),
                "--model.init_args.weighting", "single", "--model.init_args.single_objective", str(k),
                "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
                "--trainer.default_root_dir", str(out_dir / f"member{k}"), "--trainer.logger", "false"]  # fmt: skip
        cli = TrainerCLI(args=base + list(extra), run=False)
        budget = 4 if quick else cli.trainer.max_epochs
        cli.trainer.fit_loop.max_epochs = budget // 2  # the same total number of rollouts as one MOC run
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        paths.append(str(out_dir / f"member{k}.ckpt"))
        cli.trainer.save_checkpoint(paths[-1])
    cb = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ParetoFrontEvalCallback")
    soup = MOC.load_from_checkpoint(paths[0], soup_members=tuple(paths), map_location="cpu")
    key = "raw_rewards" if cb.reward_space == "raw" else "rewards"
    seen, unseen = (soup.score_preferences(g, datamodule=cli.datamodule) for g in (cb.seen_grid, cb.unseen_grid))
    row = front_metrics(cb.seen_grid, seen[key], cb.ref_point, cb.grid_step, unseen_grid=cb.unseen_grid,
                        unseen_rewards=unseen[key], shares=seen["shares"])  # fmt: skip
    row = {k: float(v) for k, v in row.items()}
    row.update(env=env, method="soups", seed=seed, sec=time.perf_counter() - t0, ref=list(cb.ref_point), epochs=budget)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="synthetic", choices=sorted(METHODS))
    ap.add_argument("--methods", nargs="+", default=None, help="default: every file of the env")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="4 rollouts per run, to check the script")
    ap.add_argument("--set", nargs="+", default=[], metavar="ARG",
                    help="extra CLI arguments for every run, e.g. --set=--model.init_args.control_weight=0.5")
    args = ap.parse_args(argv)
    methods = args.methods or list(METHODS[args.env])
    known = [*METHODS[args.env], *OPTIONAL.get(args.env, ())]
    bad = [m for m in methods if m not in known]
    if bad:
        ap.error(f"unknown methods for {args.env}: {bad}; known: {known}")
    jobs = [(args.env, m, s, args.quick, tuple(args.set)) for m in methods for s in args.seeds]
    rows = list(run_in_workers(run_job, jobs, args.workers)) if args.workers > 1 else [run_job(j) for j in jobs]
    by: dict[str, list[dict[str, Any]]] = {m: [r for r in rows if r["method"] == m] for m in methods}

    def stat(method: str, key: str) -> tuple[float, float]:
        return mean_sd(r.get(key, float("nan")) for r in by.get(method, []))

    print(f"reference point {rows[0]['ref']} (fixed in the YAML); {rows[0]['epochs']} rollouts per run; seeds {args.seeds}")
    head = ("env", "method", *(c[1] for c in COLUMNS))
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in methods:
        cells = []
        for key, _, nd in COLUMNS:
            mu, sd = stat(m, key)
            cells.append("—" if mu != mu else (f"{mu:.{nd}f}" if len(args.seeds) == 1 else f"{mu:.{nd}f} ± {sd:.{nd}f}"))
        print(f"| {args.env} | {m} | " + " | ".join(cells) + " |")

    def mean(method: str, key: str) -> float:
        return stat(method, key)[0]

    checks = []
    if "moc" in methods:
        checks.append(("MOC: Kendall τ > 0.6", mean("moc", "kendall_tau") > 0.6))
    if {"moc", "linear"} <= set(methods):
        checks.append(("HV(MOC) ≥ HV(linear)", mean("moc", "hv_seen") >= mean("linear", "hv_seen")))
        if args.env != "synthetic3":
            checks.append(("MOC: mean |s − p| below linear's", mean("moc", "ctl_error") < mean("linear", "ctl_error")))
            checks.append(("linear is bang-bang (most points within 0.1 of an extreme)", mean("linear", "extreme_frac") > 0.5))
    if "moc" in methods and args.env.startswith("synthetic"):
        checks.append(("MOC: local order rate on the union grid ≥ 0.8", mean("moc", "local_order_rate_union") >= 0.8))
    if {"moc", "fixed"} <= set(methods):
        checks.append(("HV(MOC) > HV(fixed)", mean("moc", "hv_seen") > mean("fixed", "hv_seen")))
        checks.append(("fixed: a single point (spread below a quarter of MOC's)",
                       mean("fixed", "diversity") < 0.25 * mean("moc", "diversity")))  # fmt: skip
    if {"linear", "fixed"} <= set(methods):
        checks.append(("HV(linear) > HV(fixed)", mean("linear", "hv_seen") > mean("fixed", "hv_seen")))
    if {"moc", "soups"} <= set(methods):
        checks.append(("HV(MOC) ≥ HV(Rewarded Soups)", mean("moc", "hv_seen") >= mean("soups", "hv_seen")))
    print()
    for name, ok in checks:
        print(f"{'held' if ok else 'NOT held'}: {name}")
    fmt = lambda x: "nan" if x != x else f"{x:.4f}"  # noqa: E731
    print(f"RESULT moc_hv={fmt(mean('moc', 'hv_seen'))} linear_hv={fmt(mean('linear', 'hv_seen'))} "
          f"moc_kendall_tau={fmt(mean('moc', 'kendall_tau'))}")  # fmt: skip
    return 0 if not math.isnan(mean("moc", "hv_seen")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
