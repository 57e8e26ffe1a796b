"""SEFT: Leave it to the Specialist: Repair Sparse LLMs with Sparse Fine-Tuning via Sparsity Evolution.

Xiao, Ansell, Wu, Yin, Pechenizkiy, Liu, D.C. Mocanu; arXiv 2505.24037 (CPAL 2026; code
github.com/QiaoXiao7282/SEFT). Spec: ``seft.md``.

An LLM is pruned post-training (Wanda or SparseGPT, ``trainer.sparse.pruning``), then repaired by
fine-tuning a sparse set of k = ρ·n deltas per target matrix. Every K steps the set evolves: drop the
smallest |δ|, grow by the dense gradient, where growth may *reactivate* weights the pruning removed,
and adapt: prune back by the sensitivity |θ·∂L/∂θ| so the model stays exactly at the target sparsity
(``trainer.sparse.seft``; the cycle is driven by ``callbacks.SparseDeltaEvolution``).

Classes:

- :class:`SEFTCausalLM`: the pruned causal LM with its fine-tuning arm ``trainable``:
  ``delta`` (SEFT with the callback; the static-delta baseline without it), ``all_active`` (static-mask
  fine-tuning of every active weight, Wanda's ``dense_ft``) or ``dense`` (dense fine-tuning, sparsity
  given up);
- :class:`SEFTLoRABaseline`: LoRA (through ``peft``) on the same targets over the pruned base; the
  exported model is merged (``merge``), merged and Wanda re-pruned to the target (``merge_reprune``, the
  paper's LoRA*), or left unmerged (``none``). ``val/sparsity`` is always measured after merging.

Batches are ``{"input_ids", "labels"[, "attention_mask"]}`` with labels already shifted
(``TextCorpusDataModule``, ``InstructionDataModule``). Validation loader i is logged as
``val/<val_names[i]>_loss`` and ``_ppl`` (``target`` and ``source`` by default; seft.md §8), and loader 0
also as ``val/loss``.

YAML: ``yaml/seft/`` (smoke, the miniature of seft.md §7 on the plays → Python source, the SmolLM2 lane
and the paper-scale LLaMA/Mistral files).

Deviations and choices (every open choice of seft.md §3 is an option, with the spec's default):

- The base is pruned in ``setup`` from calibration batches of the datamodule
  (``HasCalibration.calibration_batches``; its own training blocks otherwise), cached by a hash of the
  weights, data and options. On resume the checkpoint's buffers replace the fresh pruning.
- ``prune_method: none`` keeps the loaded weights and takes M = (W ≠ 0) (a model saved by
  ``trainer prune``); the explicit mask is used from then on, never ``W == 0`` (seft.md §4, pitfall 4).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from modules.smet import SMET_SPARSE_LAYERS, sparse_layer_paths
from trainer.data import run_seed
from trainer.optimization import allow_in_weights_only_checkpoints, configure_optimization, split_decay_groups
from trainer.protocols import HasCalibration
from trainer.sparse import MaskedAdam, attach_masks
from trainer.sparse.pruned_base import prune_targets_
from trainer.sparse.pruning import PRUNING_METHODS, check_pattern_fits, check_sparsity, parse_pattern
from trainer.sparse.rng import layer_generator
from trainer.sparse.seft import SparseDeltaLinear, delta_count, init_delta_positions, sparse_delta_layers
from trainer.text import build_causal_lm, causal_lm_loss, check_lm_compat, default_cache_dir, llama_config

__all__ = ["SEFTCausalLM", "SEFTLoRABaseline", "SEFT_TARGETS", "TRAINABLE_ARMS", "LORA_MERGES"]

allow_in_weights_only_checkpoints(MaskedAdam)

#: seft.md §2: "every target linear (q, k, v, o, gate, up, down)"
SEFT_TARGETS: tuple[str, ...] = SMET_SPARSE_LAYERS
TRAINABLE_ARMS: tuple[str, ...] = ("delta", "all_active", "dense")
LORA_MERGES: tuple[str, ...] = ("none", "merge", "merge_reprune")
PRUNE_METHODS: tuple[str, ...] = (*PRUNING_METHODS, "none")


# ----------------------------------------------------------------------------------------------
# shared: model, pruning, evaluation
# ----------------------------------------------------------------------------------------------


def resolve_base_checkpoint(path: str) -> str:
    """A checkpoint file, or a run folder (``runs/seft/plays_pretrain_llama_tiny``: the newest
    ``version_N/checkpoints/last.ckpt`` in it). ValueError when nothing is there."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("version_*/checkpoints/last.ckpt"), key=lambda c: int(c.parts[-3].split("_")[-1]))
        found = found or sorted(p.glob("checkpoints/last.ckpt"))
        if found:
            return str(found[-1])
    elif p.is_file():
        return str(p)
    raise ValueError(f"base_checkpoint {path!r} does not exist (run the pre-training YAML first)")


def _load_base_checkpoint(model: nn.Module, path: str, targets: list[str], weight_attr: str) -> None:
    """Load the ``model.*`` weights of a Lightning checkpoint (e.g. the plays pre-training run) into a
    model whose targets already hold their weight as ``<target>.<weight_attr>`` (``W0`` for deltas,
    ``base_layer.weight`` under LoRA)."""
    path = resolve_base_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = {k[len("model."):]: v for k, v in ckpt.get("state_dict", ckpt).items() if k.startswith("model.")}
    sd = {k: v for k, v in sd.items() if not k.endswith("weight_mask")}
    for t in targets:
        if f"{t}.weight" in sd and weight_attr != "weight":
            sd[f"{t}.{weight_attr}"] = sd.pop(f"{t}.weight")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    own = tuple(f"{t}." for t in targets)  # the arm's own buffers and adapters (M, I, values, lora_*)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq") and not (k.startswith(own) and not k.endswith(f".{weight_attr}"))]
    if missing or unexpected:
        raise ValueError(f"base_checkpoint {path!r} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


class _PrunedLMBase(LightningModule):
    """Model building, base pruning in ``setup``, evaluation and sparsity accounting of the SEFT arms."""

    unit_test_datamodule = "TextCorpusDataModule"
    base_pattern: str

    def _build(self, optimizer: Any, scheduler: Any, scheduler_interval: str) -> None:
        """The model, targets, checks and metrics from the saved hyperparameters (shared by both classes).

        The optimizer and scheduler factories come as arguments: under LightningCLI the saved
        hyperparameters hold their config, not the callables."""
        hp = self.hparams
        shape, pretrained, dtype, pattern = hp.shape, hp.pretrained, hp.dtype, hp.prune_pattern
        check_sparsity(hp.sparsity)  # a sparsity outside [0, 1) fails before any work
        parse_pattern(pattern)
        if hp.prune_method not in PRUNE_METHODS:
            raise ValueError(f"unknown prune_method {hp.prune_method!r}; valid: {PRUNE_METHODS}")
        if (shape is None) == (pretrained is None):
            raise ValueError(f"{type(self).__name__}: give exactly one of shape (a LLAMA_SHAPES name) and pretrained")
        allow_in_weights_only_checkpoints(optimizer, scheduler)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        overrides = {k: hp[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                                        "num_hidden_layers", "max_position_embeddings")}  # fmt: skip
        if shape is not None:
            self.model = build_causal_lm(llama_config(shape, overrides), dtype=dtype)
        else:
            overrides = {k: v for k, v in overrides.items() if v is not None}
            self.model = build_causal_lm(overrides, pretrained=pretrained, dtype=dtype)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps modules' modes
        self.target_paths = sparse_layer_paths(self.model, tuple(hp.targets))
        if not self.target_paths:
            raise ValueError(f"{type(self).__name__}: targets {tuple(hp.targets)} select no nn.Linear of the model")
        for p in self.target_paths:
            check_pattern_fits(self.model.get_submodule(p).in_features, pattern, p)
        self.base_pattern = pattern
        self.val_names = tuple(hp.val_names)
        self.val_metrics = nn.ModuleList(MeanMetric() for _ in self.val_names)
        self.test_loss = MeanMetric()
        self.register_buffer("base_pruned", torch.zeros((), dtype=torch.bool), persistent=True)

    # -- pruning ----------------------------------------------------------------------------------

    def _prune_targets(self) -> tuple[dict[str, nn.Module], str]:
        """``{path: module holding the prunable weight}`` and the weight's attribute name."""
        raise NotImplementedError

    def _datamodule(self) -> Any:
        if getattr(self, "_prune_datamodule", None) is not None:
            return self._prune_datamodule
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _calibration(self) -> list[torch.Tensor]:
        hp = self.hparams
        if hp.prune_method in ("magnitude", "none"):
            return []
        dm = self._datamodule()
        if isinstance(dm, HasCalibration):
            # the source (e.g. the plays while fine-tuning on Python) is the datamodule's calibration_source
            return dm.calibration_batches(hp.calibration_samples, hp.calibration_seq_len, None, hp.calibration_seed)
        if dm is None:
            raise ValueError(f"{type(self).__name__}: pruning by {hp.prune_method} needs calibration data (a datamodule)")
        rows, out = 0, []
        for batch in dm.train_dataloader():  # fallback: the first training rows
            ids = batch["input_ids"][: hp.calibration_samples - rows]
            out.append(ids)
            rows += ids.shape[0]
            if rows >= hp.calibration_samples:
                break
        return out

    @torch.no_grad()
    def prune_base(self, datamodule: Any = None) -> dict[str, torch.Tensor]:
        """Prune the targets (dst_core §10) and set up the arm's masks; returns the keep masks.

        Calibration comes from ``datamodule`` (default: the trainer's); ``setup("fit")`` calls this once,
        and ``trainer prune`` calls it with the YAML's datamodule.
        """
        hp = self.hparams
        self._prune_datamodule = datamodule
        self.load_base_checkpoint()
        targets, attr = self._prune_targets()
        if hp.prune_method == "none":
            masks = {n: getattr(m, attr) != 0 for n, m in targets.items()}
        else:
            masks = prune_targets_(
                self.model, targets, self._calibration(), hp.prune_method, hp.sparsity, hp.prune_pattern,
                weight_attr=attr, cache_dir=default_cache_dir() / "pruned" if hp.prune_cache else None,
                blocksize=hp.sparsegpt_blocksize, damp=hp.sparsegpt_damp, sequential=hp.prune_sequential,
            )  # fmt: skip
        self._after_pruning(masks)
        self.base_pruned.fill_(True)
        return masks

    def _after_pruning(self, masks: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Check sequence and vocabulary against the model, then prune the base (once per process)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "seq_len"):
            check_lm_compat(self.model, seq_len=int(dm.seq_len), vocab_size=getattr(dm, "vocab_size", None))
        if not bool(self.base_pruned):  # validate/test without a checkpoint evaluate the pruned base too
            self.prune_base()

    def load_base_checkpoint(self) -> None:
        """Load ``base_checkpoint`` into the model (once; before pruning). Kept out of ``__init__`` so a
        config check builds the module without the pre-training run."""
        path = self.hparams.get("base_checkpoint")
        if path is not None and not getattr(self, "_base_loaded", False):
            _load_base_checkpoint(self.model, path, self.target_paths, self._base_weight_attr())
            self._base_loaded = True

    def _base_weight_attr(self) -> str:
        return "weight"

    # -- evaluation ---------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over the non-ignored (answer or packed) target tokens (``HasBatchLoss``)."""
        return causal_lm_loss(self(batch["input_ids"], batch.get("attention_mask")), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.batch_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        metric, name = self.val_metrics[dataloader_idx], self.val_names[dataloader_idx]
        n_tok = int((batch["labels"] != -100).sum())
        metric.update(self.batch_loss(batch), weight=max(n_tok, 1))
        self.log(f"val/{name}_loss", metric, on_step=False, on_epoch=True, add_dataloader_idx=False,
                 prog_bar=dataloader_idx == 0)  # fmt: skip
        if dataloader_idx == 0:
            self.log("val/loss", metric, on_step=False, on_epoch=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for name, metric in zip(self.val_names, self.val_metrics):
            if metric.update_count > 0:
                self.log(f"val/{name}_ppl", torch.exp(metric.compute()), sync_dist=True)
        if bool(self.base_pruned):
            self.log("val/sparsity", self.target_sparsity(), sync_dist=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_loss.update(self.batch_loss(batch), weight=max(int((batch["labels"] != -100).sum()), 1))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)

    # -- export -------------------------------------------------------------------------------------

    def final_weights(self) -> dict[str, torch.Tensor]:
        """``{target path: the weight the exported model will have}``."""
        raise NotImplementedError

    @torch.no_grad()
    def target_sparsity(self) -> float:
        """Fraction of exact zeros over all target matrices of the exported model (after merging)."""
        zeros = total = 0
        for w in self.final_weights().values():
            zeros += int((w == 0).sum())
            total += w.numel()
        return zeros / total

    def export_model(self) -> nn.Module:
        """A plain transformers model with the final weights (``save_pretrained`` works on it)."""
        raise NotImplementedError

    @torch.no_grad()
    def _plain_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of the model whose targets are plain ``nn.Linear`` layers holding ``weights``: delta
        layers rebuilt, LoRA layers replaced by their base layer, ``weight_mask`` buffers dropped."""
        import copy

        model = copy.deepcopy(self.model)
        for path in self.target_paths:
            mod = model.get_submodule(path)
            if isinstance(mod, SparseDeltaLinear):
                lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                dtype=mod.W0.dtype, device=mod.W0.device)  # fmt: skip
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            else:
                lin = getattr(mod, "base_layer", mod)  # peft's LoRA layer wraps the original linear
                lin._buffers.pop("weight_mask", None)
            lin.weight.copy_(weights[path])
            model.set_submodule(path, lin)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save_pretrained(self, path: str) -> None:
        """Save the exported model (and nothing else) as a transformers checkpoint."""
        self.export_model().save_pretrained(path)

    def configure_optimizers(self) -> Any:
        return configure_optimization(
            split_decay_groups(self, {}), self.optimizer_factory, self.scheduler_factory, self.scheduler_interval
        )


# ----------------------------------------------------------------------------------------------
# SEFT, static delta, static-mask and dense fine-tuning
# ----------------------------------------------------------------------------------------------


class SEFTCausalLM(_PrunedLMBase):
    """A pruned causal LM fine-tuned through sparse deltas, or by the static-mask / dense baselines.

    ``trainable: delta`` replaces every target linear by a ``trainer.sparse.seft.SparseDeltaLinear``
    (buffers W0, M, M0, I; k = floor(ρ·n + 0.5) trainable ``values`` v, seft.md §3). Add the
    ``SparseDeltaEvolution`` callback for SEFT; without it I and M stay fixed (the static-delta
    baseline). ``all_active`` trains every active weight under the fixed mask (``weight_mask`` buffers,
    masked optimizer); ``dense`` trains the whole model from the pruned start.

    Args:
        shape: a ``trainer.text.LLAMA_SHAPES`` name (``llama_tiny`` for the miniature); ``None``
            (default) needs ``pretrained``.
        pretrained: a model name, local path or packaged alias (``smollm2-135m-instruct``); default ``None``.
        base_checkpoint: a Lightning checkpoint, or a run folder (its newest ``last.ckpt``), whose
            ``model.*`` weights initialise a ``shape`` model (the plays pre-training run of seft.md §7);
            default ``None``.
        dtype: weight dtype of the model and so of W0 (``bfloat16`` at 7B scale); ``None`` (default)
            keeps float32. The deltas v are float32 always.
        vocab_size: override of the shape's vocabulary; ``None`` keeps it.
        hidden_size: override of the hidden size; ``None`` keeps it.
        intermediate_size: override of the MLP width; ``None`` keeps it.
        num_attention_heads: override of the attention heads; ``None`` keeps it.
        num_hidden_layers: override of the decoder layers; ``None`` keeps it.
        max_position_embeddings: override of the context length; ``None`` keeps it.
        targets: target linears (names or path regexes); default q/k/v/o/gate/up/down (seft.md §2).
        trainable: ``delta`` (default), ``all_active`` or ``dense``.
        sparsity: target sparsity s* in [0, 1); default 0.7 (the paper's headline setting; seft.md §3
            lists 0.5–0.8).
        prune_method: ``wanda`` (default, seft.md §3), ``sparsegpt``, ``magnitude`` or ``none`` (the
            weights are already pruned: M = (W ≠ 0)).
        prune_pattern: ``unstructured`` (default; per row for Wanda) or ``N:M`` such as ``2:4``.
        calibration_samples: calibration sequences; default 128 ("128 × 2048-token sequences of C4", Wanda).
            They come from the datamodule's ``calibration_batches`` (its ``calibration_source``: the plays
            while fine-tuning on Python, seft.md §7; ``dataset:allenai/c4:en`` at paper scale).
        calibration_seq_len: calibration sequence length; ``None`` (default) = the datamodule's.
        calibration_seed: seed of the calibration draw; default 0 (Wanda).
        sparsegpt_blocksize: SparseGPT column block B; default 128 (dst_core §10).
        sparsegpt_damp: SparseGPT damping λ (× mean diag H); default 0.01 (dst_core §10).
        prune_sequential: prune block by block on already-pruned outputs (dst_core §10); default true.
        prune_cache: reuse a pruned base from the cache (keyed by weights, data and options); default true.
        delta_budget: ρ, trainable deltas per matrix as a fraction of its entries; default 0.01 ("not
            stated by the paper ... default 0.01", SpIEL; seft.md §3). Must not exceed 1 − s*.
        val_names: names of the validation loaders, logged as ``val/<name>_loss``; default
            ``("target", "source")``.
        optimizer: the injected optimizer; default ``trainer.sparse.MaskedAdam`` (the YAMLs set lr and
            ε = 1e-6, seft.md §3). Its per-entry steps are P2 over v (seft.md §3).
        scheduler: the injected lr scheduler, or ``None`` (default).
        scheduler_interval: ``"step"`` (default) or ``"epoch"``.
    """

    def __init__(
        self,
        shape: str | None = None,
        pretrained: str | None = None,
        base_checkpoint: str | None = None,
        dtype: str | None = None,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        num_attention_heads: int | None = None,
        num_hidden_layers: int | None = None,
        max_position_embeddings: int | None = None,
        targets: tuple[str, ...] = SEFT_TARGETS,
        trainable: str = "delta",
        sparsity: float = 0.7,
        prune_method: str = "wanda",
        prune_pattern: str = "unstructured",
        calibration_samples: int = 128,
        calibration_seq_len: int | None = None,
        calibration_seed: int = 0,
        sparsegpt_blocksize: int = 128,
        sparsegpt_damp: float = 0.01,
        prune_sequential: bool = True,
        prune_cache: bool = True,
        delta_budget: float = 0.01,
        val_names: tuple[str, ...] = ("target", "source"),
        optimizer: OptimizerCallable = MaskedAdam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE_ARMS:
            raise ValueError(f"SEFTCausalLM: trainable must be one of {TRAINABLE_ARMS}, got {trainable!r}")
        check_sparsity(sparsity)
        if trainable == "delta" and not 0.0 < delta_budget <= 1.0 - sparsity:
            raise ValueError(f"SEFTCausalLM: delta_budget must lie in (0, 1 − sparsity] = (0, {1 - sparsity:g}], got {delta_budget}")
        self.save_hyperparameters()
        self._build(optimizer, scheduler, scheduler_interval)
        for p in self.model.parameters():
            p.requires_grad_(trainable == "dense")
        if trainable == "delta":  # seft.md §3: only v has requires_grad
            for path in self.target_paths:
                lin = self.model.get_submodule(path)
                self.model.set_submodule(path, SparseDeltaLinear(lin, delta_count(lin.weight.numel(), delta_budget)))
        elif trainable == "all_active":
            for path in self.target_paths:
                lin = self.model.get_submodule(path)
                lin.weight.requires_grad_(True)
                attach_masks(lin, (nn.Linear,))  # the explicit mask, never W == 0 (seft.md §4, pitfall 4)

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """A 2-layer h32 LLaMA (vocab 512), Wanda 50% from 4 calibration rows, ρ = 0.05."""
        return {"shape": "llama_tiny", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
                "sparsity": 0.5, "calibration_samples": 4, "prune_cache": False, "delta_budget": 0.05,
                "val_names": ("target",)}  # fmt: skip

    # -- HasSparseDeltas ------------------------------------------------------------------------------

    def sparse_deltas(self) -> dict[str, SparseDeltaLinear]:
        """The delta layers in module order (empty unless ``trainable: delta``)."""
        return sparse_delta_layers(self.model)

    # -- pruning --------------------------------------------------------------------------------------

    def _base_weight_attr(self) -> str:
        return "W0" if self.hparams.trainable == "delta" else "weight"

    def _prune_targets(self) -> tuple[dict[str, nn.Module], str]:
        return {p: self.model.get_submodule(p) for p in self.target_paths}, self._base_weight_attr()

    def _after_pruning(self, masks: dict[str, torch.Tensor]) -> None:
        seed = run_seed()
        for i, path in enumerate(self.target_paths):
            mod, mask = self.model.get_submodule(path), masks[path].to(torch.bool)
            if self.hparams.trainable == "delta":
                mod.M.copy_(mask)
                mod.M0.copy_(mask)
                mod.W0.mul_(mask)
                mod.n_keep.fill_(int(mask.sum()))
                # seft.md §3 "initial I": random_in_mask (SpIEL), seeded by (run seed, layer)
                mod.I.copy_(init_delta_positions(mask, mod.I.numel(), "random_in_mask", layer_generator(seed, "seft_init", 0, i)))
                mod.values.data.zero_()
            else:
                mod.weight.data.mul_(mask)
                if self.hparams.trainable == "all_active":
                    mod.weight_mask.copy_(mask)

    def on_fit_start(self) -> None:
        """Hand the fixed masks (all_active) or the compact slots of v (delta, P2) to the masked optimizer."""
        opt = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if not isinstance(opt, MaskedAdam):
            return
        if self.hparams.trainable == "delta":
            # v is aligned slot by slot with I: compact layout with per-slot steps (seft.md §3: P2)
            opt.attach_masks({m.values: m.I for m in self.sparse_deltas().values()}, state_policy="P2")
        elif self.hparams.trainable == "all_active":
            masks = {self.model.get_submodule(p).weight: self.model.get_submodule(p).weight_mask for p in self.target_paths}
            opt.attach_masks(masks, state_policy="P1")

    # -- export ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def final_weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for path in self.target_paths:
            mod = self.model.get_submodule(path)
            out[path] = mod.export_weight() if isinstance(mod, SparseDeltaLinear) else mod.weight.detach()
        return out

    @torch.no_grad()
    def export_model(self) -> nn.Module:
        """W_final = (W0 + scatter(v at I)) ⊙ M in plain linears (seft.md §3, export)."""
        return self._plain_model(self.final_weights())

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": params, "weight_decay": 0.0}] if self.hparams.trainable == "delta" else split_decay_groups(self, {})
        return configure_optimization(groups, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval)


# ----------------------------------------------------------------------------------------------
# LoRA over the pruned base
# ----------------------------------------------------------------------------------------------


class SEFTLoRABaseline(_PrunedLMBase):
    """LoRA (``peft``) on the target linears of a pruned base: the LoRA and LoRA* baselines of SEFT.

    The base is pruned in ``setup`` exactly as in :class:`SEFTCausalLM` and frozen; only the LoRA factors
    train. ``val/sparsity`` is measured on W + (α/r)·B·A, i.e. after merging: merging destroys
    unstructured sparsity (Wanda issues #10, #83; seft.md §4 pitfall 2), so ``merge: merge_reprune``
    (LoRA*) prunes the merged weights back with Wanda to the target, using the calibration data again.

    Args:
        shape: a ``trainer.text.LLAMA_SHAPES`` name; ``None`` (default) needs ``pretrained``.
        pretrained: a model name, local path or packaged alias; default ``None``.
        base_checkpoint: a Lightning checkpoint (or run folder) whose ``model.*`` weights initialise a
            ``shape`` model; loaded in ``setup``.
        dtype: weight dtype of the model (``bfloat16`` at 7B scale); ``None`` (default) keeps float32.
        vocab_size: override of the shape's vocabulary; ``None`` keeps it.
        hidden_size: override of the hidden size; ``None`` keeps it.
        intermediate_size: override of the MLP width; ``None`` keeps it.
        num_attention_heads: override of the attention heads; ``None`` keeps it.
        num_hidden_layers: override of the decoder layers; ``None`` keeps it.
        max_position_embeddings: override of the context length; ``None`` keeps it.
        targets: target linears; default q/k/v/o/gate/up/down.
        sparsity: target sparsity s* of the base (and of the re-pruning); default 0.7.
        prune_method: base pruning; default ``wanda``.
        prune_pattern: ``unstructured`` (default) or ``N:M``.
        calibration_samples: calibration sequences; default 128.
        calibration_seq_len: calibration length; ``None`` = the datamodule's.
        calibration_seed: calibration seed; default 0.
        sparsegpt_blocksize: SparseGPT block; default 128.
        sparsegpt_damp: SparseGPT damping; default 0.01.
        prune_sequential: block-by-block pruning; default true.
        prune_cache: reuse a cached pruned base; default true.
        rank: LoRA rank r; default 8 (seft.md §7).
        alpha: LoRA α; default 16 (scale α/r = 2, the common LLM-Adapters setting; not stated by the paper).
        dropout: LoRA dropout; default 0.05 (LLM-Adapters; not stated by the paper).
        merge: ``merge_reprune`` (default, LoRA*), ``merge`` (dense LoRA, merged) or ``none``.
        val_names: names of the validation loaders; default ``("target", "source")``.
        optimizer: the injected optimizer; default ``torch.optim.AdamW``.
        scheduler: the injected lr scheduler, or ``None`` (default).
        scheduler_interval: ``"step"`` (default) or ``"epoch"``.
    """

    def __init__(
        self,
        shape: str | None = None,
        pretrained: str | None = None,
        base_checkpoint: str | None = None,
        dtype: str | None = None,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        num_attention_heads: int | None = None,
        num_hidden_layers: int | None = None,
        max_position_embeddings: int | None = None,
        targets: tuple[str, ...] = SEFT_TARGETS,
        sparsity: float = 0.7,
        prune_method: str = "wanda",
        prune_pattern: str = "unstructured",
        calibration_samples: int = 128,
        calibration_seq_len: int | None = None,
        calibration_seed: int = 0,
        sparsegpt_blocksize: int = 128,
        sparsegpt_damp: float = 0.01,
        prune_sequential: bool = True,
        prune_cache: bool = True,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.05,
        merge: str = "merge_reprune",
        val_names: tuple[str, ...] = ("target", "source"),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        if merge not in LORA_MERGES:
            raise ValueError(f"SEFTLoRABaseline: merge must be one of {LORA_MERGES}, got {merge!r}")
        if rank < 1:
            raise ValueError(f"SEFTLoRABaseline: rank must be positive, got {rank}")
        self.save_hyperparameters()
        self._build(optimizer, scheduler, scheduler_interval)
        from peft import LoraConfig, inject_adapter_in_model

        for p in self.model.parameters():
            p.requires_grad_(False)
        # peft full-matches a string against module paths: exactly our targets
        pattern = "|".join(re.escape(p) for p in self.target_paths)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
        inject_adapter_in_model(config, self.model)

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        """A 2-layer h32 LLaMA (vocab 512), Wanda 50%, rank 4."""
        return {"shape": "llama_tiny", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
                "sparsity": 0.5, "calibration_samples": 4, "prune_cache": False, "rank": 4,
                "val_names": ("target",)}  # fmt: skip

    def _lora_layers(self) -> dict[str, nn.Module]:
        return {p: self.model.get_submodule(p) for p in self.target_paths}

    def _base_weight_attr(self) -> str:
        return "base_layer.weight"

    def _prune_targets(self) -> tuple[dict[str, nn.Module], str]:
        return {f"{p}.base_layer": m.base_layer for p, m in self._lora_layers().items()}, "weight"

    def _after_pruning(self, masks: dict[str, torch.Tensor]) -> None:
        for path, mod in self._lora_layers().items():
            mod.base_layer.weight.data.mul_(masks[f"{path}.base_layer"].to(torch.bool))

    @torch.no_grad()
    def merged_weights(self) -> dict[str, torch.Tensor]:
        """W + (α/r)·B·A per target (peft's ``get_delta_weight``), without touching the model."""
        return {p: m.base_layer.weight.detach() + m.get_delta_weight("default").to(m.base_layer.weight.dtype)
                for p, m in self._lora_layers().items()}  # fmt: skip

    @torch.no_grad()
    def final_weights(self) -> dict[str, torch.Tensor]:
        merged = self.merged_weights()
        if self.hparams.merge != "merge_reprune":
            return merged
        return self._reprune(merged)

    def _reprune(self, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LoRA*: Wanda re-prune of the merged weights to the target (calibrated on the merged model)."""
        model = self._plain_model(merged)
        targets = {p: model.get_submodule(p) for p in self.target_paths}
        method = "magnitude" if self.hparams.prune_method in ("magnitude", "none") else "wanda"
        prune_targets_(model, targets, self._calibration() if method == "wanda" else [], method,
                       self.hparams.sparsity, self.hparams.prune_pattern, cache_dir=None,
                       sequential=self.hparams.prune_sequential)  # fmt: skip
        return {p: t.weight.detach().clone() for p, t in targets.items()}

    @torch.no_grad()
    def export_model(self) -> nn.Module:
        if self.hparams.merge == "none":
            raise ValueError("SEFTLoRABaseline: merge: none keeps the adapters apart; choose merge or merge_reprune to export")
        return self._plain_model(self.final_weights())
