"""Forward time and memory of the OpenMMLab EfficientFormerV2 backbone at dense-task sizes (CPU).

Each variant is measured in a fresh process (``spawn``) so that its peak resident memory
(``getrusage``) is its own; times go through the suite's one timer, `deploy.latency.measure`.
A process that ends without a result (killed when out of memory, a crash, an uncaught error) is
a `ChildDiedError` carrying its exit code, never a wait for ever.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import signal
from typing import Any, Callable

import torch

from backbones import resolve_arch
from backbones.errors import UsageError
from deploy.latency import measure

from .backbone import EfficientFormerV2

__all__ = ["ChildDiedError", "run_in_fresh_process", "measure_backbone", "benchmark_backbone"]


class ChildDiedError(ChildProcessError):
    """The measuring process ended before it returned a result.

    Args:
        message: what was measured and how the process ended.
        exitcode: the process's exit code (negative: killed by that signal).
    """

    def __init__(self, message: str, exitcode: int | None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ": out of memory? try a smaller input" if -exitcode == signal.SIGKILL else ""
        return f"exit code {exitcode} (killed by {name}{hint})"
    return f"exit code {exitcode}"


def _call_and_put(fn: Callable[..., Any], args: tuple, results: Any) -> None:
    results.put(fn(*args))


def run_in_fresh_process(fn: Callable[..., Any], *args: Any, what: str = "the child process",
                         poll_s: float = 0.5) -> Any:
    """``fn(*args)`` in a new spawned process; returns its (picklable) result.

    Args:
        fn: a module-level function (spawn pickles it by name).
        *args: its arguments.
        what: names the work in the error message.
        poll_s: how often the parent checks that the process is still alive while it waits.

    Raises:
        ChildDiedError: the process ended without a result (with its exit code).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_call_and_put, args=(fn, args, results), daemon=True)
    proc.start()
    try:
        result = _wait_for_result(proc, results, poll_s, what)
    except BaseException:  # our own error or an interrupt: do not leave the process running
        proc.terminate()
        proc.join()
        raise
    proc.join()
    return result


def _wait_for_result(proc: Any, results: Any, poll_s: float, what: str) -> Any:
    while True:
        try:
            return results.get(timeout=poll_s)
        except queue.Empty:
            if proc.is_alive():
                continue
        try:  # it has ended: a result put just before the end may still be in the pipe
            return results.get(timeout=poll_s)
        except queue.Empty:
            proc.join()
            raise ChildDiedError(f"{what} ended without a result: {_describe_exit(proc.exitcode)}",
                                 proc.exitcode) from None


def measure_backbone(variant: str, height: int, width: int, repeats: int, threads: int) -> dict[str, Any]:
    """Measure one variant in this process: median forward time (batch 1, inference mode, one
    warm-up) and memory. See `benchmark_backbone` for the record."""
    torch.set_num_threads(threads)
    model = EfficientFormerV2(variant).eval()
    x = torch.randn(1, 3, height, width)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        stats = measure(lambda: model(x), runs=repeats, warmup=1)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in model.parameters())
    return {"variant": variant, "height": height, "width": width, "threads": threads, "params": params,
            "forward_ms_median": stats.median, "peak_rss_mib": peak_kib / 1024,
            "forward_peak_mib": (peak_kib - base_kib) / 1024}


def benchmark_backbone(variant: str, height: int = 800, width: int = 1333, repeats: int = 3, threads: int = 2,
                       measure_fn: Callable[..., dict[str, Any]] = measure_backbone) -> dict[str, Any]:
    """Median forward time (batch 1, inference mode) and memory of one variant, measured in a
    fresh process so that its peak resident memory (``getrusage``) is its own.

    Args:
        variant: s0, s1, s2, l (or efficientformerv2_*).
        height, width: input size.
        repeats: timed forward passes (after one warm-up).
        threads: torch intra-op threads in the measuring process.
        measure_fn: what the process runs, ``measure_fn(variant, height, width, repeats, threads)``;
            a module-level function (tests pass one that dies).

    Returns:
        A record with ``params``, ``forward_ms_median``, ``peak_rss_mib`` (the process) and
        ``forward_peak_mib`` (the rise of the peak during the forward passes, i.e. activations).

    Raises:
        ValueError: an unknown variant; UsageError: a size, repeat or thread count below 1.
        ChildDiedError: the measuring process ended without a result (e.g. killed out of memory).
    """
    resolve_arch(variant)  # an unknown name fails here, not in the child
    for name, value in (("height", height), ("width", width), ("repeats", repeats), ("threads", threads)):
        if value < 1:
            raise UsageError(f"{name} must be >= 1, got {value}")
    return run_in_fresh_process(measure_fn, variant, height, width, repeats, threads,
                                what=f"the benchmark of {variant} at {width}x{height}")
