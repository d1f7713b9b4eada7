"""Latency measurement: warm-up, many timed runs, and models measured interleaved so that a
drifting machine (other jobs, clock changes) affects every model of a table alike."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Timed", "LatencyStats", "summarize", "measure", "measure_interleaved"]


@dataclass
class Timed:
    """Something to time: `fn()` runs one inference (inputs bound already)."""

    key: str
    fn: Callable[[], object]


@dataclass
class LatencyStats:
    """Latency of one model in milliseconds."""

    median: float
    p90: float
    mean: float
    min: float
    runs: int


def summarize(times_ms: Sequence[float]) -> LatencyStats:
    """Median, 90th percentile (nearest rank), mean and minimum of `times_ms`."""
    if not times_ms:
        raise ValueError("no timings to summarize")
    ordered = sorted(times_ms)
    rank = max(0, math.ceil(0.9 * len(ordered) - 1e-9) - 1)  # nearest rank
    return LatencyStats(statistics.median(ordered), ordered[rank], statistics.fmean(ordered), ordered[0],
                        len(ordered))


def measure_interleaved(items: Sequence[Timed], runs: int = 50, warmup: int = 10,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, LatencyStats]:
    """Time every item `runs` times, round-robin: round r runs each item once, in an order that
    rotates with r, so no item always follows the same neighbour. Each item is warmed up
    `warmup` times first. Returns stats per key."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys}")
    for it in items:
        for _ in range(warmup):
            it.fn()
    times: dict[str, list[float]] = {it.key: [] for it in items}
    n = len(items)
    for r in range(runs):
        for j in range(n):
            it = items[(r + j) % n]
            t0 = clock()
            it.fn()
            times[it.key].append((clock() - t0) * 1e3)
    return {k: summarize(v) for k, v in times.items()}


def measure(fn: Callable[[], object], runs: int = 50, warmup: int = 10,
            clock: Callable[[], float] = time.perf_counter) -> LatencyStats:
    """Time `fn()` alone: `warmup` untimed calls, then `runs` timed ones (the one timer every
    latency figure of the suite goes through; several models: `measure_interleaved`)."""
    return measure_interleaved([Timed("fn", fn)], runs=runs, warmup=warmup, clock=clock)["fn"]
