"""When Data Is Scarce: Scaling Sparse Language Models with Repeated Training.

B. Wu, Q. Xiao, Okanovic, Sternal, van Keulen, Pechenizkiy, E. Mocanu, Hoefler, D.C. Mocanu; arXiv 2606.01155
(ICML 2026; code github.com/boqian333/sparse-dc-scaling).

The paper pre-trains dynamically sparse LLaMA models for several epochs on a limited unique budget and fits
a scaling law ``L(N, d, U, D)`` in active parameters, unique tokens, repetition and density. Sparsity
delays data saturation (repeated epochs stay useful longer), the loss-optimal density with fixed data is
moderate (about 50%) and the compute-optimal sparsity is higher and grows with the data budget
(sparse_scaling.md §1).

The pieces:

- this module: ``SparseScalingLlama``, the sparse LLaMA of SMET (``modules.smet.SMETLlama``: compact sparse
  q/k/v/o/gate/up/down, embedding and head dense, ``MaskedAdam``) with the paper's accounting: N by the
  counting rule of sparse_scaling.md §3 (``trainer.scaling_law.llama_n_total``: the blocks plus *one*
  vocabulary matrix), N_a = d·N, and the data counters ``data/epoch``, ``data/tokens_seen``,
  ``data/unique_tokens`` that the sweep's results table and ``trainer fit-law`` read back;
- ``datamodules.RepeatedTokensDataModule``: U unique tokens, ``epochs`` passes, each reshuffled with seed =
  epoch index, exact mid-epoch resume;
- ``callbacks.SparseTopology(preset: sparse_dc)`` (ΔT 100, p0 0.1 cosine_floor, magnitude drop, random
  grow) and ``callbacks.RegrowthWarmup`` (P3: W 20, reset_step 5, m_damping; lr = lr_dense / d)
  (dst_core §11; sparse_scaling.md §3 "Training protocol");
- the law: ``trainer.scaling_law`` (``SparseDCScalingLaw``, ``PUBLISHED``, ``MUENNIGHOFF_C4``, the staged
  fit, the optimal-density analyses) behind ``trainer fit-law`` and ``trainer predict-law``;
- sweeps: ``trainer sweep --config yaml/sparse_scaling/sweep_*.yaml`` (``trainer.sweep``) expands a grid
  over (model size, density, unique tokens, epochs) into plain run YAMLs and tabulates their results.

YAML: ``yaml/sparse_scaling/smoke.yaml``, ``plays_tiny_repeat.yaml`` (the miniature base),
``sweep_plays_tiny.yaml`` (the miniature grid of sparse_scaling.md §7b), ``c4_llama*_base.yaml`` and
their sweeps (paper scale), ``law_published.yaml`` and ``law_roundtrip.yaml``.

Deviations and choices:

- The dense baseline is the same module at ``density: 1.0`` (all entries active, so ``MaskedAdam`` is
  Adam and ``SparseTopology`` has nothing to drop or grow); the paper's dense runs use plain Adam.
- Shapes other than the authors' "240m" (h896/L18) are not stated by the paper; ``LLAMA_SHAPES`` holds
  GaLore-style guesses and every dimension is a YAML override (sparse_scaling.md §3).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from modules.smet import SMET_SPARSE_LAYERS, SMETLlama
from trainer.scaling_law import llama_n_total
from trainer.sparse import MaskedAdam

__all__ = ["SparseScalingLlama"]


class SparseScalingLlama(SMETLlama):
    """Sparse LLaMA pre-training on repeated data, with the paper's parameter and token accounting.

    Everything of ``SMETLlama`` (shapes, layouts, injected optimizer and scheduler, ``val/loss``,
    ``val/ppl``) plus:

    - ``n_total``: N by the counting rule of sparse_scaling.md §3 (q, k, v, o, gate, up, down and both
      RMSNorms per block, plus one vocabulary matrix V·h, although embedding and head are untied);
      ``n_active`` = d·N, although embedding and head stay dense in training;
    - logged once at the start (and again, final, at the end of training): ``model/n_total``,
      ``model/n_active``, ``model/density`` and the datamodule's ``data/unique_tokens``,
      ``data/total_tokens``, ``data/epochs``; every step: ``data/tokens_seen`` (target tokens trained
      on, all ranks) and ``data/epoch`` (= tokens seen / U, the passes over the unique budget).

    Args:
        shape: a ``trainer.text.LLAMA_SHAPES`` name; ``None`` (default) needs ``pretrained``.
        pretrained: a model name or local path instead of a shape (the paper trains from scratch);
            default ``None``.
        vocab_size: override of the shape's vocabulary; ``None`` keeps it.
        hidden_size: override of the hidden size; ``None`` keeps it.
        intermediate_size: override of the SwiGLU width; ``None`` keeps it.
        num_attention_heads: override of the attention heads; ``None`` keeps it.
        num_hidden_layers: override of the number of decoder layers; ``None`` keeps it.
        max_position_embeddings: override of the context length; ``None`` keeps it.
        sparse_layers: the sparse linears (default q/k/v/o/gate/up/down; "embedding and head dense", §3).
        density: d in (0, 1]; 1.0 is the dense baseline. Default 0.5 ("d = 0.5", the paper's headline
            density; the grid is {1, 0.5, 0.25, 0.125, 0.0625}).
        layout: ``compact`` (default) or ``dense`` (for sharded strategies).
        optimizer: the injected optimizer; default ``trainer.sparse.MaskedAdam`` ("Adam (0.9, 0.999),
            wd 0", §3; the YAMLs set lr_dense).
        scheduler: the injected lr scheduler (``WarmupCosineLR`` with ``total_steps: null`` follows the
            run's length: "warm-up over 5% of total steps, then cosine to 0.1×", §3), or ``None`` (default).
        scheduler_interval: ``"step"`` (default) or ``"epoch"``.
    """

    unit_test_datamodule = "RepeatedTokensDataModule"

    def __init__(
        self,
        shape: str | None = None,
        pretrained: str | None = None,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        num_attention_heads: int | None = None,
        num_hidden_layers: int | None = None,
        max_position_embeddings: int | None = None,
        sparse_layers: tuple[str, ...] = SMET_SPARSE_LAYERS,
        density: float = 0.5,
        layout: str = "compact",
        optimizer: OptimizerCallable = MaskedAdam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__(
            shape=shape, pretrained=pretrained, vocab_size=vocab_size, hidden_size=hidden_size,
            intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
            num_hidden_layers=num_hidden_layers, max_position_embeddings=max_position_embeddings,
            sparse_layers=sparse_layers, density=density, layout=layout, optimizer=optimizer,
            scheduler=scheduler, scheduler_interval=scheduler_interval,
        )  # fmt: skip
        cfg = self.model.config
        # sparse_scaling.md §3 "Parameter counting": blocks + one vocabulary matrix; N_a = d·N
        self.n_total = llama_n_total(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
            num_key_value_heads=getattr(cfg, "num_key_value_heads", None),
            num_attention_heads=cfg.num_attention_heads,
        )  # fmt: skip
        self.n_active = float(density) * self.n_total
        self._unique_tokens = 0  # U of the datamodule, read at train start

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """A 2-layer h32 LLaMA (vocab 512, context 64), compact at d = 0.5."""
        return SMETLlama.unit_test_params()

    def _accounting(self) -> dict[str, float]:
        dm = getattr(self.trainer, "datamodule", None)
        stats = dm.token_stats() if hasattr(dm, "token_stats") else {}
        out = {"model/n_total": float(self.n_total), "model/n_active": float(self.n_active),
               "model/density": float(self.hparams.density)}  # fmt: skip
        out.update({f"data/{k}": float(stats[k]) for k in ("unique_tokens", "total_tokens", "epochs") if k in stats})
        return out

    def on_train_start(self) -> None:
        super().on_train_start()
        dm = getattr(self.trainer, "datamodule", None)
        self._unique_tokens = int(dm.token_stats().get("unique_tokens", 0)) if hasattr(dm, "token_stats") else 0
        for logger in self.loggers:
            logger.log_metrics(self._accounting(), step=self.global_step)

    def _data_counters(self) -> dict[str, torch.Tensor]:
        seen = self.tokens_seen.double()  # a tensor: no device sync in the training step
        out = {"data/tokens_seen": seen}
        if self._unique_tokens:
            out["data/epoch"] = seen / self._unique_tokens  # passes over the unique budget
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        for key, value in self._data_counters().items():
            self.log(key, value, on_step=True, on_epoch=False)
        return loss

    def on_train_end(self) -> None:
        """The final counters, whatever ``log_every_n_steps``: the results table reads D from here."""
        if self.trainer.fast_dev_run:
            return
        final = {**self._accounting(), **{k: float(v) for k, v in self._data_counters().items()}}
        for logger in self.loggers:
            logger.log_metrics(final, step=self.global_step)
            logger.save()
