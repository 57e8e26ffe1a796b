"""NeuroTrails digits miniature (neurotrails.md §7a): four arms × seeds, one table, one RESULT line.

Runs ``yaml/neurotrails/digits_mlp_{single,full_ensemble,treenet,neurotrails}.yaml`` through
``trainer.cli.TrainerCLI`` (logger, progress bar, checkpoints and per-epoch validation off for
speed), then evaluates each trained model on the digits test split (450 images) and prints, per arm,
mean ± sd over seeds: total params, active params (non-zero mask entries of masked weights plus every
unmasked parameter), test accuracy, NLL and ECE of the ensemble (softmax of the mean logits), the mean
single-head accuracy and NLL, and the pairwise disagreement (mean over head pairs i < j).

Usage::

    python benchmarks/neurotrails_digits.py                 # 5 seeds × 60 epochs (≈ 3 min on 2 idle cores)
    python benchmarks/neurotrails_digits.py --seeds 2 --epochs 5   # quick check
    # ablations of the NeuroTrails arm: any CLI override, e.g. static sparse (no topology update)
    python benchmarks/neurotrails_digits.py --arms neurotrails --nt-set trainer.callbacks.init_args.delta_t=100000

The last line is ``RESULT key=value ...`` (see ``yaml/neurotrails/README.md``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import mean_sd  # noqa: E402
from trainer.metrics import ExpectedCalibrationError, offdiagonal_mean, pairwise_disagreement_matrix  # noqa: E402

ARMS = ("single", "full_ensemble", "treenet", "neurotrails")
QUIET = [
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_checkpointing", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.limit_val_batches", "0",
    "--trainer.num_sanity_val_steps", "0",
]


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, active): active counts True mask entries of masked weights and all of any other parameter."""
    masked = {id(e.weight): e.mask for e in model.mask_set().values()}
    total = active = 0
    for p in model.parameters():
        total += p.numel()
        active += int(masked[id(p)].sum()) if id(p) in masked else p.numel()
    return total, active


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    logits = model(x)  # [H, N, C]
    zbar = logits.mean(0)
    ece = ExpectedCalibrationError(n_bins=15)
    ece.update(zbar, y)
    head_nll = [F.cross_entropy(logits[k], y).item() for k in range(logits.shape[0])]
    head_acc = [(logits[k].argmax(-1) == y).float().mean().item() for k in range(logits.shape[0])]
    dis = offdiagonal_mean(pairwise_disagreement_matrix(logits) / y.numel()).item()
    return {
        "acc": (zbar.argmax(-1) == y).float().mean().item(),
        "nll": F.cross_entropy(zbar, y).item(),
        "ece": ece.compute().item(),
        "head_acc": statistics.fmean(head_acc),
        "best_head_acc": max(head_acc),
        "head_nll": statistics.fmean(head_nll),
        "dis": dis,
    }


def run_arm(arm: str, seed: int, epochs: int | None, overrides: list[str] = ()) -> dict[str, float]:
    from trainer.cli import TrainerCLI

    args = ["fit", "--config", str(ROOT / f"yaml/neurotrails/digits_mlp_{arm}.yaml"), "--seed_everything", str(seed)]
    args += QUIET + [f"--{o}" for o in overrides]
    if epochs is not None:
        args += ["--trainer.max_epochs", str(epochs)]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neurotrails_digits_") as tmp:
        cli = TrainerCLI(args=args + ["--trainer.default_root_dir", tmp], run=True, save_config_callback=None)
    seconds = time.perf_counter() - t0
    dm = cli.datamodule
    dm.setup("test")
    x, y = dm.test_set.tensors
    out = evaluate(cli.model, x, y)
    out["total"], out["active"] = count_params(cli.model)
    out["seconds"] = seconds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0..n-1); default 5")
    ap.add_argument("--epochs", type=int, default=None, help="override max_epochs (default: the YAML's 60)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    ap.add_argument(
        "--nt-set", action="append", default=[], metavar="KEY=VALUE",
        help="CLI override for the neurotrails arm only (repeatable), e.g. trainer.callbacks.init_args.delta_t=100000",
    )
    ns = ap.parse_args()
    arms = [a for a in ns.arms.split(",") if a]
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    runs: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    t_start = time.perf_counter()
    for seed in range(ns.seeds):
        for arm in arms:
            r = run_arm(arm, seed, ns.epochs, ns.nt_set if arm == "neurotrails" else [])
            runs[arm].append(r)
            print(
                f"[{arm:>13} seed {seed}] acc {r['acc']:.4f} nll {r['nll']:.4f} head nll {r['head_nll']:.4f} "
                f"dis {r['dis']:.4f} ({r['seconds']:.1f} s)",
                flush=True,
            )

    def fmt(arm: str, key: str, digits: int = 4, scale: float = 1.0) -> str:
        m, s = mean_sd([r[key] * scale for r in runs[arm]])
        return f"{m:.{digits}f} ± {s:.{digits}f}"

    print()
    print(f"NeuroTrails digits miniature: {ns.seeds} seeds, epochs {ns.epochs or 60}, test split of 450 images")
    if ns.nt_set:
        print("neurotrails arm overrides: " + " ".join(ns.nt_set))
    print("| arm | total params | active params | test acc (%) | NLL | ECE | mean head acc (%) | disagreement |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in arms:
        total = int(runs[arm][0]["total"])
        active = int(round(statistics.fmean(r["active"] for r in runs[arm])))
        print(
            f"| {arm} | {total:,} | {active:,} | {fmt(arm, 'acc', 2, 100)} | {fmt(arm, 'nll')} | {fmt(arm, 'ece')} "
            f"| {fmt(arm, 'head_acc', 2, 100)} | {fmt(arm, 'dis')} |"
        )

    # Checks of §7a (reported, not asserted: accuracy gaps may be within seed noise).
    mean = lambda arm, key: statistics.fmean(r[key] for r in runs[arm])  # noqa: E731
    result: dict[str, str] = {}
    if "neurotrails" in runs:
        nt = runs["neurotrails"]
        result["ensemble_minus_best_head"] = f"{statistics.fmean(r['acc'] - r['best_head_acc'] for r in nt):.4f}"
        if "single" in runs:
            result["neurotrails_minus_single"] = f"{mean('neurotrails', 'acc') - mean('single', 'acc'):.4f}"
    for arm in arms:
        result[f"{arm}_nll"] = f"{mean(arm, 'nll'):.4f}"
    for arm in arms:
        result[f"{arm}_acc"] = f"{mean(arm, 'acc'):.4f}"
    for arm in arms:
        if arm != "single":
            result[f"{arm}_dis"] = f"{mean(arm, 'dis'):.4f}"
    for arm in ("treenet", "neurotrails"):
        if arm in runs:
            ok = all(r["nll"] < r["head_nll"] for r in runs[arm])
            result[f"{arm}_ens_nll_below_head_nll_every_seed"] = str(ok).lower()
    if {"single", "treenet", "neurotrails"} <= set(runs):
        ordered = mean("neurotrails", "nll") <= mean("treenet", "nll") <= mean("single", "nll")
        result["nll_order_nt_le_tree_le_single"] = str(ordered).lower()
    if {"treenet", "neurotrails", "full_ensemble"} <= set(runs):
        ordered = mean("treenet", "dis") < mean("neurotrails", "dis") < mean("full_ensemble", "dis")
        result["dis_order_tree_lt_nt_lt_full"] = str(ordered).lower()
    if {"neurotrails", "full_ensemble"} <= set(runs):
        sd_full = mean_sd([r["acc"] for r in runs["full_ensemble"]])[1]
        gap = mean("full_ensemble", "acc") - mean("neurotrails", "acc")
        result["nt_within_1sd_of_full_ensemble"] = str(gap <= sd_full).lower()
    result["seconds"] = f"{time.perf_counter() - t_start:.0f}"
    print()
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
