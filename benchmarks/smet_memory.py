"""SMET memory benchmark: optimizer-state and gradient bytes, and step time, compact vs dense (smet.md §6, §7).

A LLaMA-like stack of linears (hidden 512, 4 blocks of q/k/v/o 512×512 and gate/up 512→1376,
down 1376→512; no attention or norms, they do not change the sparse layers' bytes) is trained on random
tokens with a squared-activation loss. Rows:

- ``dense`` d = 1: ``nn.Linear`` layers and ``torch.optim.AdamW`` (m, v fp32 and a scalar step per tensor).
- ``compact`` d ∈ {0.5, 0.25, 0.1}: ``CompactSparseLinear`` (values fp32 + int64 ``index``) and
  ``MaskedAdam`` with P3 (m, v fp32 and an int32 per-entry step, all of length c).

Bytes are measured from the tensors and compared with the formulas (smet.md §6): state 8c + 4c (int32
steps) vs 8n, gradients 4c vs 4n, index 8c. ``state_ratio`` = (state + gradients + index) of the sparse
layers over (state + gradients) of dense AdamW, so it is 2d with the int64 index (1.33d without it).
Step time = median wall time of forward + backward + optimizer step (CPU, this machine's threads).

Run: ``python benchmarks/smet_memory.py`` (≈1 min on CPU). The last line is
``RESULT state_ratio_d0.1=<x> state_ratio_d0.5=<y> step_time_ratio_d0.1=<z>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainer.sparse import CompactSparseLinear, MaskedAdam, compactify_linears

SPARSE = (r"\.(q|k|v|o|gate|up|down)$",)


class SMETBenchBlock(nn.Module):
    """q/k/v/o and a SwiGLU MLP as plain linears (the shapes of a LLaMA block)."""

    def __init__(self, hidden: int, ff: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False) for _ in range(4))
        self.gate = nn.Linear(hidden, ff, bias=False)
        self.up = nn.Linear(hidden, ff, bias=False)
        self.down = nn.Linear(ff, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.o(torch.sigmoid(self.q(x)) * self.k(x) + self.v(x))
        return x + self.down(F.silu(self.gate(x)) * self.up(x))


def build(hidden: int, ff: int, blocks: int, density: float | None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(*(SMETBenchBlock(hidden, ff) for _ in range(blocks)))
    if density is not None:
        compactify_linears(model, density, include=SPARSE, seed=0)
    return model


def sparse_tensors(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
    """(parameter, index or None, dense numel) of each sparse-layer weight."""
    out = []
    for mod in model.modules():
        if isinstance(mod, CompactSparseLinear):
            out.append((mod.values, mod.index, mod.dense_numel))
        elif isinstance(mod, nn.Linear):
            out.append((mod.weight, None, mod.weight.numel()))
    return out


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def run(density: float | None, args: argparse.Namespace) -> dict[str, float]:
    model = build(args.hidden, args.ff, args.blocks, density)
    if density is None:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    else:
        opt = MaskedAdam(model.parameters(), lr=1e-4, state_policy="P3", warmup_steps=100, reset_step=1)
        opt.attach_masks({p: idx for p, idx, _ in sparse_tensors(model)})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.tokens, args.hidden, generator=g)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    tensors = sparse_tensors(model)
    n = sum(numel for _, _, numel in tensors)
    c = sum(p.numel() for p, _, _ in tensors)
    state = sum(nbytes(v) for p, _, _ in tensors for v in opt.state[p].values() if isinstance(v, torch.Tensor))
    grads = sum(nbytes(p.grad) for p, _, _ in tensors)
    index = sum(nbytes(idx) for _, idx, _ in tensors if idx is not None)
    scalar_steps = sum(nbytes(opt.state[p]["step"]) for p, _, _ in tensors)
    formula = 8 * n if density is None else 8 * c + 4 * c  # smet.md §6: 8c + b·c with b = 4 (int32)
    return dict(
        n=n, c=c, state=state, formula=formula + scalar_steps, grads=grads, index=index,
        step_s=statistics.median(times),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--ff", type=int, default=1376)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    rows = {"dense": run(None, args)}
    for d in (0.5, 0.25, 0.1):
        rows[f"compact d={d}"] = run(d, args)
    dense = rows["dense"]
    dense_total = dense["state"] + dense["grads"]
    header = (
        f"{'layout':<16}{'active':>12}{'state B':>12}{'formula B':>12}{'grad B':>12}{'index B':>12}"
        f"{'ratio':>8}{'ratio-idx':>10}{'s/step':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios = {}
    for name, r in rows.items():
        total = r["state"] + r["grads"] + r["index"]
        ratio = total / dense_total
        ratios[name] = ratio
        print(
            f"{name:<16}{r['c']:>12,d}{r['state']:>12,d}{r['formula']:>12,d}{r['grads']:>12,d}{r['index']:>12,d}"
            f"{ratio:>8.3f}{(total - r['index']) / dense_total:>10.3f}{r['step_s']:>10.4f}"
        )
    step_ratio = rows["compact d=0.1"]["step_s"] / dense["step_s"]
    print(
        f"RESULT state_ratio_d0.1={ratios['compact d=0.1']:.4f} state_ratio_d0.5={ratios['compact d=0.5']:.4f} "
        f"step_time_ratio_d0.1={step_ratio:.4f}"
    )


if __name__ == "__main__":
    main()
