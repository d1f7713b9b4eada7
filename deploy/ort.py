"""ONNX Runtime sessions for low-latency CPU inference.

Full graph optimisation (constant folding, Conv+Add fusion, ONNX Runtime's channel-blocked NCHWc
layout for convolutions, which also covers the single-op Gelu of opset 20), sequential
execution, a fixed number of intra-op threads and one inter-op thread. The optimised graph can
be saved (`optimized_path`) to skip the optimisation at the next start; it is specific to the
CPU's vector width.
"""
from __future__ import annotations

from pathlib import Path

from .stacks import require_stack

__all__ = ["session_options", "create_session", "op_time_profile"]


def _ort():
    require_stack("onnx")
    import onnxruntime as ort
    return ort


def session_options(threads: int | None = None, level: str = "all", optimized_path: str | Path | None = None,
                    profile_prefix: str | None = None):
    """`onnxruntime.SessionOptions` for low-latency CPU inference: sequential execution, `threads`
    intra-op threads (None: ONNX Runtime's default), one inter-op thread, worker threads that
    spin during a run and stop spinning when it ends.

    Args:
        level: graph optimisation level, "all", "extended", "basic" or "disabled".
        optimized_path: where ONNX Runtime saves the graph it optimised.
        profile_prefix: enable ONNX Runtime's profiler, writing a JSON trace with this prefix.
    """
    ort = _ort()
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if level not in levels:
        raise ValueError(f"level must be one of {', '.join(levels)}, not {level!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    # worker threads spin while a run is in progress and stop at its end: idle sessions (several
    # models timed interleaved, or an app between frames) do not take cores from the active one
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def create_session(path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                   optimized_path: str | Path | None = None, profile_prefix: str | None = None):
    """An `onnxruntime.InferenceSession` with `session_options(threads)` (CPU by default)."""
    ort = _ort()
    so = session_options(threads, "all", optimized_path=optimized_path, profile_prefix=profile_prefix)
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def op_time_profile(path: str | Path, threads: int | None = None, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Where the time of an ONNX graph goes: ONNX Runtime's profiler over `runs` runs after
    `warmup` untimed ones, on a random input; kernel time per op type in ms per run, largest
    first (op types of the optimised graph: FusedConv, ReorderInput, ...)."""
    import collections
    import json
    import tempfile

    import numpy as np

    ort = _ort()
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(threads, "all", profile_prefix=str(Path(tmp) / "ort"))
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        if not all(isinstance(d, int) for d in inp.shape):
            raise ValueError(f"{path}: input shape {inp.shape} is symbolic; profile a graph of static shape")
        feed = {inp.name: np.random.default_rng(0).random(inp.shape, dtype=np.float32)}
        for _ in range(warmup + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < warmup + runs:
        raise RuntimeError(f"ONNX Runtime's profile holds {len(starts)} runs, {warmup + runs} were made: "
                           "its per-operator times would be wrong")
    first_timed = starts[warmup]
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= first_timed:
            per_op[e["args"]["op_name"]] += e["dur"]
    return {op: us / runs / 1e3 for op, us in per_op.most_common()}
