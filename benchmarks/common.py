"""Helpers shared by the benchmark scripts: mean ± sd, and training runs in worker processes."""

from __future__ import annotations

import multiprocessing as mp
import statistics
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["mean_sd", "run_in_workers", "lm_eval_loss", "seconds_per_step"]


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample sd) of the non-NaN values; sd 0 for one value, (NaN, NaN) for none."""
    xs = [float(v) for v in values if v == v]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_in_workers(fn: Callable[[Any], Any], jobs: list[Any], workers: int) -> Iterator[Any]:
    """``fn(job)`` for every job, ``workers`` at a time, each in a fresh spawned process (one run per
    process, so no state leaks between runs); results in completion order."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        yield from pool.imap_unordered(fn, jobs)


def lm_eval_loss(model: Any, loaders: Any, limit: int | None = None) -> list[float]:
    """Token-weighted mean causal-LM loss of a transformers LM on each loader (``{"input_ids", "labels"}``
    batches with labels already shifted); at most ``limit`` batches per loader."""
    import torch

    from trainer.text import causal_lm_loss

    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    out = []
    model.eval()
    with torch.no_grad():
        for loader in loaders:
            tot = n = 0.0
            for i, batch in enumerate(loader):
                if limit is not None and i >= limit:
                    break
                k = int((batch["labels"] != -100).sum())
                tot += float(causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])) * k
                n += k
            out.append(tot / max(n, 1))
    return out


def seconds_per_step(trainer: Any, tag: str = "train/loss") -> float:
    """Mean wall seconds per optimizer step while training, from the TensorBoard events of ``tag``
    (first to last logged step: model loading, pruning and the final validation are not counted)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = getattr(trainer.logger, "log_dir", None)
    if log_dir is None:
        return float("nan")
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    if tag not in ea.Tags().get("scalars", []):
        return float("nan")
    ev = ea.Scalars(tag)
    if len(ev) < 2 or ev[-1].step == ev[0].step:
        return float("nan")
    return (ev[-1].wall_time - ev[0].wall_time) / (ev[-1].step - ev[0].step)
