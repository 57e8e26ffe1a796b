"""NeuroTrails: Training with Dynamic Sparse Heads as the Key to Effective Ensembling (vision part).

Grooten, Hasanov, Zhang, Xiao, Wu, Atashgahi, Sokar, Liu, Yin, E. Mocanu, Pechenizkiy, D.C. Mocanu;
arXiv 2505.17909 (code: github.com/bramgrooten/neurotrails).

A network is split into a shared backbone (trunk) and H heads; each head is a full predictor, so the
training loss is the *sum* of the heads' cross-entropies and the ensemble predicts from the mean of
the heads' logits. The whole multi-head network is trained with dynamic sparse training (one mask
set over every conv and linear weight, ERK initialisation, periodic drop/grow), supplied here by the
``SparseTopology`` callback (preset ``neurotrails_cv``). The paper finds that the evolving sparse
"trails" give the heads a Goldilocks level of prediction diversity: more than a dense multi-head net
(TreeNet), less than independent models, and the ensemble beats a full ensemble with far fewer
parameters (ResNet-50/ImageNet 78.1% vs 77.5% top-1).

Arms, all from one class per net:

- single model: ``num_heads: 1`` (no callback);
- TreeNet: ``ensemble_mode: shared``, ``num_heads: 3`` (dense, no callback);
- full ensemble: ``ensemble_mode: independent`` (H full copies sharing nothing);
- NeuroTrails: TreeNet plus ``SparseTopology`` (preset ``neurotrails_cv``) in ``trainer.callbacks``.

YAML files: ``yaml/neurotrails/smoke.yaml``, ``digits_mlp_{single,full_ensemble,treenet,neurotrails}.yaml``,
``cifar100_wrn28x10_{single,full_ensemble,treenet,neurotrails}.yaml``,
``imagenet_resnet50_{single,full_ensemble,treenet,neurotrails}.yaml``.

Deviations and design choices:

- **Density is the callback's knob, not the module's.** The spec lists ``density`` among the
  module's arguments; here the module only registers an all-True mask buffer on every conv/linear
  layer (``trainer.sparse.attach_masks``), and ``SparseTopology(density=...)`` decides which masks
  are sparse and how dense. One place holds the sparsity settings, and a dense arm is simply a run
  without the callback.
- **Disagreement** is logged as the mean over pairs i < j (``val/disagreement``); the authors' code
  averages the full H×H matrix including its zero diagonal, logged as ``val/disagreement_code``
  (= (H−1)/H × the former; neurotrails.md §4, defect 4).
- **Weight decay** is not applied to biases and normalisation parameters (``split_decay_groups``);
  the conv and linear weights get the paper's decay.
- Heads are indexed from 0 in metric names (``val/acc_head0`` is ``net.heads.0``).
- The digits MLP (trunk 64→256→256, heads 256→256→10) is the spec's miniature (§7a), not a net
  of the paper.
- ``val/nll`` is the NLL of the ensemble's predictive distribution softmax(z̄), the paper's
  prediction rule; it therefore equals ``val/loss_ensemble`` (CE of z̄), computed by the NLL metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from trainer.metrics import EnsembleDisagreement, ExpectedCalibrationError, NegativeLogLikelihood
from trainer.optimization import allow_in_weights_only_checkpoints, configure_optimization, split_decay_groups
from trainer.plots import heatmap_figure, log_figure
from trainer.sparse import MaskedModuleMixin, attach_masks
from trainer.text import llama_config
from trainer.vision import MultiHeadNet, make_heads, resnet_bottleneck_stack, split_stack, wrn_stack

__all__ = [
    "NeuroTrailsAveragedLM",
    "NeuroTrailsLM",
    "NeuroTrailsMLP",
    "NeuroTrailsResNet",
    "ensemble_logits",
    "multihead_loss",
]

ENSEMBLE_MODES = ("shared", "independent")
EVAL_STAGES = ("val", "test")


# --------------------------------------------------------------------------- formulas (Sec. 3)


def multihead_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, per_head): the SUM over heads of each head's mean cross-entropy.

    Args:
        logits: ``[H, B, C]`` logits of the H heads.
        target: ``[B]`` class indices.
    """
    h, b, c = logits.shape
    per_head = F.cross_entropy(logits.reshape(h * b, c), target.repeat(h), reduction="none").reshape(h, b).mean(1)
    return per_head.sum(), per_head  # Sec. 3: loss = Σ_k CE(z_k, y), a sum, not a mean


def ensemble_logits(logits: torch.Tensor) -> torch.Tensor:
    """The ensemble's logits z̄ = (1/H) Σ_k z_k from ``[H, B, C]`` head logits."""
    return logits.mean(dim=0)  # Sec. 3: predict with the mean of the heads' logits


# --------------------------------------------------------------------------- shared base


allow_in_weights_only_checkpoints(torch.optim.Adam)  # the default, so a fresh process can load too


class _NeuroTrailsBase(MaskedModuleMixin, LightningModule):
    """Training, evaluation, logging and sharding shared by every NeuroTrails net.

    A subclass builds ``self.net`` (a :class:`trainer.vision.MultiHeadNet` whose ``forward``
    returns ``[H, B, C]`` logits) and then calls :meth:`_finish_init`. The module implements
    ``trainer.protocols.HasMasks`` (all-True mask buffers on every conv/linear layer; the
    ``SparseTopology`` callback makes them sparse) and ``HasLrMultiplier``.
    """

    unit_test_datamodule = "DigitsDataModule"
    lr_multiplier: float = 1.0

    def __init__(
        self,
        num_heads: int,
        ensemble_mode: str,
        num_classes: int,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None,
        scheduler_interval: str,
        ece_bins: int,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if ensemble_mode not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble_mode must be one of {ENSEMBLE_MODES}, got {ensemble_mode!r}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        allow_in_weights_only_checkpoints(optimizer, scheduler)
        self.num_heads = num_heads
        self.ensemble_mode = ensemble_mode
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.ece_bins = ece_bins
        # Metrics: one set per stage (torchmetrics objects, synchronised across ranks).
        self.train_loss = MeanMetric()
        self.train_loss_heads = nn.ModuleList(MeanMetric() for _ in range(num_heads))
        self.eval_metrics = nn.ModuleDict({stage: self._make_eval_metrics() for stage in EVAL_STAGES})

    def _make_eval_metrics(self) -> nn.ModuleDict:
        h, c = self.num_heads, self.num_classes
        return nn.ModuleDict(
            {
                "loss_ensemble": MeanMetric(),
                "acc_ensemble": MulticlassAccuracy(num_classes=c, average="micro"),
                "acc_heads": nn.ModuleList(MulticlassAccuracy(num_classes=c, average="micro") for _ in range(h)),
                "loss_heads": nn.ModuleList(MeanMetric() for _ in range(h)),
                "nll": NegativeLogLikelihood(),
                "ece": ExpectedCalibrationError(n_bins=self.ece_bins),
                "disagreement": EnsembleDisagreement(num_members=h),
            }
        )

    def _finish_init(self) -> None:
        """Register the mask buffers once the net exists (``HasMasks``)."""
        attach_masks(self.net)

    # ------------------------------------------------------------------ forward and steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked head logits ``[H, B, C]``."""
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, per_head = multihead_loss(self(x), y)
        return self._log_train_losses(loss, per_head)

    def _log_train_losses(self, loss: torch.Tensor, per_head: torch.Tensor) -> torch.Tensor:
        """Log ``train/loss`` (the sum over heads) and ``train/loss_head{k}``; return ``loss``."""
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        for k, metric in enumerate(self.train_loss_heads):
            metric(per_head[k].detach())
            self.log(f"train/loss_head{k}", metric, on_step=True, on_epoch=True)
        return loss

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        logits = self(x)
        zbar = ensemble_logits(logits)
        m = self.eval_metrics[stage]
        m["loss_ensemble"].update(F.cross_entropy(zbar, y), weight=y.numel())
        m["acc_ensemble"].update(zbar, y)
        m["nll"].update(zbar, y)
        m["ece"].update(zbar, y)
        m["disagreement"].update(logits.argmax(dim=-1))
        for k in range(self.num_heads):
            m["acc_heads"][k].update(logits[k], y)
            m["loss_heads"][k].update(F.cross_entropy(logits[k], y), weight=y.numel())
        kw = {"on_step": False, "on_epoch": True}
        self.log(f"{stage}/loss_ensemble", m["loss_ensemble"], **kw)
        self.log(f"{stage}/acc_ensemble", m["acc_ensemble"], prog_bar=stage == "val", **kw)
        self.log(f"{stage}/nll", m["nll"], **kw)
        self.log(f"{stage}/ece", m["ece"], **kw)
        for k in range(self.num_heads):
            self.log(f"{stage}/acc_head{k}", m["acc_heads"][k], **kw)
            self.log(f"{stage}/loss_head{k}", m["loss_heads"][k], **kw)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Ensemble class probabilities softmax(z̄)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return ensemble_logits(self(x)).softmax(dim=-1)

    def _eval_epoch_end(self, stage: str) -> None:
        metric = self.eval_metrics[stage]["disagreement"]
        if metric.update_count == 0:
            return
        out = metric.compute()  # synchronised over ranks
        metric.reset()
        # Values are identical on every rank after compute(); sync_dist only silences the warning.
        self.log(f"{stage}/disagreement", out["mean"].float(), sync_dist=True)
        self.log(f"{stage}/disagreement_code", out["code"].float(), sync_dist=True)
        if self.num_heads > 1 and not self.trainer.sanity_checking:
            labels = [f"head{k}" for k in range(self.num_heads)]
            fig = heatmap_figure(out["matrix"].cpu().numpy(), labels, title=f"{stage} disagreement", fmt="{:.3f}")
            log_figure(self.trainer, f"{stage}/disagreement_matrix", fig)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ optimizer and sharding

    def configure_optimizers(self):
        # Weights whose mask is already sparse (SparseTopology.setup runs first) form the "sparse" group.
        sparse = [name for name, entry in self.mask_set().items() if not bool(entry.mask.all())]
        return configure_optimization(
            split_decay_groups(self, sparse),
            self.optimizer_factory,
            self.scheduler_factory,
            self.scheduler_interval,
            lr_multiplier=self.lr_multiplier,
            lr_scaling_groups=getattr(self, "lr_scaling_groups", "all"),
        )

    def configure_model(self) -> None:
        """FSDP2 under Lightning's ``ModelParallelStrategy``: shard the trunk, each head, then the net.

        A no-op without a device mesh; idempotent (already sharded modules are skipped). Masks stay
        replicated buffers (dst_core.md §7).
        """
        if self.device_mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = self.device_mesh["data_parallel"]
        for part in (self.net.trunk, *self.net.heads, self.net):
            if isinstance(part, FSDPModule) or not any(True for _ in part.parameters()):
                continue
            fully_shard(part, mesh=mesh)


# --------------------------------------------------------------------------- nets


class NeuroTrailsMLP(_NeuroTrailsBase):
    """Multi-head ReLU MLP for flat inputs (the spec's digits miniature, §7a).

    The MLP has ``depth`` hidden layers of width ``hidden`` and a linear output. The last
    ``blocks_in_head`` hidden layers and the output layer form each head; the first
    ``depth - blocks_in_head`` hidden layers form the shared trunk. Defaults give the TreeNet of §7a:
    trunk 64→256→256 and 3 heads 256→256→10; ``num_heads: 1`` is the Single 64→256→256→256→10.

    Args:
        num_heads: H, the number of heads (ensemble members); default 3 (authors' code).
        blocks_in_head: how many hidden layers belong to each head (0 ≤ b ≤ depth); default 1.
        ensemble_mode: ``"shared"`` (trunk + H heads) or ``"independent"`` (H full MLPs sharing
            nothing: the full ensemble; ``blocks_in_head`` is then ignored); default ``"shared"``.
        in_features: input size; default 64 (8×8 digits).
        hidden: width of every hidden layer; default 256.
        depth: number of hidden layers; default 3.
        num_classes: number of classes; default 10.
        optimizer: the injected optimizer; default ``torch.optim.Adam`` (lr 1e-3, §7a).
        scheduler: the injected lr scheduler, or ``None`` (default) for a constant lr.
        scheduler_interval: ``"epoch"`` (default) or ``"step"``: when the scheduler steps.
        ece_bins: number of confidence bins of ``val/ece``; default 15.
    """

    def __init__(
        self,
        num_heads: int = 3,
        blocks_in_head: int = 1,
        ensemble_mode: str = "shared",
        in_features: int = 64,
        hidden: int = 256,
        depth: int = 3,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        ece_bins: int = 15,
    ) -> None:
        super().__init__(num_heads, ensemble_mode, num_classes, optimizer, scheduler, scheduler_interval, ece_bins)
        self.save_hyperparameters()
        if not 0 <= blocks_in_head <= depth:
            raise ValueError(f"blocks_in_head must be in [0, depth={depth}], got {blocks_in_head}")
        self.blocks_in_head = blocks_in_head
        self.in_features = in_features
        self.hidden = hidden
        self.depth = depth
        widths = [in_features] + [hidden] * depth
        cut = 0 if ensemble_mode == "independent" else depth - blocks_in_head

        def layers(lo: int, hi: int, output: bool) -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(lo, hi):
                mods += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
            if output:
                mods.append(nn.Linear(widths[-1], num_classes))
            return nn.Sequential(*mods)

        trunk = layers(0, cut, output=False) if cut > 0 else nn.Identity()
        self.net = MultiHeadNet(trunk, make_heads(lambda: layers(cut, depth, output=True), num_heads))
        self._finish_init()

    @classmethod
    def unit_test_params(cls) -> dict:
        """Tiny settings for the generic tests (a masked optimizer, so any ``SparseTopology`` policy works)."""
        from trainer.sparse import MaskedAdam

        return {"num_heads": 2, "blocks_in_head": 1, "hidden": 16, "depth": 2, "optimizer": MaskedAdam}


RESNET_ARCHS = {
    # arch: (default blocks_in_head, default num_classes)  -- split from the authors' code
    "wrn28_10": (8, 100),
    "resnet50": (10, 1000),
}


class NeuroTrailsResNet(_NeuroTrailsBase):
    """Multi-head residual net split at residual blocks: WRN-28-10 (CIFAR) or ResNet-50 (ImageNet).

    The last ``blocks_in_head`` residual blocks plus the classifier tail form each head; the stem and
    the remaining blocks form the shared trunk. Each head is built from a fresh net (its own random
    initialisation). ``depth``/``width``/``stage_blocks`` shrink the net for tests.

    Args:
        arch: ``"wrn28_10"`` (pre-activation Wide ResNet, 12 blocks, 32×32 inputs) or ``"resnet50"``
            (bottleneck ResNet, 16 blocks, ImageNet stem); default ``"wrn28_10"``.
        num_heads: H; default 3 (authors' code).
        blocks_in_head: residual blocks per head; ``None`` (default) takes the authors' split:
            8 of 12 for WRN-28-10, 10 of 16 for ResNet-50.
        ensemble_mode: ``"shared"`` (default) or ``"independent"`` (H full nets, the full ensemble).
        num_classes: ``None`` (default) = 100 for ``wrn28_10`` (CIFAR-100), 1000 for ``resnet50``.
        in_channels: input channels; default 3.
        depth: WRN depth 6n + 4; ``None`` (default) = 28. Ignored for ``resnet50``.
        width: WRN widen factor (default 10) or ResNet base width (default 64); ``None`` = the arch's.
        stage_blocks: ResNet blocks per stage; ``None`` (default) = (3, 4, 6, 3). Ignored for WRN.
        dropout: WRN dropout between the convs of a block; default 0.
        optimizer: the injected optimizer; default ``torch.optim.Adam`` (the paper YAMLs set SGD).
        scheduler: the injected lr scheduler, or ``None`` (default).
        scheduler_interval: ``"epoch"`` (default) or ``"step"``.
        ece_bins: number of confidence bins of ``val/ece``; default 15.
    """

    unit_test_datamodule = "ImageClassificationDataModule"

    def __init__(
        self,
        arch: str = "wrn28_10",
        num_heads: int = 3,
        blocks_in_head: int | None = None,
        ensemble_mode: str = "shared",
        num_classes: int | None = None,
        in_channels: int = 3,
        depth: int | None = None,
        width: int | None = None,
        stage_blocks: tuple[int, ...] | None = None,
        dropout: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        ece_bins: int = 15,
    ) -> None:
        if arch not in RESNET_ARCHS:
            raise ValueError(f"arch must be one of {tuple(RESNET_ARCHS)}, got {arch!r}")
        default_b, default_classes = RESNET_ARCHS[arch]
        n_classes = default_classes if num_classes is None else num_classes
        super().__init__(num_heads, ensemble_mode, n_classes, optimizer, scheduler, scheduler_interval, ece_bins)
        self.save_hyperparameters()
        self.arch = arch
        self.blocks_in_head_resolved = default_b if blocks_in_head is None else blocks_in_head

        def build():
            if arch == "wrn28_10":
                return wrn_stack(28 if depth is None else depth, 10 if width is None else width, n_classes, in_channels, dropout)
            return resnet_bottleneck_stack(
                (3, 4, 6, 3) if stage_blocks is None else tuple(stage_blocks),
                64 if width is None else width,
                n_classes,
                in_channels,
            )

        if ensemble_mode == "independent":
            self.net = MultiHeadNet(nn.Identity(), make_heads(lambda: build().as_module(), num_heads))
        else:
            trunk, _ = split_stack(build(), self.blocks_in_head_resolved)
            # Each head comes from its own freshly initialised net; its trunk part is discarded.
            self.net = MultiHeadNet(
                trunk, make_heads(lambda: split_stack(build(), self.blocks_in_head_resolved)[1], num_heads)
            )
        self._finish_init()

    @classmethod
    def unit_test_params(cls) -> dict:
        """Tiny WRN-10-1 (3 blocks, 1 per head), 2 heads, 10 classes, masked Adam."""
        from trainer.sparse import MaskedAdam

        return {
            "arch": "wrn28_10",
            "depth": 10,
            "width": 1,
            "blocks_in_head": 1,
            "num_heads": 2,
            "num_classes": 10,
            "optimizer": MaskedAdam,
        }


# --------------------------------------------------------------------------- language model (Sec. 3, §2)


class _LlamaStage(nn.Module):
    """Part of a LLaMA: optional ``embed_tokens``, a run of decoder ``layers``, optional ``norm`` + ``lm_head``."""

    def __init__(self, config_kwargs: dict, first_layer: int, n_layers: int, embed: bool, output: bool) -> None:
        super().__init__()
        from trainer.text import build_causal_lm

        # A fresh LlamaForCausalLM per stage: Hugging Face's own initialisation, never a copy (§2).
        lm = build_causal_lm({**config_kwargs, "num_hidden_layers": n_layers})
        self.embed_tokens = lm.model.embed_tokens if embed else None
        self.layers = lm.model.layers
        for i, layer in enumerate(self.layers):
            layer.self_attn.layer_idx = first_layer + i  # its index in the unsplit model
        self.norm = lm.model.norm if output else None
        self.lm_head = lm.lm_head if output else None
        self.attn_implementation = lm.config._attn_implementation  # what the layers were built to use

    def forward(self, h: torch.Tensor, ctx: dict) -> torch.Tensor:
        if self.embed_tokens is not None:
            h = self.embed_tokens(h)
        for layer in self.layers:
            h = layer(h, attention_mask=ctx["mask"], position_ids=ctx["position_ids"],
                      position_embeddings=ctx["position_embeddings"])  # fmt: skip
        if self.lm_head is not None:
            h = self.lm_head(self.norm(h))
        return h


class _MultiHeadLlama(nn.Module):
    """A LLaMA split into a shared ``trunk`` (embedding + first L−b layers) and H ``heads``
    (b layers + final RMSNorm + ``lm_head`` each); ``forward(input_ids)`` gives ``[H, B, T, V]``.

    Independent mode: an empty trunk and H full LLaMAs as heads. Position embeddings (RoPE) and the
    causal mask are computed once, exactly as ``LlamaModel.forward`` does (transformers 5.x), and
    passed to every decoder layer.
    """

    def __init__(self, config_kwargs: dict, num_heads: int, blocks_in_head: int, independent: bool) -> None:
        super().__init__()
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        n_layers = config_kwargs["num_hidden_layers"]
        cut = 0 if independent else n_layers - blocks_in_head
        self.config = LlamaConfig(**config_kwargs)
        self.rotary_emb = LlamaRotaryEmbedding(config=self.config)
        self.trunk = _LlamaStage(config_kwargs, 0, cut, embed=not independent, output=False)
        self.heads = make_heads(lambda: _LlamaStage(config_kwargs, cut, n_layers - cut, embed=independent, output=True), num_heads)
        # The causal mask's format must match the attention kernel the layers use (as LlamaModel's config does).
        self.config._attn_implementation = self.heads[0].attn_implementation

    def _context(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        from transformers.masking_utils import create_causal_mask

        position_ids = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=embeds, attention_mask=attention_mask,
                                  past_key_values=None, position_ids=position_ids)  # fmt: skip
        return {"mask": mask, "position_ids": position_ids, "position_embeddings": self.rotary_emb(embeds, position_ids)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.trunk.embed_tokens is not None:
            h = self.trunk.embed_tokens(input_ids)
            ctx = self._context(h, attention_mask)
            for layer in self.trunk.layers:
                h = layer(h, attention_mask=ctx["mask"], position_ids=ctx["position_ids"],
                          position_embeddings=ctx["position_embeddings"])  # fmt: skip
            return torch.stack([head(h, ctx) for head in self.heads])  # Sec. 3: z_k = head_k(backbone(x))
        probe = self.heads[0].embed_tokens.weight.new_empty(*input_ids.shape, self.config.hidden_size)
        ctx = self._context(probe, attention_mask)
        return torch.stack([head(input_ids, ctx) for head in self.heads])


class NeuroTrailsAveragedLM(nn.Module):
    """The exported ensemble for zero-shot evaluation (lm-eval): ``forward(input_ids)`` returns the
    averaged head logits z̄ ``[B, T, V]`` (§2). :meth:`save` / :meth:`load` round-trip it through one
    file (neurotrails.md §4, defect 1).

    Args:
        config_kwargs: the ``LlamaConfig`` kwargs of the unsplit model.
        num_heads: H.
        blocks_in_head: b.
        ensemble_mode: ``"shared"`` or ``"independent"``.
    """

    def __init__(self, config_kwargs: dict, num_heads: int, blocks_in_head: int, ensemble_mode: str) -> None:
        super().__init__()
        self.spec = {"config_kwargs": dict(config_kwargs), "num_heads": num_heads,
                     "blocks_in_head": blocks_in_head, "ensemble_mode": ensemble_mode}  # fmt: skip
        self.net = _MultiHeadLlama(config_kwargs, num_heads, blocks_in_head, ensemble_mode == "independent")
        attach_masks(self.net)  # the trained masks travel with the weights (inactive weights are exactly 0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_ids, attention_mask).mean(dim=0)  # Sec. 3: z̄ = (1/H) Σ_k z_k

    def save(self, path: str) -> None:
        """Write the constructor arguments and the weights to ``path`` (``torch.save``)."""
        torch.save({"spec": self.spec, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu") -> "NeuroTrailsAveragedLM":
        """Rebuild the model written by :meth:`save` (``weights_only`` load)."""
        blob = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**blob["spec"])
        model.load_state_dict(blob["state_dict"])
        return model.eval()


class NeuroTrailsLM(_NeuroTrailsBase):
    """Multi-head LLaMA: a shared backbone (embedding + first L−b decoder layers) and H heads
    (b decoder layers + final RMSNorm + ``lm_head`` each, each freshly initialised), §2.

    Batches are ``{"input_ids", "labels"}`` with labels already shifted (``TextCorpusDataModule``).
    Mask buffers sit on every 2-D weight (every linear, the embedding and each ``lm_head``); the
    ``SparseTopology`` callback (preset ``neurotrails_lm``) picks the sparse ones.

    Args:
        shape: a ``trainer.text.LLAMA_SHAPES`` name (``llama_tiny``, ``llama_130m``, ``llama_350m``, ...); no default.
        vocab_size: override of the shape's vocabulary; ``None`` (default) keeps it.
        hidden_size: override of the hidden size; ``None`` (default) keeps it.
        intermediate_size: override of the SwiGLU width; ``None`` (default) keeps it.
        num_attention_heads: override of the attention heads; ``None`` (default) keeps it.
        num_hidden_layers: override of L; ``None`` (default) keeps it.
        max_position_embeddings: override of the context; ``None`` (default) keeps it.
        num_heads: H; default 3 (§3, code).
        blocks_in_head: b, decoder layers per head (0 ≤ b ≤ L); ``None`` (default) = 2L/3 rounded
            down, the authors' split (8 of 12 for 130M, 16 of 24 for 350M, §3).
        ensemble_mode: ``"shared"`` (default) or ``"independent"`` (H full LLaMAs, the full ensemble).
        optimizer: the injected optimizer; default ``torch.optim.Adam`` (the YAMLs set lr 1.5e-3, §3).
        scheduler: the injected lr scheduler, or ``None`` (default).
        scheduler_interval: ``"step"`` (default) or ``"epoch"``.
    """

    unit_test_datamodule = "TextCorpusDataModule"

    def __init__(
        self,
        shape: str,
        vocab_size: int | None = None,
        hidden_size: int | None = None,
        intermediate_size: int | None = None,
        num_attention_heads: int | None = None,
        num_hidden_layers: int | None = None,
        max_position_embeddings: int | None = None,
        num_heads: int = 3,
        blocks_in_head: int | None = None,
        ensemble_mode: str = "shared",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "step",
    ) -> None:
        cfg = llama_config(shape, {"vocab_size": vocab_size, "hidden_size": hidden_size,
                                    "intermediate_size": intermediate_size, "num_attention_heads": num_attention_heads,
                                    "num_hidden_layers": num_hidden_layers,
                                    "max_position_embeddings": max_position_embeddings})  # fmt: skip
        super().__init__(num_heads, ensemble_mode, cfg["vocab_size"], optimizer, scheduler, scheduler_interval, 15)
        self.save_hyperparameters()
        n_layers = cfg["num_hidden_layers"]
        b = 2 * n_layers // 3 if blocks_in_head is None else blocks_in_head
        if not 0 <= b <= n_layers:
            raise ValueError(f"blocks_in_head must be in [0, {n_layers}], got {b}")
        self.config_kwargs = cfg
        self.blocks_in_head_resolved = b
        self.net = _MultiHeadLlama(cfg, num_heads, b, ensemble_mode == "independent")
        self._finish_init()

    @classmethod
    def unit_test_params(cls) -> dict:
        """A 2-layer h32 LLaMA (vocab 512, context 64), 2 heads with 1 layer each, masked Adam."""
        from trainer.sparse import MaskedAdam

        return {"shape": "llama_tiny", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
                "num_heads": 2, "blocks_in_head": 1, "optimizer": MaskedAdam}  # fmt: skip

    def _make_eval_metrics(self) -> nn.ModuleDict:
        h = self.num_heads
        return nn.ModuleDict(
            {
                "loss_ensemble": MeanMetric(),
                "loss_heads": nn.ModuleList(MeanMetric() for _ in range(h)),
                "disagreement": EnsembleDisagreement(num_members=h),
            }
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Stacked head logits ``[H, B, T, V]``."""
        return self.net(input_ids)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        from trainer.text import causal_lm_loss

        logits = self(batch["input_ids"])
        per_head = torch.stack([causal_lm_loss(z, batch["labels"]) for z in logits])
        loss = per_head.sum()  # Sec. 3: loss = Σ_k CE(z_k, y), a sum over heads
        return self._log_train_losses(loss, per_head)

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        from trainer.text import causal_lm_loss

        labels = batch["labels"]
        logits = self(batch["input_ids"])
        n_tok = int((labels != -100).sum())
        m = self.eval_metrics[stage]
        m["loss_ensemble"].update(causal_lm_loss(ensemble_logits(logits), labels), weight=n_tok)
        for k in range(self.num_heads):
            m["loss_heads"][k].update(causal_lm_loss(logits[k], labels), weight=n_tok)
        keep = (labels != -100).reshape(-1)
        m["disagreement"].update(logits.argmax(dim=-1).reshape(self.num_heads, -1)[:, keep])  # Sec. 3: per token
        self.log(f"{stage}/loss_ensemble", m["loss_ensemble"], on_step=False, on_epoch=True, prog_bar=stage == "val")

    def _eval_epoch_end(self, stage: str) -> None:
        m = self.eval_metrics[stage]
        if m["disagreement"].update_count > 0:
            # §3: LM perplexity = exp(CE(z̄, y)) over the validation tokens
            self.log(f"{stage}/ppl_ensemble", torch.exp(m["loss_ensemble"].compute()), sync_dist=True)
            for k in range(self.num_heads):
                self.log(f"{stage}/ppl_head{k}", torch.exp(m["loss_heads"][k].compute()), sync_dist=True)
                m["loss_heads"][k].reset()
        super()._eval_epoch_end(stage)

    def predict_step(self, batch: dict[str, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Ensemble logits z̄ ``[B, T, V]``."""
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        return ensemble_logits(self(ids))

    def export_averaged_logits(self) -> NeuroTrailsAveragedLM:
        """A plain ``nn.Module`` returning the averaged logits z̄ (for lm-eval), with this model's weights."""
        out = NeuroTrailsAveragedLM(self.config_kwargs, self.num_heads, self.blocks_in_head_resolved, self.ensemble_mode)
        out.net.load_state_dict(self.net.state_dict())
        return out.to(self.device).eval()
