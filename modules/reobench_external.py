"""REOBench's tasks evaluated from predictions made elsewhere (``../shared/papers/reobench.md`` §2, §3).

Paper: Li, Tao, Zhang, Liu, Xiong, Luo, Liu, Pechenizkiy, Zhu, Huang, "REOBench: Benchmarking Robustness of Earth
Observation Foundation Models", arXiv 2505.16793 (2025). Six remote-sensing tasks are evaluated under 12
perturbations at 5 severities; detection (mmrotate on DIOR-R), captioning, VQA and grounding (VLM inference on
VRSBench) and Potsdam segmentation run in other code bases.

:class:`ExternalPredictionsEvalModule` reads the per-(corruption, severity) prediction files served by
:class:`datamodules.external_predictions.ExternalPredictionsDataModule` and computes each cell's task metric, so
these tasks go through the same ``trainer test`` harness and ``CorruptionSweepCallback`` as classification:

| task | metric (``test/<metric>/<cell>``) | reobench.md §3 |
|---|---|---|
| classification | ``acc``: overall accuracy | OA |
| segmentation | ``miou``: :class:`trainer.metrics.segmentation.SegmentationMIoU` | mIoU |
| detection | ``map50``: :class:`trainer.metrics.eo_tasks.DetectionAP`, axis-aligned VOC AP at IoU 0.5 | mAP (the paper: oriented boxes; give axis-aligned enclosing boxes) |
| caption | ``caption_sim``: MiniLM cosine to the reference; ``clair`` with a judge | CLAIR (LLM-judged) |
| vqa | ``vqa_acc``: the rule chain of §4.4, then an optional judge | judged accuracy |
| grounding | ``acc50``: Acc@0.5 IoU | Acc@0.5 |

``test_results`` holds ``"clean"`` and ``"<c>/s<k>"`` → metric (higher is better; the
:class:`trainer.protocols.HasCorruptionResults` protocol). Judged tasks also log ``test/judge_failures/<cell>``,
grounding ``test/unparsed/<cell>``. Used by ``yaml/reobench/{potsdam_seg,dior_det,vrsbench_caption,vrsbench_vqa,
vrsbench_grounding}_external.yaml`` (paper scale) and ``yaml/reobench/scenes_grounding_external.yaml`` (offline demo:
:class:`datamodules.external_predictions.SceneRulePredictionsDataModule` writes a rule-based detector's files).

Nothing is trained: the module has no parameters, ``configure_optimizers`` returns None and ``training_step``
steps Lightning's placeholder optimizer (the supported route for parameter-free modules, as
``FiCSUMStreamModule``), so ``trainer fit`` is a dry pass over the clean cell that logs ``train/loss`` = 1 − the
batch's metric. Deviations: detection is scored on axis-aligned boxes (DIOR-R's oriented boxes need their
enclosing boxes); captioning defaults to the offline MiniLM cosine instead of CLAIR.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from trainer.metrics.eo_tasks import CaptionSimilarity, DetectionAP, GroundingAccuracy, VQAAccuracy

__all__ = ["ExternalPredictionsEvalModule"]

TASK_METRICS = {"classification": "acc", "segmentation": "miou", "detection": "map50", "caption": "caption_sim",
                "vqa": "vqa_acc", "grounding": "acc50"}  # fmt: skip


class ExternalPredictionsEvalModule(pl.LightningModule):
    """Scores per-cell prediction files with the task metric of reobench.md §3; see the module docstring.

    Args:
        task: ``classification``, ``segmentation``, ``detection``, ``caption``, ``vqa`` or ``grounding``; must equal
            the datamodule's ``task``.
        num_classes: classes of classification, segmentation and detection (required there, unused otherwise).
        iou_threshold: IoU of a detection match and a grounding hit (reobench.md §3: 0.5).
        inclusive_pixels: inclusive-pixel box areas (x₂ − x₁ + 1)(y₂ − y₁ + 1) as the authors' helper, instead of
            continuous areas (reobench.md §4.5; default False).
        judge: ``"module:function"`` of a judge: VQA ``judge(question, truth, prediction) -> bool | None``, caption
            ``judge(candidate, references) -> float in [0, 1] | None`` (e.g. an LLM CLAIR scorer); None = rules /
            MiniLM only.
        on_judge_failure: ``wrong`` (a failed judge call counts as wrong; default) or ``skip`` (left out of the
            denominator); failures are always counted and logged.
        caption_encoder: sentence encoder of the offline caption score (``minilm``: all-MiniLM-L6-v2; ``hash``: no
            files, for tests).
        ignore_index: segmentation label left out of the mIoU (None = none).
    """

    unit_test_datamodule = "ExternalPredictionsDataModule"

    def __init__(
        self,
        task: str,
        num_classes: int | None = None,
        iou_threshold: float = 0.5,
        inclusive_pixels: bool = False,
        judge: str | None = None,
        on_judge_failure: str = "wrong",
        caption_encoder: str = "minilm",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if task not in TASK_METRICS:
            raise ValueError(f"ExternalPredictionsEvalModule: task must be one of {tuple(TASK_METRICS)}, got {task!r}")
        if task in ("classification", "segmentation", "detection") and (num_classes is None or num_classes < 1):
            raise ValueError(f"ExternalPredictionsEvalModule: task {task!r} needs num_classes ≥ 1")
        if judge is not None and task not in ("caption", "vqa"):
            raise ValueError(f"ExternalPredictionsEvalModule: a judge applies to caption and vqa, not {task!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.metric_name = "clair" if task == "caption" and judge is not None else TASK_METRICS[task]
        self.__dict__["_text_encoder"] = None  # one sentence encoder shared by every caption cell, outside the tree
        self._make_metric()  # fail now on a bad judge path or setting
        self.test_metrics = nn.ModuleList()
        self.test_names: list[str] = []
        self._cell_logs: dict[int, dict[str, float]] = {}
        self._current = -1
        #: loader name → metric of the last ``test`` run
        self.test_results: dict[str, float] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {"task": "grounding"}

    # ------------------------------------------------------------------ metrics
    def _make_metric(self) -> Metric:
        h = self.hparams
        if h.task == "classification":
            return MulticlassAccuracy(h.num_classes, average="micro")
        if h.task == "segmentation":
            from trainer.metrics.segmentation import SegmentationMIoU

            return SegmentationMIoU(h.num_classes, ignore_index=h.ignore_index)
        if h.task == "detection":
            return DetectionAP(h.num_classes, h.iou_threshold, h.inclusive_pixels)
        if h.task == "grounding":
            return GroundingAccuracy(h.iou_threshold, h.inclusive_pixels)
        if h.task == "vqa":
            return VQAAccuracy(h.judge, h.on_judge_failure)
        encoder = self.__dict__.get("_text_encoder")
        if encoder is None:
            from trainer.text_scoring import FrozenTextEncoder

            encoder = self.__dict__["_text_encoder"] = FrozenTextEncoder(h.caption_encoder)  # loaded at first use
        return CaptionSimilarity(encoder, h.judge, h.on_judge_failure)

    def _update(self, metric: Metric, batch: list[tuple[dict, dict]]) -> None:
        """Feed one batch of (prediction, reference) record pairs to a metric of this task."""
        preds, refs = [p for p, _ in batch], [r for _, r in batch]
        task = self.hparams.task
        if task == "classification":
            metric.update(torch.tensor([int(p["label"]) for p in preds]), torch.tensor([int(r["label"]) for r in refs]))
        elif task == "segmentation":
            for p, r in zip(preds, refs):
                if p["mask"].shape != r["mask"].shape:
                    raise ValueError(f"sample {p['id']!r}: predicted mask {p['mask'].shape} != reference {r['mask'].shape}")
                metric.update(torch.as_tensor(p["mask"]), torch.as_tensor(r["mask"]))
        elif task == "detection":
            metric.update(preds, refs)
        elif task == "grounding":
            metric.update([p["box"] for p in preds], [r["box"] for r in refs])
        elif task == "vqa":
            metric.update([p["answer"] for p in preds], [str(r["answer"]) for r in refs],
                          [str(r.get("question", "")) for r in refs])  # fmt: skip
        else:
            metric.update([p["caption"] for p in preds], [r["captions"] if "captions" in r else r["caption"] for r in refs])

    # ------------------------------------------------------------------ the dry fit pass
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        dm_task = getattr(dm, "task", None)
        if dm_task is not None and dm_task != self.hparams.task:
            raise ValueError(f"ExternalPredictionsEvalModule: task {self.hparams.task!r} but the datamodule serves {dm_task!r}")

    def configure_optimizers(self) -> None:
        """No optimizer: nothing is trained (Lightning's placeholder counts the steps)."""
        return None

    def training_step(self, batch: list[tuple[dict, dict]], batch_idx: int) -> None:
        metric = self._make_metric().to(self.device)
        self._update(metric, batch)
        value = float(metric.compute())
        self.log("train/loss", 1.0 - value, on_step=True, batch_size=len(batch))
        self.optimizers().step()  # the placeholder optimizer: one batch is one global step

    # ------------------------------------------------------------------ the corruption grid
    def on_test_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        grid = getattr(dm, "grid_index", None)
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, list) else 1
        if grid is not None and len(grid) == n:
            self.test_names = ["clean" if c == "clean" else f"{c}/s{s}" for c, s in grid]
        else:
            self.test_names = ["clean"] + [f"loader{i}" for i in range(1, n)]
        self.test_results = {}
        self.test_metrics = nn.ModuleList(self._make_metric() for _ in self.test_names).to(self.device)
        self._cell_logs, self._current = {}, -1

    def _finish_cell(self, idx: int) -> None:
        """Compute (synced across ranks) and free one cell's metric: loaders run one after another, so at most one
        cell's detections are held at a time (every rank moves to the next loader together)."""
        if idx < 0 or idx in self._cell_logs:
            return
        name, metric = self.test_names[idx], self.test_metrics[idx]
        value = float(metric.compute())
        logs = {f"test/{self.metric_name}/{name}": value}
        if hasattr(metric, "judge_failures") and metric.judge is not None:
            logs[f"test/judge_failures/{name}"] = float(metric.judge_failures)
        if hasattr(metric, "unparsed"):
            logs[f"test/unparsed/{name}"] = float(metric.unparsed)
        metric.reset()
        self._cell_logs[idx] = logs
        self.test_results[name] = value

    def test_step(self, batch: list[tuple[dict, dict]], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self._current:
            self._finish_cell(self._current)
            self._current = dataloader_idx
        self._update(self.test_metrics[dataloader_idx], batch)

    def on_test_epoch_end(self) -> None:
        for idx in range(len(self.test_names)):
            self._finish_cell(idx)
        self.test_results = {name: self.test_results[name] for name in self.test_names}  # grid order
        self.log_dict({k: v for idx in sorted(self._cell_logs) for k, v in self._cell_logs[idx].items()},
                      add_dataloader_idx=False)  # fmt: skip
