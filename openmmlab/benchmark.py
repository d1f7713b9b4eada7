"""Forward time and memory of the OpenMMLab EfficientFormerV2 backbone at detection sizes (CPU)."""
from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time


def _measure(variant: str, height: int, width: int, repeats: int, threads: int, queue) -> None:
    import torch

    from .backbone import EfficientFormerV2

    torch.set_num_threads(threads)
    model = EfficientFormerV2(variant).eval()
    x = torch.randn(1, 3, height, width)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in model.parameters())
    queue.put({"variant": variant, "height": height, "width": width, "threads": threads, "params": params,
               "forward_ms_median": 1000 * statistics.median(times), "peak_rss_mib": peak_kib / 1024,
               "forward_peak_mib": (peak_kib - base_kib) / 1024})


def benchmark_backbone(variant: str, height: int = 800, width: int = 1333, repeats: int = 3,
                       threads: int = 2) -> dict[str, float]:
    """Median forward time (batch 1, inference mode) and memory of one variant, measured in a
    fresh process so that its peak resident memory (``getrusage``) is its own.

    Returns a record with ``forward_ms_median``, ``peak_rss_mib`` (the process) and
    ``forward_peak_mib`` (the rise of the peak during the forward passes, i.e. activations).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(variant, height, width, repeats, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"benchmark of {variant} failed with exit code {proc.exitcode}")
    return result
