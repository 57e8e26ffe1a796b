"""Robustness summary of a corruption-grid test (reobench.md §2 ``CorruptionSweepCallback``, §8).

``CorruptionSweepCallback`` is the thin adapter around :func:`trainer.metrics.robustness.robustness_summary`.
After ``trainer.test`` over a :class:`datamodules.corruption_grid.CorruptionGridDataModule`, it reads the module's
per-loader metrics (:class:`trainer.protocols.HasCorruptionResults`: ``"clean"`` and ``"<c>/s<k>"``) and logs, on
rank 0, ``robust/rel_drop/<c>``, ``robust/abs_drop/<c>``, ``robust/worst_drop/<c>`` and
``robust/mean_rel_drop/{appearance,geometric,all}``, a corruption × severity heatmap of the metric, the metric
against severity per corruption (lines, clean dashed), a bar chart of the relative drops sorted by size, and writes
``robustness.csv`` (corruption, clean, s1..s5, mean, drops; the rows ranked by relative drop) next to the logs.
Sample grids (``add_image``, reobench.md §8); a text table ``robust/table`` ranks the corruption types by relative drop: test image ``sample_index`` of the datamodule
(:class:`trainer.protocols.ProvidesCorruptedSamples`) and one of scikit-learn's bundled sample photos, each under the
12 corruptions (rows) × clean, s1..s5 (columns). ``summary`` keeps the last result (the benchmark reads it).

Hooks: ``on_test_end``, which runs after the module's ``on_test_epoch_end`` has filled ``test_results``; order among
callbacks does not matter. No checkpointable state.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from trainer.callback_state import StatefulCallback
from trainer.corruptions import FAMILIES
from trainer.metrics.robustness import robustness_summary
from trainer.protocols import HasCorruptionResults, ProvidesCorruptedSamples

__all__ = ["CorruptionSweepCallback"]  # sample_photo: a helper, not a plug-in


class CorruptionSweepCallback(StatefulCallback):
    """Aggregates, logs and plots the per-(corruption, severity) test metrics of a module (reobench.md §3, §8).

    Args:
        name: identity of this callback in checkpoints; default "robust".
        metric: the metric's name in plot titles and the CSV; default "acc".
        sample_grids: log the sample-image grids (the datamodule's test image and the sample photo).
        sample_index: which test image of the datamodule the grid shows.
        photo_side: short side, in pixels, of the sample photo in its grid.
    """

    def __init__(
        self, name: str = "robust", metric: str = "acc", sample_grids: bool = True, sample_index: int = 0,
        photo_side: int = 128,
    ) -> None:  # fmt: skip
        super().__init__(name)
        if sample_index < 0 or photo_side < 8:
            raise ValueError(f"sample_index must be ≥ 0 and photo_side ≥ 8, got {sample_index}, {photo_side}")
        self.metric, self.sample_grids = metric, bool(sample_grids)
        self.sample_index, self.photo_side = int(sample_index), int(photo_side)
        #: the last summary: corruption / family → {mean, abs_drop, rel_drop, worst_drop}
        self.summary: dict[str, dict[str, float]] = {}
        #: the last per-severity table: corruption → metrics by severity
        self.table: dict[str, list[float]] = {}

    @classmethod
    def unit_test_params(cls) -> dict[str, Any]:
        return {}

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not isinstance(pl_module, HasCorruptionResults):
            raise TypeError(f"CorruptionSweepCallback needs a module with test_results, got {type(pl_module).__name__}")
        results = dict(pl_module.test_results)
        if "clean" not in results:
            raise ValueError("CorruptionSweepCallback: the test results have no 'clean' loader")
        table: dict[str, dict[int, float]] = {}
        for key, value in results.items():
            if key == "clean":
                continue
            corruption, _, sev = key.rpartition("/s")
            table.setdefault(corruption, {})[int(sev)] = float(value)
        if not table:
            return
        self.table = {c: [v[s] for s in sorted(v)] for c, v in table.items()}
        families = {f: [c for c in names if c in table] for f, names in FAMILIES.items() if f != "all"}
        self.summary = robustness_summary(results["clean"], self.table, families)
        out_dir = trainer.log_dir or trainer.default_root_dir  # a collective: every rank reads it
        if trainer.is_global_zero:
            self._log(trainer, results["clean"], sorted(next(iter(table.values()))), out_dir)
            if self.sample_grids:
                self._log_samples(trainer, list(table))

    def _log_samples(self, trainer: Trainer, names: list[str]) -> None:
        from trainer.corruptions import corrupt, sample_seed
        from trainer.plots import image_grid, log_image

        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, ProvidesCorruptedSamples):
            clean, _ = dm.clean_test_set()
            i = min(self.sample_index, len(clean) - 1)
            rows = [[clean[i]] + [dm.corrupt_one(c, s, i)[0] for s in range(1, 6)] for c in names]
            log_image(trainer, f"{self.name}/samples/test_image", image_grid(rows))
        photo = sample_photo(self.photo_side)
        rows = [[photo] + [corrupt(photo, c, s, seed=sample_seed(0, "photo", c, s)) for s in range(1, 6)] for c in names]
        log_image(trainer, f"{self.name}/samples/photo", image_grid(rows))

    def _log(self, trainer: Trainer, clean: float, severities: list[int], out_dir: str) -> None:
        from trainer.plots import bar_figure, heatmap_figure, lines_figure, log_figure, log_text

        scalars = {}
        for c in self.table:
            for k in ("rel_drop", "abs_drop", "worst_drop"):
                scalars[f"{self.name}/{k}/{c}"] = self.summary[c][k]
        for key, row in self.summary.items():
            if key.startswith("family/"):
                scalars[f"{self.name}/mean_rel_drop/{key[7:]}"] = row["rel_drop"]
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        names = list(self.table)
        log_figure(trainer, f"{self.name}/vs_severity", lines_figure(
            severities, {c: self.table[c] for c in names}, title=f"{self.metric} against severity",
            xlabel="severity", ylabel=self.metric, baseline=clean,
        ))  # fmt: skip
        log_figure(trainer, f"{self.name}/heatmap", heatmap_figure(
            [self.table[c] for c in names], labels=names, col_labels=[f"s{s}" for s in severities],
            title=f"{self.metric} per corruption × severity (clean {clean:.3f})", fmt="{:.2f}",
        ))  # fmt: skip
        order = sorted(names, key=lambda c: -self.summary[c]["rel_drop"])
        fam = {c: f for f, cs in FAMILIES.items() if f != "all" for c in cs}
        log_figure(trainer, f"{self.name}/rel_drop", bar_figure(
            order, [self.summary[c]["rel_drop"] for c in order], title="relative drop (%)", ylabel="%",
            groups=[fam.get(c, "other") for c in order],
        ))  # fmt: skip
        head = f"| rank | corruption | clean | {' | '.join(f's{s}' for s in severities)} | mean | abs drop | rel drop % |"
        lines = [head, "|" + "---|" * (len(severities) + 6)]
        for rank, c in enumerate(order, 1):
            s = self.summary[c]
            cells = " | ".join(f"{v:.3f}" for v in self.table[c])
            lines.append(f"| {rank} | {c} | {clean:.3f} | {cells} | {s['mean']:.3f} | {s['abs_drop']:.3f} | {s['rel_drop']:.2f} |")
        log_text(trainer, f"{self.name}/table", "\n".join(lines))
        if trainer.fast_dev_run:  # no logger, no run directory: nothing to write
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "robustness.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["corruption", "clean", *[f"s{s}" for s in severities], "mean", "abs_drop", "rel_drop", "worst_drop"])
            for c in order:
                s = self.summary[c]
                w.writerow([c, clean, *self.table[c], s["mean"], s["abs_drop"], s["rel_drop"], s["worst_drop"]])


def sample_photo(side: int = 128) -> "Any":
    """scikit-learn's bundled ``china.jpg`` (427×640), resized to a short side of ``side`` px: float32 H×W×3 in
    [0, 1] (reobench.md §5: the sample photos serve the corruption tests and the TensorBoard grid)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    img = Image.fromarray(load_sample_images().images[0])
    w, h = img.size
    size = (round(w * side / min(w, h)), round(h * side / min(w, h)))
    return np.asarray(img.resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
