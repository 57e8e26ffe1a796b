"""Helpers shared by the benchmark scripts: mean ± sd, and training runs in worker processes."""

from __future__ import annotations

import multiprocessing as mp
import statistics
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["mean_sd", "run_in_workers"]


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
