"""REOBench miniature sweep (reobench.md §7): train each arm on clean data, test it on clean + 12 corruptions × 5.

    python benchmarks/reobench_sweep.py [--arms A B D S] [--seeds 0] [--workers 1] [--quick] [--set=--KEY=VALUE ...]

Arms are exactly the YAML files of ``yaml/reobench/`` built with ``TrainerCLI(run=False)``:

| arm | YAML | what |
|---|---|---|
| A | ``scenes_cnn.yaml`` | tiny CNN, 8 epochs on clean 64 px procedural scenes, no augmentation |
| B | ``scenes_cnn_rotaug.yaml`` | the same with horizontal flip + rotation 0–360° |
| D | ``digits_cnn.yaml`` | the tiny CNN on scikit-learn's digits (real images) |
| S | ``scenes_seg.yaml`` | the segmentation net on Voronoi mosaics (mIoU) |

After ``fit``, ``trainer.test`` runs over the ``CorruptionGridDataModule`` and the numbers are those of the run's
``CorruptionSweepCallback`` (the same aggregates TensorBoard and ``robustness.csv`` get). Corrupted cells are cached
(``$PAPER_TRAINER_CACHE/corruptions`` or the system temp dir), so a second sweep only trains and infers.

For each arm it prints the table of reobench.md §7 (corruption, clean, s1..s5, mean, abs_drop, rel_drop%, and the
family means), the Spearman correlation of severity and metric per corruption, and whether the §7 expectations held.
``monotone_fraction`` is the fraction of (corruption, severity step s → s+1) pairs where the metric does not rise
(M_{c,s+1} ≤ M_{c,s}; ties, e.g. a corruption that never changes a prediction, count as not rising); it is pooled
over the classification arms that ran (A, B, D). The last line is
``RESULT clean_acc=<x> mean_corrupt_acc=<y> worst_type=<name> monotone_fraction=<z>`` for arm A (clean accuracy, the
mean accuracy over all 60 corrupted cells, the corruption with the largest relative drop), with ``monotone_fraction``
pooled as above. ``--quick`` trains on 32 px scenes for one epoch to check the script (numbers meaningless).
"""

from __future__ import annotations

import argparse
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

YAML = ROOT / "yaml" / "reobench"
ARMS = {"A": "scenes_cnn.yaml", "B": "scenes_cnn_rotaug.yaml", "D": "digits_cnn.yaml", "S": "scenes_seg.yaml"}
CLASSIFICATION = ("A", "B", "D")
#: corruptions whose metric must fall monotonically with severity (reobench.md §6, §7)
MUST_FALL = ("gaussian_noise", "salt_and_pepper_noise", "gaussian_blur", "motion_blur", "haze", "clouds", "data_gaps")
QUICK = {"scenes": ["--data.init_args.base.init_args.size", "32", "--data.init_args.base.init_args.train_per_class",
                    "30", "--data.init_args.base.init_args.test_per_class", "10", "--trainer.max_epochs", "1"],
         "digits": ["--trainer.max_epochs", "1"]}  # fmt: skip


def run_arm(job: tuple[str, int, bool, tuple[str, ...]]) -> dict[str, Any]:
    """Fit one arm's YAML, test it over the corruption grid, and return its sweep table and summary."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from trainer.cli import TrainerCLI

    torch.set_num_threads(1)
    arm, seed, quick, extra = job
    args = ["fit", "--config", str(YAML / ARMS[arm]), "--seed_everything", str(seed),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", tempfile.mkdtemp(prefix=f"reobench_{arm}_"), "--trainer.logger", "false",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    if quick:
        args += QUICK["digits" if arm == "D" else "scenes"]
    cli = TrainerCLI(args=args + list(extra), run=False)
    cb = next(c for c in cli.trainer.callbacks if type(c).__name__ == "CorruptionSweepCallback")
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return {"arm": arm, "seed": seed, "metric": cb.metric, "clean": float(cli.model.test_results["clean"]),
            "table": {c: list(v) for c, v in cb.table.items()}, "summary": cb.summary,
            "severities": list(cli.datamodule.severities), "fit_s": fit_s, "test_s": time.perf_counter() - t0}  # fmt: skip


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    import numpy as np
    from scipy.stats import spearmanr

    if len(set(ys)) < 2 or len(set(xs)) < 2:
        return float("nan")
    return float(spearmanr(np.asarray(xs), np.asarray(ys)).statistic)


def monotone_steps(table: dict[str, list[float]]) -> tuple[int, int]:
    """(non-rising steps, all steps) over every corruption's severity sequence."""
    ok = total = 0
    for row in table.values():
        for a, b in zip(row, row[1:]):
            ok += int(b <= a)
            total += 1
    return ok, total


def mean_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of one arm's clean metric, per-severity table and summary."""
    first = rows[0]
    table = {c: [mean_sd(r["table"][c][k] for r in rows)[0] for k in range(len(v))] for c, v in first["table"].items()}
    summary = {key: {m: mean_sd(r["summary"][key][m] for r in rows)[0] for m in first["summary"][key]}
               for key in first["summary"]}  # fmt: skip
    return {**first, "clean": mean_sd(r["clean"] for r in rows)[0], "table": table, "summary": summary,
            "clean_sd": mean_sd(r["clean"] for r in rows)[1], "fit_s": sum(r["fit_s"] for r in rows),
            "test_s": sum(r["test_s"] for r in rows)}  # fmt: skip


def print_arm(arm: str, res: dict[str, Any], n_seeds: int) -> None:
    sev = res["severities"]
    print(f"\n## arm {arm}: {ARMS[arm]} ({res['metric']}, mean over {n_seeds} seed(s); fit {res['fit_s']:.0f} s, "
          f"test {res['test_s']:.0f} s)")  # fmt: skip
    head = f"{'corruption':24s}{'clean':>7s}" + "".join(f"{'s' + str(s):>7s}" for s in sev)
    print(head + f"{'mean':>7s}{'abs_drop':>10s}{'rel_drop%':>11s}{'spearman':>10s}")
    for c, row in res["table"].items():
        s = res["summary"][c]
        rho = spearman(sev, row)
        print(f"{c:24s}{res['clean']:7.3f}" + "".join(f"{v:7.3f}" for v in row)
              + f"{s['mean']:7.3f}{s['abs_drop']:10.3f}{s['rel_drop']:11.2f}{rho:10.2f}")  # fmt: skip
    for fam in ("appearance", "geometric", "all"):
        s = res["summary"].get(f"family/{fam}")
        if s:
            print(f"{'mean(' + fam + ')':24s}{res['clean']:7.3f}" + " " * (7 * len(sev))
                  + f"{s['mean']:7.3f}{s['abs_drop']:10.3f}{s['rel_drop']:11.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=["A", "B", "D", "S"], choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--workers", type=int, default=1, help="arms × seeds run in this many processes")
    p.add_argument("--quick", action="store_true", help="tiny data, one epoch: checks the script only")
    p.add_argument("--set", action="append", default=[], metavar="--KEY=VALUE",
                   help="extra CLI overrides for every arm, e.g. --set=--trainer.max_epochs=2")  # fmt: skip
    args = p.parse_args(argv)
    arms = [a for a in args.arms if (YAML / ARMS[a]).is_file()]
    for a in set(args.arms) - set(arms):
        print(f"[skip] arm {a}: {ARMS[a]} does not exist", file=sys.stderr)
    jobs = [(a, s, args.quick, tuple(args.set)) for a in arms for s in args.seeds]
    if args.workers > 1:
        results = list(run_in_workers(run_arm, jobs, args.workers))
    else:
        results = [run_arm(j) for j in jobs]
    per_arm = {a: mean_table([r for r in results if r["arm"] == a]) for a in arms}
    for a, res in per_arm.items():
        print_arm(a, res, len(args.seeds))

    print("\n## expectations (reobench.md §7)")
    ok_steps = all_steps = 0
    for a in (a for a in CLASSIFICATION if a in per_arm):
        ok, n = monotone_steps(per_arm[a]["table"])
        ok_steps, all_steps = ok_steps + ok, all_steps + n
        print(f"arm {a}: {ok}/{n} severity steps do not raise accuracy")
    for a, res in per_arm.items():
        fails = [c for c in MUST_FALL if c in res["table"] and not spearman(res["severities"], res["table"][c]) <= -0.8]
        print(f"arm {a}: Spearman(severity, {res['metric']}) ≤ −0.8 for {', '.join(MUST_FALL)}: "
              + ("yes" if not fails else "no, not for " + ", ".join(fails)))  # fmt: skip
        drops = {c: res["summary"][c]["rel_drop"] for c in res["table"]}
        print(f"arm {a}: relative drops from {min(drops.values()):.2f} % ({min(drops, key=drops.get)}) "
              f"to {max(drops.values()):.2f} % ({max(drops, key=drops.get)})")  # fmt: skip
    if "A" in per_arm and "B" in per_arm:
        for c in ("rotate", "scale", "translate"):
            if c in per_arm["A"]["summary"]:
                da, db = per_arm["A"]["summary"][c]["rel_drop"], per_arm["B"]["summary"][c]["rel_drop"]
                print(f"{c}: relative drop A {da:.2f} % vs B {db:.2f} %: " + ("B smaller" if db < da else "B NOT smaller"))
    if "A" not in per_arm:
        print("RESULT needs arm A", file=sys.stderr)
        return 1
    a = per_arm["A"]
    cells = [v for row in a["table"].values() for v in row]
    worst = max(a["table"], key=lambda c: a["summary"][c]["rel_drop"])
    frac = ok_steps / all_steps if all_steps else float("nan")
    print(f"RESULT clean_acc={a['clean']:.4f} mean_corrupt_acc={sum(cells) / len(cells):.4f} worst_type={worst} "
          f"monotone_fraction={frac:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
