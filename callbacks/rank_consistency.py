"""Check that every rank holds the same model: parameters and buffers (sparse masks included), plus the
datamodule's checkpoint state where the datamodule declares ``rank_identical_state = True``.

DESIGN.md: every random decision (which weights to grow, ...) must be identical on every rank.
The 2-rank tests append this callback; users can too (``callbacks+: [RankConsistencyCheck]``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

__all__ = ["RankConsistencyCheck", "model_digest"]


def model_digest(module: torch.nn.Module, buffers_only: bool = False) -> dict[str, str]:
    """``name -> sha1`` of every buffer (and parameter unless ``buffers_only``), full tensors."""
    out: dict[str, str] = {}
    items = list(module.named_buffers()) + ([] if buffers_only else list(module.named_parameters()))
    for name, t in items:
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        data = full.detach().cpu().contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        out[name] = hashlib.sha1(data.numpy().tobytes()).hexdigest()
    return out


class RankConsistencyCheck(pl.Callback):
    """All-gather a digest of the model every ``every_n_steps`` optimizer steps and at fit end;
    raise on any mismatch between ranks. A no-op on a single process.

    Hooks: ``on_train_batch_end`` (after other callbacks' topology updates when appended last),
    ``on_fit_end``. Optionally rank 0 writes the final digests to ``report_path`` (JSON).

    Args:
        every_n_steps: check period in optimizer steps; 0 = only at fit end.
        buffers_only: compare only buffers (masks), not parameters.
        report_path: where rank 0 writes ``{"checks": n, "world_size": w, "digest": {...}}``.
    """

    def __init__(self, every_n_steps: int = 1, buffers_only: bool = False, report_path: str | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.buffers_only = buffers_only
        self.report_path = report_path
        self.checks = 0
        self._last_step = -1

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"every_n_steps": 1}

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
        digest = model_digest(pl_module, self.buffers_only)
        dm = getattr(trainer, "datamodule", None)
        if getattr(dm, "rank_identical_state", False):  # e.g. a trajectory dataset and its labels (q_evolve.md §6)
            digest["datamodule.state_dict"] = hashlib.sha1(pickle.dumps(dm.state_dict())).hexdigest()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, digest)
            for rank, other in enumerate(gathered):
                bad = sorted(k for k in digest if other.get(k) != digest[k])
                if bad:
                    raise RuntimeError(
                        f"rank {rank} differs from rank {dist.get_rank()} at global step {trainer.global_step} "
                        f"in {len(bad)} tensor(s), e.g. {bad[:3]}"
                    )
        self.checks += 1
        return digest

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step != self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self._check(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        digest = self._check(trainer, pl_module)
        if self.report_path and trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(self.report_path)), exist_ok=True)
            with open(self.report_path, "w") as f:
                json.dump({"checks": self.checks, "world_size": trainer.world_size, "digest": digest}, f)
