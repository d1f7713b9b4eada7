"""ONNX: the one exporter path (torch's dynamo-based `torch.onnx.export`, opset 20) and ONNX Runtime
sessions for low-latency CPU inference; TensorRT through ONNX Runtime where it is installed.

Every ONNX graph of the suite (the `--format onnx` file, the benchmark's graph, the latency
table's blocks) is written by `export_onnx`. Sessions: full graph optimisation (constant folding,
Conv+Add fusion, ONNX Runtime's channel-blocked NCHWc layout for convolutions, which also covers
the single-op Gelu of opset 20), sequential execution, a fixed number of intra-op threads and one
inter-op thread. The optimised graph can be saved (`optimized_path`) to skip the optimisation at
the next start; it is specific to the CPU's vector width.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..stacks import require_stack
from .base import FP32_ATOL, CompiledModel, Runtime, as_tuple, dynamic_shapes

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ONNX_OPSET", "session_options", "create_session", "op_time_profile", "export_onnx", "check_onnx",
           "OnnxRuntime", "TensorRT", "RUNTIMES"]

ONNX_OPSET = 20      # Gelu is a single ONNX op from opset 20 on


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


def output_names(module: nn.Module, example: torch.Tensor) -> list[str]:
    """`logits` for a classifier, `feat0`... for feature maps."""
    import torch
    with torch.no_grad():
        outs = as_tuple(module(example))
    return ["logits"] if len(outs) == 1 else [f"feat{i}" for i in range(len(outs))]


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True,
                dynamic_hw: bool = False, opset: int = ONNX_OPSET) -> Path:
    """Export `module` (eval mode) to a single-file ONNX model with input `image`, through the
    dynamo-based exporter (the suite's one ONNX exporter path).

    Args:
        dynamic_batch: the batch axis is symbolic. dynamic_hw: height and width are symbolic too.
    """
    require_stack("onnx")
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    names = output_names(module, example)
    example, dims = dynamic_shapes(example, dynamic_batch, dynamic_hw)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=["image"], output_names=names, dynamic_shapes=dims,
                                    external_data=False, optimize=True, verbose=False)
    program.save(str(path), external_data=False)
    return path


def check_onnx(path: str | Path, module: nn.Module, example: torch.Tensor, atol: float = FP32_ATOL,
               session=None) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on `example` (all outputs);
    raises AssertionError when it exceeds `atol`."""
    from .base import check_runtime
    sess = session or create_session(path)
    return check_runtime(_session_runner(sess), module, [example], "ONNX Runtime", atol)


def _session_runner(sess):
    import torch

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()}))
    return run


class OnnxRuntime(Runtime):
    """ONNX files run in ONNX Runtime on the CPU (`--format onnx`, `--backend onnxruntime`)."""

    name = "onnxruntime"
    order = 30
    what = "ONNX Runtime"
    format = "onnx"
    backend = "onnxruntime"
    suffix = ".onnx"
    stack = "onnx"
    imports = ("onnx", "onnxscript", "onnxruntime")
    latency_table = True
    dynamic_batch = True
    dynamic_hw = True
    profile_key = "ort_op_ms"
    providers: list[str] | None = None

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_onnx(module, example, path, dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw)
        return {}

    def load(self, path, threads=None):
        return _session_runner(create_session(path, threads=threads, providers=self.providers))

    def bound(self, path, x, threads) -> CompiledModel:
        import torch
        sess = create_session(path, threads=threads, providers=self.providers)
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return CompiledModel(lambda: sess.run(None, feed),
                             lambda: tuple(torch.from_numpy(o) for o in sess.run(None, feed)), path, {},
                             lambda n: self.bound(path, x, n))

    def profile(self, compiled, x, threads, runs, warmup):
        return op_time_profile(compiled.path, threads, runs, warmup)


class TensorRT(OnnxRuntime):
    """The same ONNX graph run by ONNX Runtime's TensorRT provider (a CUDA GPU and onnxruntime-gpu)."""

    name = "tensorrt"
    order = 40
    what = "ONNX Runtime TensorRT"
    format = None
    backend = "tensorrt"
    latency_table = False
    profile_key = None
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]

    def unavailable(self) -> str:
        why = super().unavailable()
        if why:
            return why
        import onnxruntime as ort
        import torch
        if "TensorrtExecutionProvider" not in ort.get_available_providers() or not torch.cuda.is_available():
            return "backend tensorrt needs onnxruntime-gpu with TensorRT and a CUDA GPU"
        return ""

    def unavailable_error(self, why: str) -> Exception:
        return ValueError(why)


RUNTIMES = (OnnxRuntime(), TensorRT())
