"""SMET memory benchmark: optimizer-state and gradient bytes of the sparse layers, and step time (smet.md §6, §7).

A real ``SMETLlama`` (LLaMA h512, L4, ff1376, 8 heads, vocab 4096; sparse q/k/v/o/gate/up/down, embedding and
head dense) trains on random tokens (batch 8 × 128). Rows, one per layout × d:

- ``dense AdamW`` (d = 1): ``torch.optim.AdamW`` on plain ``nn.Linear`` weights (m, v fp32 + a scalar step);
- ``dense layout`` at d: full-size weights with a bool mask and ``MaskedAdam`` P3 (m, v fp32 and int32 s_i, all
  full size: no saving, the layout NeuroTrails and most DST codes use);
- ``compact int32`` / ``compact int16`` at d: ``CompactSparseLinear`` (c values + an int32 index) and
  ``MaskedAdam`` P3 with int32 or int16 (saturating) per-entry step counters, all of length c.

Bytes are measured from the tensors of the sparse layers and compared with smet.md §6: optimizer state
8c + b·c (b = 4 int32, 2 int16) against 8n for dense Adam (the scalar step of each tensor, 4 bytes, is listed
apart), gradients 4c against 4n; index 4c (int32), mask n bytes (bool). ``state_ratio`` = (optimizer state +
gradients + index or mask) of the sparse layers ÷ (optimizer state + gradients) of dense AdamW: the issue's
"state of a 10%-dense model against dense AdamW, index overhead included"; by the formulas it is
(12 + b + 4)c / 12n = 1.5d for compact int16, 1.67d for compact int32. ``with weights`` adds the weights
themselves on both sides (4c values vs 4n). Step time = median wall time of forward + backward + optimizer
step over the timed steps; the rows are measured in turn ``--repeats`` times and the fastest median is kept.

Run: ``python benchmarks/smet_memory.py`` (≈ 2 min on 2 cores). The last line is
``RESULT state_ratio_d0.1=<x> state_ratio_d0.5=<y> step_time_ratio_d0.1=<z> ...`` with the compact int16
layout (the paper-scale YAMLs' setting) against dense AdamW.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.smet import SMETLlama  # noqa: E402
from trainer.sparse import MaskedAdam  # noqa: E402
from trainer.sparse.compact import compact_layers  # noqa: E402
from trainer.sparse.init import init_masks_, uniform_counts  # noqa: E402

LAYOUTS = ("dense AdamW", "dense layout", "compact int32", "compact int16")
DENSITIES = (0.5, 0.25, 0.1)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def build(layout: str, density: float, args: argparse.Namespace) -> tuple[SMETLlama, torch.optim.Optimizer]:
    torch.manual_seed(0)
    kind = "compact" if layout.startswith("compact") else "dense"
    model = SMETLlama(shape="llama_tiny", vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.ff,
                      num_attention_heads=8, num_hidden_layers=args.layers, max_position_embeddings=256,
                      density=1.0 if layout == "dense AdamW" else density, layout=kind)  # fmt: skip
    if layout == "dense AdamW":
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    step_dtype = "int16" if layout.endswith("int16") else "int32"
    opt = MaskedAdam(model.parameters(), lr=1e-4, state_policy="P3", warmup_steps=100, reset_step=1, step_dtype=step_dtype)
    entries = model.mask_set()
    if kind == "dense":
        masks = [e.mask for e in entries.values()]
        init_masks_(masks, uniform_counts([m.numel() for m in masks], density), seed=0,
                    weights=[e.weight for e in entries.values()])  # fmt: skip
    opt.attach_masks({e.weight: e.mask for e in entries.values()})
    return model, opt


def measure(layout: str, density: float, args: argparse.Namespace) -> dict[str, float]:
    model, opt = build(layout, density, args)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 4096, (args.batch, args.seq), generator=g)}
    batch["labels"] = torch.randint(0, 4096, (args.batch, args.seq), generator=g)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        model.batch_loss(batch).backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    layers = compact_layers(model)
    entries = model.mask_set()
    n = c = state = scalar = grads = index = weights = 0
    for e in entries.values():
        p = e.weight
        numel = layers[id(p)].dense_numel if e.layout == "compact" else p.numel()
        active = p.numel() if e.layout == "compact" else (int(e.mask.sum()) if layout != "dense AdamW" else numel)
        n, c = n + numel, c + active
        for key, v in opt.state[p].items():
            if key == "step":
                scalar += nbytes(v)
            else:
                state += nbytes(v)
        grads += nbytes(p.grad)
        weights += nbytes(p)
        if layout != "dense AdamW":
            index += nbytes(e.mask)  # compact: int32 index; dense layout: the bool mask
    b = {"dense AdamW": 0, "dense layout": 4, "compact int32": 4, "compact int16": 2}[layout]
    size = n if layout.startswith("dense") else c
    formula = 8 * size + b * size  # smet.md §6: 8c + b·c (compact); full size for the dense layouts
    return dict(n=n, c=c, state=state, formula=formula, scalar=scalar, grads=grads, index=index, weights=weights,
                step_s=statistics.median(times))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ff", type=int, default=1376)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    cases = [("dense AdamW", 1.0)] + [(lay, d) for d in DENSITIES for lay in LAYOUTS[1:]]
    rows: dict[tuple[str, float], dict[str, float]] = {}
    for _ in range(args.repeats):
        for case in cases:
            r = measure(*case, args)
            if case not in rows or r["step_s"] < rows[case]["step_s"]:
                rows[case] = r
    base = rows[("dense AdamW", 1.0)]
    base_total = base["state"] + base["grads"]
    header = (f"{'layout':<15}{'d':>5}{'active':>11}{'state B':>12}{'formula B':>12}{'grad B':>11}{'index B':>11}"
              f"{'state_ratio':>12}{'with weights':>13}{'s/step':>8}{'vs AdamW':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    out: dict[tuple[str, float], tuple[float, float]] = {}
    for (layout, d), r in rows.items():
        ratio = (r["state"] + r["grads"] + r["index"]) / base_total
        with_w = (r["state"] + r["grads"] + r["index"] + r["weights"]) / (base_total + base["weights"])
        speed = r["step_s"] / base["step_s"]
        out[(layout, d)] = (ratio, speed)
        print(f"{layout:<15}{d:>5}{r['c']:>11,d}{r['state']:>12,d}{r['formula']:>12,d}{r['grads']:>11,d}{r['index']:>11,d}"
              f"{ratio:>12.4f}{with_w:>13.4f}{r['step_s']:>8.3f}{speed:>9.3f}")  # fmt: skip
        assert r["state"] == r["formula"], f"{layout} d={d}: measured state {r['state']} != formula {r['formula']}"
    print(f"(scalar step tensors, not in the state column: {base['scalar']} B per layout; formula check passed)")
    print(
        f"RESULT state_ratio_d0.1={out[('compact int16', 0.1)][0]:.4f} state_ratio_d0.5={out[('compact int16', 0.5)][0]:.4f} "
        f"step_time_ratio_d0.1={out[('compact int16', 0.1)][1]:.4f} "
        f"state_ratio_int32_d0.1={out[('compact int32', 0.1)][0]:.4f} "
        f"step_time_ratio_dense_layout_d0.1={out[('dense layout', 0.1)][1]:.4f}"
    )


if __name__ == "__main__":
    main()
