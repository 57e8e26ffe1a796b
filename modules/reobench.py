"""REOBench: corruption robustness of Earth-observation models (``../shared/papers/reobench.md``).

Paper: Li, Tao, Zhang, Liu, Xiong, Luo, Liu, Pechenizkiy, Zhu, Huang, "REOBench: Benchmarking Robustness of Earth
Observation Foundation Models", arXiv 2505.16793 (2025). Foundation models are evaluated on six remote-sensing
tasks under 12 perturbations at 5 severities; the classification protocol trains a Linear–ReLU–Linear head on a
frozen backbone and reports overall accuracy per corruption and severity.

:class:`FrozenEncoderProbeModule`: an encoder (``tiny_cnn``, the miniature's 4-block CNN, reobench.md §7) with the
paper's head (Linear–ReLU–Linear, or linear), optionally frozen (the paper's protocol), optional train
augmentation (horizontal flip + rotation 0–360°, the paper's head training and the miniature's arm B). ``test``
over a :class:`datamodules.corruption_grid.CorruptionGridDataModule` measures the accuracy of every loader and
names it by the datamodule's ``grid_index`` (``test/acc/<corruption>/s<k>``, ``test/acc/clean``); the results are
kept in ``test_results``.

Not here yet (issue 10): the pretrained backbones by name (open_clip / timm / HF), the segmentation and
external-predictions modules.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["FrozenEncoderProbeModule", "TinyCNN"]

ENCODERS = ("tiny_cnn",)
HEADS = ("mlp", "linear")
AUGMENTS = ("none", "flip_rotate")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TinyCNN(nn.Module):
    """Four conv blocks (16-32-64-64; conv 3×3, BatchNorm, ReLU, 2×2 max-pool after the first three) and global
    average pooling: the miniature's ~40 k-parameter encoder (reobench.md §7 arm A)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


def flip_rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and rotation by U(0°, 360°) (reflection padding) of a batch ``[B, 3, H, W]``."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1).to(x.device), x.flip(-1), x)
    theta = torch.rand(b, generator=generator) * 2 * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(mat.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class FrozenEncoderProbeModule(pl.LightningModule):
    """Encoder + REOBench head for scene classification, evaluated over a corruption grid (reobench.md §2, §3).

    Args:
        num_classes: classes of the head; the head's output dimension is asserted to equal it (reobench.md §4.2).
        encoder: ``tiny_cnn`` (reobench.md §7).
        freeze: freeze the encoder and train the head only (the paper's protocol; the miniature trains all).
        head: ``mlp`` (Linear–ReLU–Linear, as the authors' fine-tuning) or ``linear``.
        head_hidden: width of the ``mlp`` head's hidden layer.
        augment: ``none`` (arm A) or ``flip_rotate`` (horizontal flip + rotation 0–360°, arm B, reobench.md §3).
        normalize: ``none`` or ``imagenet`` mean/std normalisation of the [0, 1] inputs.
        optimizer: optimizer of the trainable parameters (reobench.md §3: Adam, lr 1e-3).
        seed: seeds the augmentation generator.
    """

    unit_test_datamodule = "ProceduralEOScenesDataModule"

    def __init__(
        self,
        num_classes: int = 6,
        encoder: str = "tiny_cnn",
        freeze: bool = False,
        head: str = "mlp",
        head_hidden: int = 128,
        augment: str = "none",
        normalize: str = "none",
        optimizer: OptimizerCallable = torch.optim.Adam,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("encoder", encoder, ENCODERS), ("head", head, HEADS), ("augment", augment, AUGMENTS),
                                     ("normalize", normalize, ("none", "imagenet"))):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"FrozenEncoderProbeModule: {name} must be one of {allowed}, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"FrozenEncoderProbeModule: num_classes must be ≥ 2, got {num_classes}")
        self.save_hyperparameters()
        self.optimizer_fn = optimizer
        self.encoder = TinyCNN()
        d = self.encoder.out_dim
        if head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(d, num_classes)
        out = self.head(torch.zeros(1, d)).shape[-1]
        assert out == num_classes, f"head output {out} != num_classes {num_classes}"  # reobench.md §4.2
        if freeze:
            self.encoder.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_metrics = nn.ModuleList()
        self.test_names: list[str] = []
        #: loader name → accuracy of the last ``test`` run
        self.test_results: dict[str, float] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"head_hidden": 16, "augment": "flip_rotate"}

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FrozenEncoderProbeModule expects [B, 3, H, W] images, got {tuple(x.shape)}")
        if self.hparams.normalize == "imagenet":
            x = (x - self.mean) / self.std
        if self.hparams.freeze:
            self.encoder.eval()
            with torch.no_grad():
                feats = self.encoder(x)
        else:
            feats = self.encoder(x)
        return self.head(feats)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.hparams.augment == "flip_rotate":
            g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
            x = flip_rotate(x, g)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self(x).argmax(-1), y)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(y))

    # ------------------------------------------------------------------ the corruption grid
    def on_test_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        grid = getattr(dm, "grid_index", None)
        n = len(self.trainer.test_dataloaders) if isinstance(self.trainer.test_dataloaders, list) else 1
        if grid is not None and len(grid) == n:
            self.test_names = ["clean" if c == "clean" else f"{c}/s{s}" for c, s in grid]
        else:
            self.test_names = ["clean"] + [f"loader{i}" for i in range(1, n)]
        self.test_metrics = nn.ModuleList(
            MulticlassAccuracy(self.hparams.num_classes, average="micro") for _ in self.test_names
        ).to(self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        metric = self.test_metrics[dataloader_idx]
        metric(self(x).argmax(-1), y)
        self.log(f"test/acc/{self.test_names[dataloader_idx]}", metric, on_epoch=True, batch_size=len(y),
                 add_dataloader_idx=False)  # fmt: skip

    def on_test_epoch_end(self) -> None:
        self.test_results = {name: float(m.compute()) for name, m in zip(self.test_names, self.test_metrics)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_fn([p for p in self.parameters() if p.requires_grad])
