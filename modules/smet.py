"""SMET: Memory-Efficient LLM Training with Dynamic Sparsity: From Stability to Practical Scaling.

Xiao, Wu, Okanovic, Sternal, van Keulen, E. Mocanu, Pechenizkiy, D.C. Mocanu, Hoefler; arXiv 2606.00888
(ICML 2026; code github.com/QiaoXiao7282/SMET).

Dynamic sparse training (DST) of a LLaMA from scratch. After every topology update the loss spikes; the
paper traces it to an Adam *cold start*: a regrown weight has zero moments while bias correction uses
the shared global step, so its first update is ≈ (1−β1)/√(1−β2) ≈ 3.16× the learning rate (smet.md §1).
SMET counts optimizer steps per entry, warms regrown entries up over W steps, scales the learning rate
by 1/density, and keeps weights, gradients and Adam state only for the active entries.

The pieces, each where every DST run can use it:

- this module: a causal LM (``trainer.text.build_causal_lm``: a GaLore-family LLaMA shape or a
  pretrained name/path) whose chosen linears (``sparse_layers``, default q/k/v/o/gate/up/down;
  embedding and ``lm_head`` dense, smet.md §2) are sparse in one of two layouts (dst_core §1):
  ``compact`` (default: ``trainer.sparse.CompactSparseLinear``, c values + an int32 index, so gradients
  and optimizer state are c long) or ``dense`` (full weights with a bool mask buffer);
- ``trainer.sparse.MaskedAdam``: per-entry step counters (P2), slot reset, warm-up (P3, both modes);
- ``callbacks.SparseTopology(preset: smet)``: magnitude drop, random growth, cosine-floor schedule
  (smet.md §3);
- ``callbacks.RegrowthWarmup``: P3 settings and lr = lr_dense / d on every param group (smet.md §3);
- ``callbacks.LossSpikeProbe``: the held-out loss around each update and regrown weights' |Δw|.

Loss: mean token cross-entropy over non-ignored targets (labels ``-100`` are masked out; the packed
corpus has no padding); ``val/ppl`` = exp(mean validation token loss) (smet.md §2).

YAML: ``yaml/smet/smoke.yaml``, ``plays_tiny_{dense,static,naive,localstep,smet,smet_nolrscale,
smet_linearlr}.yaml`` (the miniature of smet.md §7) and the paper-scale ``c4_llama*.yaml`` files.

Deviations and choices:

- Density lives in the module for both layouts (a compact layer's size is fixed at construction). The
  ``SparseTopology`` of a dense-layout run draws the masks with its own ``density``; ``on_train_start``
  raises if the two disagree beyond rounding, so YAMLs set it once and interpolate it.
- Our weights are c values + c int32 indices; the authors keep a dense weight with
  ``requires_grad=False`` (smet.md §3 allows either; we report ours).
- Growth of the paper's experiments is not stated (smet.md §3); random, as in the code, is the preset's
  default and any dst_core criterion can be set in YAML.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from trainer.data import run_seed
from trainer.optimization import (
    allow_in_weights_only_checkpoints,
    configure_optimization,
    fill_total_steps,
    split_decay_groups,
)
from trainer.sparse import MaskedAdam, MaskedModuleMixin, attach_masks, compactify_linears
from trainer.sparse.masks import mask_set_density
from trainer.text import build_causal_lm, causal_lm_loss, check_lm_compat, llama_config

__all__ = ["SMETLlama", "SMET_SPARSE_LAYERS", "sparse_layer_paths"]

allow_in_weights_only_checkpoints(MaskedAdam)  # the default optimizer, so a fresh process can load too

LAYOUTS = ("compact", "dense")
#: smet.md §2: "compact sparse linears for q, k, v, o, gate, up, down; embedding and lm_head dense"
SMET_SPARSE_LAYERS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def sparse_layer_paths(model: nn.Module, sparse_layers: tuple[str, ...]) -> list[str]:
    """Module paths of the ``nn.Linear`` layers chosen by ``sparse_layers``.

    An entry without regex metacharacters is a layer name matched against the path's last part
    (``q_proj``); any other entry is a regex searched in the full path (``layers\\.[0-3]\\.mlp``).
    """
    plain = {s for s in sparse_layers if re.fullmatch(r"[A-Za-z0-9_]+", s)}
    patterns = [re.compile(s) for s in sparse_layers if s not in plain]
    return [
        name
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear and (name.rsplit(".", 1)[-1] in plain or any(p.search(name) for p in patterns))
    ]


class SMETLlama(MaskedModuleMixin, LightningModule):
    """A causal LLaMA with sparse projections for SMET and other DST methods (smet.md §2).

    Batches are ``{"input_ids": [B, T], "labels": [B, T]}`` with labels already shifted
    (``TextCorpusDataModule``).

    Args:
        shape: a ``trainer.text.LLAMA_SHAPES`` name (``llama_tiny``, ``llama_60m``, ``llama_130m``,
            ``llama_240m``, ``llama_350m``, ``llama_1b``); ``None`` (default) needs ``pretrained``.
        pretrained: a model name or local path for ``AutoModelForCausalLM.from_pretrained`` instead of
            a shape (the paper trains from scratch; offline only a local path works); default ``None``.
        vocab_size: override of the shape's vocabulary (must hold the tokenizer); ``None`` keeps it.
        hidden_size: override of the hidden size; ``None`` keeps it.
        intermediate_size: override of the SwiGLU width; ``None`` keeps it.
        num_attention_heads: override of the attention heads; ``None`` keeps it.
        num_hidden_layers: override of the number of decoder layers; ``None`` keeps it.
        max_position_embeddings: override of the context length; ``None`` keeps it.
        sparse_layers: which linears are sparse: layer names (matched to the last part of the module
            path) or regexes over the full path; default q/k/v/o/gate/up/down (smet.md §2).
        density: density d of the sparse linears, in (0, 1]; default 0.5 ("d = 0.5 (scripts)", smet.md §3).
        layout: ``compact`` (default; values + int32 index, SMET's memory saving) or ``dense`` (full
            weights and a bool mask; the masks are drawn by ``SparseTopology``).
        optimizer: the injected optimizer; default ``trainer.sparse.MaskedAdam`` (β 0.9/0.999, ε 1e-8,
            weight decay 0, smet.md §3; the YAMLs set lr).
        scheduler: the injected lr scheduler, or ``None`` (default).
        scheduler_interval: ``"step"`` (default) or ``"epoch"``.
    """

    unit_test_datamodule = "TextCorpusDataModule"

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
        super().__init__()
        if not (isinstance(density, (int, float)) and 0.0 < float(density) <= 1.0):
            raise ValueError(f"SMETLlama: density must lie in (0, 1], got {density}")
        if layout not in LAYOUTS:
            raise ValueError(f"SMETLlama: layout must be one of {LAYOUTS}, got {layout!r}")
        if (shape is None) == (pretrained is None):
            raise ValueError("SMETLlama: give exactly one of shape (a LLAMA_SHAPES name) and pretrained")
        self.save_hyperparameters()
        allow_in_weights_only_checkpoints(optimizer, scheduler)  # hparams name these classes (load_from_checkpoint)
        overrides = {
            "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
            "max_position_embeddings": max_position_embeddings,
        }  # fmt: skip
        if shape is not None:
            self.model = build_causal_lm(llama_config(shape, overrides))
        else:
            self.model = build_causal_lm({k: v for k, v in overrides.items() if v is not None}, pretrained=pretrained)
        self.sparse_paths = sparse_layer_paths(self.model, tuple(sparse_layers))
        if not self.sparse_paths:
            raise ValueError(f"SMETLlama: sparse_layers {tuple(sparse_layers)} select no nn.Linear of the model")
        if layout == "compact":
            # dst_core §1: only the active entries are parameters; exact-count uniform init (dst_core §2)
            compactify_linears(self.model, float(density), include=[f"^{re.escape(p)}$" for p in self.sparse_paths],
                               seed=run_seed())  # fmt: skip
        else:
            for path in self.sparse_paths:
                attach_masks(self.model.get_submodule(path), (nn.Linear,))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        # HasLrMultiplier (dst_core §5): set by RegrowthWarmup.setup before configure_optimizers
        self.lr_multiplier = 1.0
        self.lr_scaling_groups = "all"
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long), persistent=True)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """A 2-layer h32 LLaMA (vocab 512, context 64), compact at d = 0.5."""
        return {"shape": "llama_tiny", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
                "density": 0.5}  # fmt: skip

    # ------------------------------------------------------------------------------------------
    # checks before training
    # ------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Reject a sequence longer than the model's context, or a vocabulary it cannot hold."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        strategy = type(self.trainer.strategy).__name__ if self._trainer is not None else ""
        if self.hparams.layout == "compact" and any(k in strategy for k in ("FSDP", "ModelParallel", "DeepSpeed")):
            raise ValueError(
                f"SMETLlama: the compact layout runs on one device or under DDP, not {strategy} (its values would "
                "be sharded away from their index); use layout: dense with a sharded preset"
            )
        if dm is not None and hasattr(dm, "seq_len"):
            check_lm_compat(self.model, seq_len=int(dm.seq_len), vocab_size=getattr(dm, "vocab_size", None))

    def sparse_density(self) -> float:
        """The measured density Σc / Σn of the sparse linears (1.0 while dense-layout masks are all True)."""
        return mask_set_density(self)

    def on_train_start(self) -> None:
        """Dense layout: the masks (drawn by SparseTopology in setup) must have the module's density.
        A scheduler with ``total_steps: null`` gets the run's optimizer steps."""
        fill_total_steps(self.trainer)
        if self.hparams.layout == "dense":
            d, entries = self.sparse_density(), self.mask_set()
            tol = len(entries) / sum(e.mask.numel() for e in entries.values())  # rounding: ≤ 1 entry per layer
            if abs(d - self.hparams.density) > tol:
                raise ValueError(
                    f"SMETLlama: the sparse layers have density {d:.4f} but the module's density is "
                    f"{self.hparams.density}; add a SparseTopology with density: ${{model.init_args.density}}"
                )
        dm = getattr(self.trainer, "datamodule", None)
        stats = dm.token_stats() if hasattr(dm, "token_stats") else {}
        for logger in self.loggers:  # token accounting of the corpus (issue 3: "unique tokens")
            logger.log_metrics({f"data/{k}": float(v) for k, v in stats.items()}, step=self.global_step)

    # ------------------------------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, V]``."""
        return self.model(input_ids=input_ids).logits

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean token loss of one batch, nothing logged (``trainer.protocols.HasBatchLoss``)."""
        return causal_lm_loss(self(batch["input_ids"]), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch)  # smet.md §2: causal-LM loss, pads (-100) masked out
        n_tok = (batch["labels"] != -100).sum()
        world = self.trainer.world_size if self._trainer is not None else 1
        self.tokens_seen += n_tok * world  # every rank sees its own shard of equal size
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/tokens_seen", self.tokens_seen.float(), on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, metric: MeanMetric, stage: str, batch: dict[str, torch.Tensor]) -> None:
        labels = batch["labels"]
        n_tok = int((labels != -100).sum())
        metric.update(self.batch_loss(batch), weight=n_tok)  # token-weighted mean over the split
        self.log(f"{stage}/loss", metric, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(self.val_loss, "val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(self.test_loss, "test", batch)

    def _log_ppl(self, metric: MeanMetric, stage: str) -> None:
        if metric.update_count > 0:
            self.log(f"{stage}/ppl", torch.exp(metric.compute()), sync_dist=True)  # smet.md §2: exp(mean loss)

    def on_validation_epoch_end(self) -> None:
        self._log_ppl(self.val_loss, "val")

    def on_test_epoch_end(self) -> None:
        self._log_ppl(self.test_loss, "test")

    def configure_optimizers(self) -> Any:
        # sparse (values or masked weights), dense 2-D (embedding, lm_head) and no-decay (norms) groups;
        # the lr multiplier 1/d goes on all of them or the sparse ones (dst_core §5) before the scheduler.
        return configure_optimization(
            split_decay_groups(self, self.mask_set()),
            self.optimizer_factory,
            self.scheduler_factory,
            self.scheduler_interval,
            lr_multiplier=self.lr_multiplier,
            lr_scaling_groups=self.lr_scaling_groups,
        )
