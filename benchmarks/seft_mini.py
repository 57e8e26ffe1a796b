"""SEFT miniature (seft.md §7): repair a Wanda-pruned tiny LLaMA on a new domain, arm by arm, over seeds.

1. Pre-train the tiny LLaMA (h128, L4, vocab 4096, sequence 128) on domain A, the Shakespeare plays
   (``yaml/seft/plays_pretrain_llama_tiny.yaml``, 1,500 steps; done once and reused from ``--out``).
2. Every arm prunes it with Wanda (32 calibration blocks of A; the pruned base is cached, so all arms
   start from the same weights) and fine-tunes it on domain B, the interpreter's own standard-library
   Python source, for 400 steps (``yaml/seft/pycode_<arm>_s70.yaml``, sparsity by override):

   a none (the pruned base, validated only), b static_delta, c seft, d seft_noreact, e seft_magadapt,
   f lora_star (merged + Wanda re-pruned), g lora_dense (merged), h full_static (every active weight).

Columns: sparsity and arm; trainable parameters; optimizer state bytes; final sparsity of the exported
weights (after merging for LoRA; exact zeros over the target matrices); B (target) validation loss ± sd
and A (source) validation loss (forgetting) of the exported model (for LoRA* the merged and re-pruned one;
its unmerged adapter losses are kept in the JSON); reactivated positions and the Hamming distance of M to the
initial mask / n_keep (SEFT arms); s/step. Each finished run is written to ``<out>/<arm>_s<sp>_seed<k>.json``
and reused on the next call (``--fresh`` reruns).

Run: ``python benchmarks/seft_mini.py`` (8 arms × 2 sparsities × 3 seeds, ≈ 2–3 min per run on one core,
two at a time). ``--sparsities 0.7 --seeds 0`` for a quicker look. The last line is
``RESULT seft_loss_s70=<x> static_loss_s70=<y> lora_star_loss_s70=<z> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import mean_sd, run_in_workers  # noqa: E402

ARMS = ("none", "static_delta", "seft", "seft_noreact", "seft_magadapt", "lora_star", "lora_dense", "full_static")
LABELS = {
    "none": "a no fine-tuning",
    "static_delta": "b static delta",
    "seft": "c SEFT",
    "seft_noreact": "d SEFT no reactivation",
    "seft_magadapt": "e SEFT magnitude adapt",
    "lora_star": "f LoRA* (merge+re-prune)",
    "lora_dense": "g dense LoRA (merged)",
    "full_static": "h static-mask full FT",
}


def _offline() -> None:
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")


def pretrain(out: Path) -> Path:
    """The plays pre-training run (once); returns its run folder."""
    run = out / "pretrain"
    if sorted(run.glob("runs/seft/plays_pretrain_llama_tiny/version_*/checkpoints/last.ckpt")):
        return run / "runs" / "seft" / "plays_pretrain_llama_tiny"
    _offline()
    import torch

    torch.set_num_threads(2)
    from trainer.cli import TrainerCLI

    run.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run)
    try:
        t0 = time.perf_counter()
        cli = TrainerCLI(args=["fit", "--config", str(ROOT / "yaml" / "seft" / "plays_pretrain_llama_tiny.yaml"),
                               "--trainer.enable_progress_bar", "false"])  # fmt: skip
        print(f"pre-training: val/loss {float(cli.trainer.callback_metrics['val/loss']):.4f} "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    finally:
        os.chdir(cwd)
    return run / "runs" / "seft" / "plays_pretrain_llama_tiny"


def run_one(job: tuple[str, float, int, str, str, int]) -> dict:
    """Fine-tune (or only validate, arm ``none``) one arm at one sparsity and seed in this process."""
    arm, sparsity, seed, out, base, steps = job
    _offline()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import lm_eval_loss, seconds_per_step
    from callbacks.sparse_delta import SparseDeltaEvolution
    from trainer.cli import TrainerCLI
    from trainer.sparse.optim import optimizer_state_bytes

    tag = f"{arm}_s{round(sparsity * 100)}_seed{seed}"
    run_dir = Path(out) / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    yaml = ROOT / "yaml" / "seft" / f"pycode_{'static_delta' if arm == 'none' else arm}_s70.yaml"
    args = [
        "validate" if arm == "none" else "fit", "--config", str(yaml), "--seed_everything", str(seed),
        "--model.init_args.base_checkpoint", base, "--model.init_args.sparsity", str(sparsity),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    if arm != "none":
        args += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps)]
    t0 = time.perf_counter()
    cli = TrainerCLI(args=args)
    wall = time.perf_counter() - t0
    trainer, model = cli.trainer, cli.model
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    layers = model.sparse_deltas() if hasattr(model, "sparse_deltas") else {}
    react = sum(int((m.M & ~m.M0).sum()) for m in layers.values())
    ham = sum(int((m.M ^ m.M0).sum()) for m in layers.values())
    keep = sum(int(m.n_keep) for m in layers.values())
    evo = next((cb for cb in trainer.callbacks if isinstance(cb, SparseDeltaEvolution)), None)
    adapter_losses = None
    if arm == "lora_star":  # the deployable LoRA* is the merged and re-pruned model: evaluate that one
        adapter_losses = (metrics.get("val/target_loss"), metrics.get("val/source_loss"))
        metrics["val/target_loss"], metrics["val/source_loss"] = lm_eval_loss(model.export_model(), trainer.datamodule.val_dataloader())
    result = {
        "arm": arm, "sparsity": sparsity, "seed": seed,
        "target_loss": metrics.get("val/target_loss", float("nan")),
        "source_loss": metrics.get("val/source_loss", float("nan")),
        "final_sparsity": model.target_sparsity(),
        "mask_sparsity": (1.0 - sum(int(m.M.sum()) for m in layers.values()) / sum(m.M.numel() for m in layers.values()))
        if layers else float("nan"),
        "trainable": 0 if arm == "none" else sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer_bytes": optimizer_state_bytes(trainer.optimizers) if arm != "none" else 0,
        "reactivated": react, "hamming_over_keep": ham / keep if keep else float("nan"),
        "cycles": evo.cycles if evo is not None else 0,
        "s_per_step": seconds_per_step(trainer) if arm != "none" else float("nan"),
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": trainer.global_step,
        "adapter_losses": adapter_losses,  # LoRA*: the unmerged adapter model's losses, before re-pruning
    }  # fmt: skip
    (Path(out) / f"{tag}.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.7, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps (seft.md §7: 400)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_seft_mini"))
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs in --out")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = str(pretrain(out))
    results: dict[tuple[str, float, int], dict] = {}
    todo = []
    for sp in args.sparsities:
        for arm in args.arms:
            for seed in args.seeds:
                path = out / f"{arm}_s{round(sp * 100)}_seed{seed}.json"
                if path.is_file() and not args.fresh:
                    results[(arm, sp, seed)] = json.loads(path.read_text())
                else:
                    todo.append((arm, sp, seed, str(out), base, args.steps))
    if todo:
        print(f"running {len(todo)} run(s), {args.workers} at a time; finished runs go to {out}", flush=True)
        for i, r in enumerate(run_in_workers(run_one, todo, args.workers), 1):
            results[(r["arm"], r["sparsity"], r["seed"])] = r
            print(f"[{i}/{len(todo)}] {r['arm']} s={r['sparsity']} seed {r['seed']}: target loss "
                  f"{r['target_loss']:.4f}, sparsity {r['final_sparsity']:.4f}", flush=True)  # fmt: skip

    header = (f"{'s':>4} {'arm':<27}{'trainable':>10}{'opt MB':>8}{'final sp':>9}{'B val loss ± sd':>17}"
              f"{'A val loss':>11}{'react':>7}{'Ham/keep':>9}{'s/step':>8}{'seeds':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    summary: dict[str, float] = {}
    for sp in args.sparsities:
        for arm in args.arms:
            rs = [results[(arm, sp, s)] for s in args.seeds if (arm, sp, s) in results]
            if not rs:
                continue
            tl, tsd = mean_sd(r["target_loss"] for r in rs)
            sl, _ = mean_sd(r["source_loss"] for r in rs)
            fs, _ = mean_sd(r["final_sparsity"] for r in rs)
            react, _ = mean_sd(r["reactivated"] for r in rs)
            ham, _ = mean_sd(r["hamming_over_keep"] for r in rs)
            sps, _ = mean_sd(r["s_per_step"] for r in rs)
            print(f"{sp:>4.1f} {LABELS[arm]:<27}{rs[0]['trainable']:>10,}{rs[0]['optimizer_bytes'] / 2**20:>8.2f}"
                  f"{fs:>9.4f}{tl:>10.4f} ± {tsd:.4f}{sl:>11.4f}{react:>7.0f}{ham:>9.4f}{sps:>8.3f}{len(rs):>6}")  # fmt: skip
            key = f"s{round(sp * 100)}"
            summary[f"{arm}_loss_{key}"] = tl
            summary[f"{arm}_sd_{key}"] = tsd
            summary[f"{arm}_sparsity_{key}"] = fs
            if "seft" in arm:
                summary[f"{arm}_reactivated_{key}"] = react
    for sp in args.sparsities:
        key = f"s{round(sp * 100)}"
        if f"seft_loss_{key}" in summary and f"static_delta_loss_{key}" in summary:
            summary[f"gap_static_minus_seft_{key}"] = summary[f"static_delta_loss_{key}"] - summary[f"seft_loss_{key}"]
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
