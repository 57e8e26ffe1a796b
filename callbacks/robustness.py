"""Robustness summary of a corruption-grid test (reobench.md §2 ``CorruptionSweepCallback``, §8).

``CorruptionSweepCallback`` is the thin adapter around :func:`trainer.metrics.robustness.robustness_summary`.
After ``trainer.test`` over a :class:`datamodules.corruption_grid.CorruptionGridDataModule`, it reads the module's
per-loader metrics (:class:`trainer.protocols.HasCorruptionResults`: ``"clean"`` and ``"<c>/s<k>"``) and logs, on
rank 0, ``robust/rel_drop/<c>``, ``robust/abs_drop/<c>``, ``robust/worst_drop/<c>`` and
``robust/mean_rel_drop/{appearance,geometric,all}``, a corruption × severity heatmap of the metric, a bar chart of
the relative drops sorted by size, and writes ``robustness.csv`` (corruption, clean, s1..s5, mean, drops) next to the
logs. ``summary`` keeps the last result (the benchmark reads it).

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
from trainer.protocols import HasCorruptionResults

__all__ = ["CorruptionSweepCallback"]


class CorruptionSweepCallback(StatefulCallback):
    """Aggregates, logs and plots the per-(corruption, severity) test metrics of a module (reobench.md §3, §8).

    Args:
        name: identity of this callback in checkpoints; default "robust".
        metric: the metric's name in plot titles and the CSV; default "acc".
    """

    def __init__(self, name: str = "robust", metric: str = "acc") -> None:
        super().__init__(name)
        self.metric = metric
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
        if trainer.is_global_zero:
            self._log(trainer, results["clean"], sorted(next(iter(table.values()))))

    def _log(self, trainer: Trainer, clean: float, severities: list[int]) -> None:
        from trainer.plots import bar_figure, heatmap_figure, log_figure

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
        out = Path(trainer.log_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "robustness.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["corruption", "clean", *[f"s{s}" for s in severities], "mean", "abs_drop", "rel_drop", "worst_drop"])
            for c in names:
                s = self.summary[c]
                w.writerow([c, clean, *self.table[c], s["mean"], s["abs_drop"], s["rel_drop"], s["worst_drop"]])
