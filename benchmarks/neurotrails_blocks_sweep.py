"""NeuroTrails blocks sweep on the plays (neurotrails.md §7b): the Goldilocks picture of diversity vs loss.

For every b (decoder layers per head) in ``--blocks`` it trains the dense TreeNet
(``yaml/neurotrails/plays_llama_tiny_treenet.yaml``) and NeuroTrails (``plays_llama_tiny_neurotrails.yaml``,
d = 0.9, ΔT 50) with ``--model.init_args.blocks_in_head b``, plus the Single model, through the trainer CLI,
one run per worker process (one CPU thread each). From each run's last validation it reads the ensemble
perplexity, every head's perplexity and the pairwise disagreement, and it writes the Goldilocks plot
(disagreement on x, ensemble loss on y, one point per b and arm) to ``<out>/goldilocks.png``.

Finished runs are kept as ``<out>/<arm>_b<b>_seed<k>.json`` and reused (``--fresh`` reruns them).

Run: ``python benchmarks/neurotrails_blocks_sweep.py`` (b ∈ {1, 2, 4}, seed 0, 7 runs of 500 steps,
≈ 30 min on 2 cores). The last line is ``RESULT ...`` with, per run, the ensemble ppl and the checks of §7b.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import mean_sd, run_in_workers  # noqa: E402


def run_one(job: tuple[str, int, int, str]) -> dict:
    """Train one arm at one b and seed in this process; return its validation figures."""
    arm, b, seed, out = job
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    import torch

    torch.set_num_threads(1)
    from trainer.cli import TrainerCLI

    run_dir = Path(out) / f"{arm}_b{b}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    args = ["fit", "--config", str(ROOT / "yaml" / "neurotrails" / f"plays_llama_tiny_{arm}.yaml"),
            "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    if arm != "single":
        args += ["--model.init_args.blocks_in_head", str(b)]
    t0 = time.perf_counter()
    cli = TrainerCLI(args=args)
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    heads = [m[k] for k in sorted(m) if k.startswith("val/ppl_head")]
    result = {
        "arm": arm, "b": b, "seed": seed,
        "ppl_ensemble": m["val/ppl_ensemble"], "loss_ensemble": m["val/loss_ensemble"],
        "ppl_heads": heads, "ppl_head_mean": sum(heads) / len(heads),
        "disagreement": m["val/disagreement"],
        "params": sum(p.numel() for p in cli.model.parameters()),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    (Path(out) / f"{arm}_b{b}_seed{seed}.json").write_text(json.dumps(result, indent=1))
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, marker in (("treenet", "o"), ("neurotrails", "s"), ("single", "*")):
        pts = sorted((r["b"], r["disagreement"], r["loss_ensemble"]) for r in rows if r["arm"] == arm)
        if not pts:
            continue
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker=marker, label=arm, ls="-" if arm != "single" else "")
        for b, x, y in pts:
            if arm != "single":
                ax.annotate(f"b={b}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("disagreement between heads (pairs i < j)")
    ax.set_ylabel("ensemble validation loss (nats)")
    ax.set_title("blocks per head: diversity against ensemble loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_neurotrails_blocks"))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [("single", 0, s, str(out)) for s in args.seeds]
    jobs += [(arm, b, s, str(out)) for b in args.blocks for arm in ("treenet", "neurotrails") for s in args.seeds]
    rows, todo = [], []
    for job in jobs:
        path = out / f"{job[0]}_b{job[1]}_seed{job[2]}.json"
        if path.is_file() and not args.fresh:
            rows.append(json.loads(path.read_text()))
        else:
            todo.append(job)
    for i, r in enumerate(run_in_workers(run_one, todo, args.workers), 1):
        rows.append(r)
        print(f"[{i}/{len(todo)}] {r['arm']} b={r['b']} seed {r['seed']}: ppl {r['ppl_ensemble']:.2f}", flush=True)

    header = f"{'b':>3}  {'arm':<12}{'params':>12}{'ensemble ppl':>16}{'mean head ppl':>16}{'disagreement':>16}"
    print(header)
    print("-" * len(header))
    agg: dict[tuple[str, int], dict[str, float]] = {}
    for b, arm in [(0, "single")] + [(b, a) for b in args.blocks for a in ("treenet", "neurotrails")]:
        rs = [r for r in rows if r["arm"] == arm and r["b"] == b]
        if not rs:
            continue
        ppl, ppl_sd = mean_sd(r["ppl_ensemble"] for r in rs)
        head, _ = mean_sd(r["ppl_head_mean"] for r in rs)
        dis, dis_sd = mean_sd(r["disagreement"] for r in rs)
        agg[(arm, b)] = {"ppl": ppl, "head": head, "dis": dis}
        print(f"{b if arm != 'single' else '-':>3}  {arm:<12}{rs[0]['params']:>12,d}{ppl:>10.2f}±{ppl_sd:<5.2f}"
              f"{head:>16.2f}{dis:>10.4f}±{dis_sd:<5.4f}")  # fmt: skip
    plot(rows, out / "goldilocks.png")
    print(f"Goldilocks plot: {out / 'goldilocks.png'}")
    multi = [r for r in rows if r["arm"] != "single"]
    checks = {
        "ensemble_below_every_head_every_run": all(r["ppl_ensemble"] < min(r["ppl_heads"]) for r in multi),
        "neurotrails_le_treenet_every_b": all(
            agg[("neurotrails", b)]["ppl"] <= agg[("treenet", b)]["ppl"] for b in args.blocks
            if ("neurotrails", b) in agg and ("treenet", b) in agg
        ),
    }
    best = min((k for k in agg if k[0] != "single"), key=lambda k: agg[k]["ppl"], default=None)
    fields = {f"ppl_{a}_b{b}" if a != "single" else "ppl_single": v["ppl"] for (a, b), v in agg.items()}
    fields.update({f"dis_{a}_b{b}": v["dis"] for (a, b), v in agg.items() if a != "single"})
    print("checks (neurotrails.md §7b): " + ", ".join(f"{k}={v}" for k, v in checks.items())
          + (f", best multi-head run: {best[0]} b={best[1]}" if best else ""))  # fmt: skip
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in fields.items() if not math.isnan(v))
          + " " + " ".join(f"{k}={str(v).lower()}" for k, v in checks.items()) + f" seeds={len(args.seeds)}")  # fmt: skip


if __name__ == "__main__":
    main()
