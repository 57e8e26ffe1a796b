"""REOBench: corruption robustness of Earth-observation models (``../shared/papers/reobench.md``).

Paper: Li, Tao, Zhang, Liu, Xiong, Luo, Liu, Pechenizkiy, Zhu, Huang, "REOBench: Benchmarking Robustness of Earth
Observation Foundation Models", arXiv 2505.16793 (2025). Foundation models are evaluated on six remote-sensing
tasks under 12 perturbations at 5 severities; the classification protocol trains a Linear–ReLU–Linear head on a
frozen backbone and reports overall accuracy per corruption and severity.

:class:`FrozenEncoderProbeModule` (scene classification): an encoder with the paper's head (Linear–ReLU–Linear, or
linear), optionally frozen (the paper's protocol), with optional train augmentation and an injected optimizer and
scheduler. Encoders by name (reobench.md §2):

- ``tiny_cnn``: the miniature's 4-block CNN (reobench.md §7).
- ``hf:<hub name or local folder>``: a transformers vision model through ``AutoModel``. Multimodal models (CLIP,
  SigLIP) give their vision tower. Features: ``pooler_output`` for CLIP / SigLIP towers (CLIP: the post-layernorm
  CLS token, *before* the visual projection) and for ConvNets (ResNet, ConvNeXt: global average pooling); for
  other transformers (ViT, DINOv2, ...) the CLS token of ``last_hidden_state`` (which they layer-norm), never
  ViT's tanh pooler (dropped: it is untrained in many checkpoints). Inputs are resized (bilinear, antialiased) to
  ``config.image_size`` when the config has one. Normalisation (``normalize="auto"``): ``image_mean`` /
  ``image_std`` of a local ``preprocessor_config.json`` when the folder has one, else none; an explicit
  ``normalize`` (``imagenet``, ``clip``, ``none``) wins. Hub names need the files in the local HF cache (runs are
  offline).
- ``timm:<name>`` (``pretrained=True``, ``num_classes=0``: the pooled features; mean / std / input size from its
  ``pretrained_cfg``), ``timm:<name>:<checkpoint file>`` (the architecture without pretrained weights, then the
  file's ``model`` / ``state_dict`` entry loaded non-strictly, ``module.`` prefixes dropped: MAE-style ViT
  checkpoints such as SatMAE's and ScaleMAE's; ScaleMAE's GSD positional encoding is not reproduced) and
  ``open_clip:<arch>:<pretrained tag or checkpoint file>`` (the ``visual`` tower's image embedding; its
  ``image_mean`` / ``image_std``, else CLIP's): RemoteCLIP / GeoRSCLIP ship open_clip checkpoints.
  Both packages import torchvision, and no torchvision build matches a CPU-only torch 2.13.0 (PyPI's 0.28.0 fails
  at import with "operator torchvision::nms does not exist"), so they are imported lazily and, where the import
  fails, one ImportError says what to install. They are not dependencies of this project; they work on a machine
  whose torch has its matching torchvision (e.g. a CUDA install).

Train augmentation: ``flip_rotate`` (horizontal flip + rotation 0–360°, the miniature's arm B) or
``rrc_flip_rotate`` (RandomResizedCrop(0.9–1, bicubic) first: the authors' train transform, reobench.md §3), on the
batch in torch, seeded by (seed, global step).

:class:`SceneSegmentationModule` (semantic segmentation, reobench.md §7 arm S): a small U-Net-like
encoder–decoder (:class:`TinySegNet`, 93 k parameters at the default widths) with pixel-wise cross-entropy and mIoU
(:class:`trainer.metrics.segmentation.SegmentationMIoU`). At test time it logs, when a TensorBoard logger is
attached, a grid of the first test images with the ground-truth mask and the predicted masks on clean and under
every corruption at severity 3 (or the middle severity tested) (reobench.md §8).

Both modules test over a :class:`datamodules.corruption_grid.CorruptionGridDataModule` the same way
(:class:`_REOBenchHooks`): one metric per test loader, named by the datamodule's ``grid_index``
(``test/<metric>/<corruption>/s<k>``, ``test/<metric>/clean``); the results are kept in ``test_results``
(:class:`trainer.protocols.HasCorruptionResults`). Under DDP they average BatchNorm running statistics over the
ranks after each backward, so every rank holds the same model.

YAML: ``yaml/reobench/scenes_seg.yaml`` (segmentation); ``yaml/reobench/aid_*_probe.yaml`` (paper scale: open_clip and
timm encoders with the authors' protocol).

Deviations: rotation pads by reflection (torchvision's RandomRotation fills black corners); RandomResizedCrop clips
an out-of-image box to the image instead of redrawing it; the paper's test transform (Resize + CenterCrop 224) is
the datamodule's job, this module only resizes to the encoder's input size; the mosaic segmentation net is ours (the
paper segments ISPRS Potsdam with its own models: ``modules/reobench_external.py`` scores their predictions).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from trainer.metrics.segmentation import SegmentationMIoU
from trainer.optimization import configure_optimization

__all__ = ["FrozenEncoderProbeModule", "SceneSegmentationModule", "TinyCNN", "TinySegNet", "build_encoder"]

ENCODER_FORMS = ("tiny_cnn", "hf:<name or path>", "timm:<name>[:<checkpoint file>]", "open_clip:<arch>:<pretrained>")
HEADS = ("mlp", "linear")
AUGMENTS = ("none", "flip_rotate", "rrc_flip_rotate")
NORMALIZE = {
    "auto": None,  # the encoder's own statistics when it has them, else none
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
IMAGENET_MEAN, IMAGENET_STD = NORMALIZE["imagenet"]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    """Four conv blocks (16-32-64-64; conv 3×3, BatchNorm, ReLU, 2×2 max-pool after the first three) and global
    average pooling: the miniature's ~40 k-parameter encoder (reobench.md §7 arm A)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += _conv_bn_relu(c_in, c)
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


class TinySegNet(nn.Module):
    """A small U-Net-like encoder–decoder (reobench.md §7 arm S; ours).

    Encoder: per width a block of two (conv 3×3, BatchNorm, ReLU), 2×2 max-pool between blocks. Decoder: bilinear
    upsampling to the skip's size, concatenation with the encoder block of that size, one block; a 1×1 conv to the
    class logits ``[B, num_classes, H, W]``. Widths (16, 32, 48): 93 k parameters (6 classes).
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 48)) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"TinySegNet needs at least two widths, got {widths}")
        self.down = nn.ModuleList()
        c_in = 3
        for c in widths:
            self.down.append(nn.Sequential(*_conv_bn_relu(c_in, c), *_conv_bn_relu(c, c)))
            c_in = c
        # decoder stage i: (upsampled stage i+1, skip i) → width i, deepest first
        self.up = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(widths[i + 1] + widths[i], widths[i]), *_conv_bn_relu(widths[i], widths[i]))
            for i in reversed(range(len(widths) - 1))
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.classifier(x)



# ---------------------------------------------------------------------------------------------- augmentation
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


def random_resized_crop(
    x: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (0.75, 4 / 3)
) -> Tensor:
    """RandomResizedCrop of a batch ``[B, 3, H, W]`` in [0, 1], resized back to H × W bicubically (reobench.md §3:
    scale 0.9–1, bicubic; torchvision's default aspect ratios 3/4–4/3, log-uniform).

    Per image: area fraction ``s ~ U(scale)``, aspect ratio ``r`` log-uniform in ``ratio``, box sides
    ``√(s·r)·W`` × ``√(s/r)·H`` clipped to the image (torchvision redraws instead), at a uniform position.
    """
    b, _, h, w = x.shape
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(b, generator=generator)
    r = torch.exp(log_r)
    fw = torch.sqrt(area * r * h / w).clamp(max=1.0)  # box width / W
    fh = torch.sqrt(area / r * w / h).clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - fw)  # box centre, normalised coordinates
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - fh)
    zero = torch.zeros(b)
    mat = torch.stack([torch.stack([fw, zero, cx], 1), torch.stack([zero, fh, cy], 1)], 1)
    grid = F.affine_grid(mat.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0.0, 1.0)


def augment_batch(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Apply the train augmentation ``kind`` (one of :data:`AUGMENTS`) to a batch."""
    if kind == "rrc_flip_rotate":
        x = random_resized_crop(x, generator)
    if kind in ("flip_rotate", "rrc_flip_rotate"):
        x = flip_rotate(x, generator)
    return x


# ---------------------------------------------------------------------------------------------- encoders by name
class _HFVisionEncoder(nn.Module):
    """A transformers vision model as ``[B, 3, H, W] → [B, D]`` features (the rule in the module docstring)."""

    def __init__(self, model: nn.Module, use_pooler: bool) -> None:
        super().__init__()
        self.model, self.use_pooler = model, use_pooler

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values=x)
        h = out.last_hidden_state
        if h.dim() == 4:  # ConvNets: [B, C, h, w]
            return out.pooler_output.flatten(1) if out.pooler_output is not None else h.mean(dim=(2, 3))
        return out.pooler_output if self.use_pooler else h[:, 0]


def _optional_import(package: str, pip_name: str, spec: str) -> Any:
    try:
        return importlib.import_module(package)
    except (ImportError, RuntimeError) as err:
        raise ImportError(
            f"encoder {spec!r} needs `pip install {pip_name}` with a torchvision built for this torch "
            f"({torch.__version__}); a CPU-only torch 2.13.0 has none (PyPI's torchvision 0.28.0 fails at import with "
            f"'operator torchvision::nms does not exist'), so use an hf: encoder here or a torch install with its "
            f"matching torchvision [{type(err).__name__}: {err}]"
        ) from err


def _pair(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, float)):
        return int(size), int(size)
    size = tuple(int(v) for v in size)
    return (size[-2], size[-1]) if len(size) >= 2 else (size[0], size[0])


def _hf_encoder(name: str) -> tuple[nn.Module, int, tuple[int, int] | None, Any]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(name)
    if hasattr(model, "vision_model") and hasattr(model.config, "vision_config"):  # CLIP / SigLIP: the vision tower
        cfg, model = model.config.vision_config, model.vision_model
    else:
        cfg = model.config
    model_type = str(getattr(cfg, "model_type", ""))
    use_pooler = model_type.startswith(("clip", "siglip", "chinese_clip", "altclip"))
    if not use_pooler and isinstance(getattr(model, "pooler", None), nn.Module) and any(True for _ in model.pooler.parameters()):
        model.pooler = None  # ViT's dense + tanh pooler: unused, we take the CLS token
    encoder = _HFVisionEncoder(model, use_pooler)
    size = _pair(getattr(cfg, "image_size", None))
    dim = getattr(cfg, "hidden_size", None) or (list(getattr(cfg, "hidden_sizes", None) or [None])[-1])
    if dim is None:
        with torch.no_grad():
            dim = encoder.eval()(torch.zeros(1, 3, *(size or (224, 224)))).shape[-1]
    stats = None
    pre = Path(name) / "preprocessor_config.json"
    if pre.is_file():
        proc = json.loads(pre.read_text())
        if "image_mean" in proc and "image_std" in proc:
            stats = (tuple(proc["image_mean"]), tuple(proc["image_std"]))
    return encoder, int(dim), size, stats


def _load_checkpoint_loosely(model: nn.Module, path: str) -> None:
    """Load a checkpoint file's ``model`` / ``state_dict`` entry (or the file itself) into ``model`` non-strictly,
    dropping ``module.`` prefixes; an error when no tensor matches, a warning naming the missing keys."""
    import warnings

    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"checkpoint {path}: no tensor matches the architecture's names and shapes")
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    if missing:
        warnings.warn(f"checkpoint {path}: {len(missing)} tensors not loaded, e.g. {missing[:5]}", stacklevel=2)


def build_encoder(spec: str) -> tuple[nn.Module, int, tuple[int, int] | None, Any]:
    """The encoder named ``spec`` (one of :data:`ENCODER_FORMS`, reobench.md §2).

    Returns ``(encoder, feature_dim, input_size, (mean, std))``: the module maps ``[B, 3, H, W]`` normalised images
    to ``[B, feature_dim]``; ``input_size`` (H, W) is what it expects (None = any); the statistics are the
    encoder's own normalisation (None = unknown: the caller's ``normalize`` applies).
    """
    kind, _, rest = spec.partition(":")
    if spec == "tiny_cnn":
        enc = TinyCNN()
        return enc, enc.out_dim, None, None
    if kind == "hf" and rest:
        return _hf_encoder(rest)
    if kind == "timm" and rest:
        timm = _optional_import("timm", "timm", spec)
        name, _, ckpt = rest.partition(":")
        model = timm.create_model(name, pretrained=not ckpt, num_classes=0)
        if ckpt:
            _load_checkpoint_loosely(model, ckpt)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        stats = (tuple(cfg["mean"]), tuple(cfg["std"])) if "mean" in cfg and "std" in cfg else None
        return model, int(model.num_features), _pair(cfg.get("input_size")), stats
    arch, _, pretrained = rest.partition(":")
    if kind == "open_clip" and arch and pretrained:
        open_clip = _optional_import("open_clip", "open_clip_torch", spec)
        model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        visual = model.visual
        mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
        stats = (tuple(mean), tuple(std)) if mean is not None and std is not None else NORMALIZE["clip"]
        return visual, int(visual.output_dim), _pair(getattr(visual, "image_size", None)), stats
    raise ValueError(f"FrozenEncoderProbeModule: encoder must be one of {ENCODER_FORMS}, got {spec!r}")


# ---------------------------------------------------------------------------------------------- the corruption grid
class _REOBenchHooks:
    """Hooks shared by the REOBench modules: the corruption-grid test (reobench.md §2, §8 scalars) and identical
    BatchNorm statistics on every rank (:func:`average_batchnorm_stats`, after each backward).

    One metric per test loader (``_new_test_metric()``), fed ``_predict(x)`` and the target; loader ``i`` is named
    from the datamodule's ``grid_index`` (``clean``, ``<corruption>/s<k>``; ``loader<i>`` without a grid) and logged
    as ``test/<test_metric_name>/<name>``; ``test_results`` holds name → value after the epoch.
    """

    test_metric_name = "metric"

    def _new_test_metric(self) -> Metric:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_grid_test(self) -> None:
        self.test_metrics = nn.ModuleList()
        self.test_names: list[str] = []
        #: (corruption, severity) of every test loader (``("clean", 0)`` first)
        self.test_grid: list[tuple[str, int]] = []
        #: loader name → metric of the last ``test`` run
        self.test_results: dict[str, float] = {}

    def on_test_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        grid = getattr(dm, "grid_index", None)
        n = len(self.trainer.test_dataloaders) if isinstance(self.trainer.test_dataloaders, list) else 1
        if grid is not None and len(grid) == n:
            self.test_grid = [(str(c), int(s)) for c, s in grid]
            self.test_names = ["clean" if c == "clean" else f"{c}/s{s}" for c, s in self.test_grid]
        else:
            self.test_grid = [("clean", 0)] + [(f"loader{i}", 0) for i in range(1, n)]
            self.test_names = [c for c, _ in self.test_grid]
        self.test_metrics = nn.ModuleList(self._new_test_metric() for _ in self.test_names).to(self.device)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x, y = batch[0], batch[1]
        pred = self._predict(x)
        metric = self.test_metrics[dataloader_idx]
        metric(pred, y)
        self.log(f"test/{self.test_metric_name}/{self.test_names[dataloader_idx]}", metric, on_epoch=True,
                 batch_size=len(y), add_dataloader_idx=False)  # fmt: skip
        return pred

    def on_test_epoch_end(self) -> None:
        self.test_results = {name: float(m.compute()) for name, m in zip(self.test_names, self.test_metrics)}

    def on_after_backward(self) -> None:
        average_batchnorm_stats(self, self.trainer.strategy)  # identical models on every rank (scaffolding)


def average_batchnorm_stats(module: nn.Module, strategy: Any) -> None:
    """Average the running statistics of ``module``'s training-mode BatchNorm layers over the ranks of
    ``strategy`` (call after the backward: BatchNorm's backward reads them): under DDP each rank's come from its own batches, and this keeps every
    rank's model identical (the mean of the ranks' running means and variances; ours, not SyncBatchNorm)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
           and m.running_mean is not None]  # fmt: skip
    if not bns or getattr(strategy, "world_size", 1) < 2:
        return
    with torch.no_grad():
        flat = strategy.reduce(torch.cat([t.reshape(-1) for m in bns for t in (m.running_mean, m.running_var)]), reduce_op="mean")
    offset = 0
    for m in bns:
        for t in (m.running_mean, m.running_var):
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _tensorboard(trainer: Any) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return trainer is not None and any(isinstance(lg, TensorBoardLogger) for lg in getattr(trainer, "loggers", []))


# ---------------------------------------------------------------------------------------------- classification
class FrozenEncoderProbeModule(_REOBenchHooks, pl.LightningModule):
    """Encoder + REOBench head for scene classification, evaluated over a corruption grid (reobench.md §2, §3).

    Args:
        num_classes: classes of the head; the head's output dimension is asserted to equal it (reobench.md §4.2).
        encoder: ``tiny_cnn`` (reobench.md §7), ``hf:<hub name or local folder>``, ``timm:<name>`` or
            ``open_clip:<arch>:<pretrained tag or checkpoint>`` (module docstring; timm / open_clip need a torch
            with its torchvision).
        freeze: freeze the encoder and train the head only (the paper's protocol; the miniature trains all).
        head: ``mlp`` (Linear–ReLU–Linear, as the authors' fine-tuning) or ``linear``.
        head_hidden: width of the ``mlp`` head's hidden layer.
        augment: ``none`` (arm A), ``flip_rotate`` (horizontal flip + rotation 0–360°, arm B) or ``rrc_flip_rotate``
            (RandomResizedCrop(0.9–1, bicubic) + flip + rotation, the authors' train transform, reobench.md §3).
        normalize: mean/std normalisation of the [0, 1] inputs: ``auto`` (a pretrained encoder's own statistics:
            HF ``preprocessor_config.json``, timm, open_clip; none for ``tiny_cnn`` or without them), ``none``,
            ``imagenet`` (the authors' protocol, reobench.md §3) or ``clip``.
        optimizer: optimizer of the trainable parameters (reobench.md §3: Adam, lr 1e-3).
        scheduler: optional learning-rate scheduler (reobench.md §3: CosineAnnealingWarmRestarts, T₀ = 5).
        scheduler_interval: ``epoch`` or ``step``, when the scheduler steps.
        seed: seeds the augmentation generator.
    """

    unit_test_datamodule = "ProceduralEOScenesDataModule"
    test_metric_name = "acc"

    def __init__(
        self,
        num_classes: int = 6,
        encoder: str = "tiny_cnn",
        freeze: bool = False,
        head: str = "mlp",
        head_hidden: int = 128,
        augment: str = "none",
        normalize: str = "auto",
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, allowed in (("head", head, HEADS), ("augment", augment, AUGMENTS),
                                     ("normalize", normalize, tuple(NORMALIZE)),
                                     ("scheduler_interval", scheduler_interval, ("epoch", "step"))):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"FrozenEncoderProbeModule: {name} must be one of {allowed}, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"FrozenEncoderProbeModule: num_classes must be ≥ 2, got {num_classes}")
        self.save_hyperparameters()
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.encoder, d, self.input_size, stats = build_encoder(encoder)
        if head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(d, num_classes)
        out = self.head(torch.zeros(1, d)).shape[-1]
        assert out == num_classes, f"head output {out} != num_classes {num_classes}"  # reobench.md §4.2
        if freeze:
            self.encoder.requires_grad_(False)
        else:
            self.encoder.train()  # from_pretrained returns eval mode, and Lightning keeps submodule modes
        #: the normalisation applied, ``(mean, std)`` or None: ``normalize``'s, the encoder's own under ``auto``
        self.norm_stats = stats if normalize == "auto" else NORMALIZE[normalize]
        mean, std = self.norm_stats or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self._init_grid_test()

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"head_hidden": 16, "augment": "flip_rotate"}

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FrozenEncoderProbeModule expects [B, 3, H, W] images, got {tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        if self.norm_stats is not None:
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
        if self.hparams.augment != "none":
            g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
            x = augment_batch(x, self.hparams.augment, g)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self(x).argmax(-1), y)
        self.log("val/acc", self.val_acc, on_epoch=True, batch_size=len(y))

    def _new_test_metric(self) -> Metric:
        return MulticlassAccuracy(self.hparams.num_classes, average="micro")

    def _predict(self, x: Tensor) -> Tensor:
        return self(x).argmax(-1)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return configure_optimization([{"params": params}], self.optimizer_fn, self.scheduler_fn,
                                      self.hparams.scheduler_interval)  # fmt: skip


# ---------------------------------------------------------------------------------------------- segmentation
def segmentation_grid_figure(
    images: list[Tensor], masks: list[Tensor], titles: list[str], num_classes: int, title: str = ""
) -> Any:
    """A figure of ``n`` samples × columns: for each sample a row of input images and a row of class masks, the
    masks coloured by class with one fixed colour per class. ``images[j]`` is ``[n, 3, H, W]`` in [0, 1],
    ``masks[j]`` ``[n, H, W]`` long; column ``j`` is titled ``titles[j]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    base = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    cmap = ListedColormap([base(i % base.N) for i in range(num_classes)])
    n, cols = int(images[0].shape[0]), len(titles)
    fig, axes = plt.subplots(2 * n, cols, figsize=(1.3 * cols, 2.6 * n), squeeze=False)
    for j in range(cols):
        for i in range(n):
            axes[2 * i, j].imshow(images[j][i].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[2 * i + 1, j].imshow(masks[j][i].numpy(), cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
        axes[0, j].set_title(titles[j], fontsize=6)
    for ax in axes.ravel():
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


class SceneSegmentationModule(_REOBenchHooks, pl.LightningModule):
    """A small encoder–decoder for semantic segmentation of scene mosaics, evaluated by mIoU over a corruption grid
    (reobench.md §3 "semantic segmentation", §7 arm S, §8).

    Batches are ``(image [B, 3, H, W], mask [B, H, W] long)``; a label batch ``[B]`` (single-class scenes) is read as
    masks filled with the label.

    Args:
        num_classes: classes of the masks.
        widths: channels of the encoder stages of :class:`TinySegNet` (the decoder mirrors them).
        ignore_index: mask value left out of the loss and the mIoU (None = none).
        grid_images: test images shown in the TensorBoard mask grid (0 = no grid).
        optimizer: optimizer of all parameters.
        scheduler: optional learning-rate scheduler.
        scheduler_interval: ``epoch`` or ``step``, when the scheduler steps.
    """

    unit_test_datamodule = "ProceduralEOScenesDataModule"
    test_metric_name = "miou"

    def __init__(
        self,
        num_classes: int = 6,
        widths: tuple[int, ...] = (16, 32, 48),
        ignore_index: int | None = None,
        grid_images: int = 4,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SceneSegmentationModule: num_classes must be ≥ 2, got {num_classes}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"SceneSegmentationModule: scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if grid_images < 0:
            raise ValueError(f"SceneSegmentationModule: grid_images must be ≥ 0, got {grid_images}")
        self.save_hyperparameters()
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.net = TinySegNet(num_classes, tuple(widths))
        self.val_miou = SegmentationMIoU(num_classes, ignore_index)
        self._init_grid_test()
        #: loader index → (images, masks) of the first test images, kept for the TensorBoard grid
        self._shown: dict[int, tuple[Tensor, Tensor]] = {}
        self._shown_truth: Tensor | None = None
        self._keep: set[int] = set()

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"widths": (8, 16), "grid_images": 2}

    @classmethod
    def unit_test_datamodule_params(cls) -> dict[str, Any]:
        """Overrides of the unit-test datamodule's ``unit_test_params()`` (segmentation mosaics)."""
        return {"task": "segmentation"}

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SceneSegmentationModule expects [B, 3, H, W] images, got {tuple(x.shape)}")
        return self.net(x)

    @staticmethod
    def _masks(x: Tensor, y: Tensor) -> Tensor:
        if y.dim() == 1:
            return y.view(-1, 1, 1).expand(-1, x.shape[-2], x.shape[-1])
        if y.shape != (x.shape[0], *x.shape[-2:]):
            raise ValueError(f"SceneSegmentationModule: masks must be [B, H, W] = {(x.shape[0], *x.shape[-2:])}, got {tuple(y.shape)}")
        return y.long()

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        ignore = -100 if self.hparams.ignore_index is None else int(self.hparams.ignore_index)
        return F.cross_entropy(logits, y, ignore_index=ignore)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], self._masks(*batch[:2])
        logits = self(x)
        loss = self._loss(logits, y)
        pix = (logits.argmax(1) == y).float().mean()
        self.log_dict({"train/loss": loss, "train/pixel_acc": pix}, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch[0], self._masks(*batch[:2])
        logits = self(x)
        self.val_miou(logits.argmax(1), y)
        self.log("val/loss", self._loss(logits, y), on_epoch=True, batch_size=len(y))
        self.log("val/miou", self.val_miou, on_epoch=True, batch_size=len(y))

    # ------------------------------------------------------------------ test: grid metrics + the TensorBoard grid
    def _new_test_metric(self) -> Metric:
        return SegmentationMIoU(self.hparams.num_classes, self.hparams.ignore_index)

    def _predict(self, x: Tensor) -> Tensor:
        return self(x).argmax(1)

    def _shown_loaders(self) -> list[int]:
        """Loaders shown in the grid: clean and every corruption at severity 3 (or the middle severity tested)."""
        sevs = sorted({s for c, s in self.test_grid if c != "clean"})
        mid = 3 if 3 in sevs else (sevs[(len(sevs) - 1) // 2] if sevs else 0)
        return [i for i, (c, s) in enumerate(self.test_grid) if c == "clean" or s == mid]

    def on_test_start(self) -> None:
        super().on_test_start()
        self._shown, self._shown_truth = {}, None
        keep = self.hparams.grid_images > 0 and _tensorboard(self.trainer)
        self._keep = set(self._shown_loaders()) if keep else set()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x, y = batch[0], self._masks(*batch[:2])
        pred = super().test_step((x, y), batch_idx, dataloader_idx)
        if batch_idx == 0 and dataloader_idx in self._keep:
            k = self.hparams.grid_images
            self._shown[dataloader_idx] = (x[:k].detach().cpu(), pred[:k].detach().cpu())
            if dataloader_idx == 0:
                self._shown_truth = y[:k].detach().cpu()
        return pred

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if not self._shown or self._shown_truth is None or 0 not in self._shown:
            return
        from trainer.plots import log_figure

        order = sorted(self._shown)
        images = [self._shown[0][0]] + [self._shown[i][0] for i in order]
        masks = [self._shown_truth] + [self._shown[i][1] for i in order]
        titles = ["ground truth"] + ["clean" if i == 0 else self.test_names[i] for i in order]
        log_figure(self.trainer, "test/seg_grid", segmentation_grid_figure(
            images, masks, titles, self.hparams.num_classes, title="rows: input, then mask (ground truth, then predictions)",
        ))  # fmt: skip
        self._shown = {}

    def configure_optimizers(self) -> Any:
        return configure_optimization([{"params": list(self.parameters())}], self.optimizer_fn, self.scheduler_fn,
                                      self.hparams.scheduler_interval)  # fmt: skip
