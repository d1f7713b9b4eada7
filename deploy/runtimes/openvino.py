"""OpenVINO export (IR: `.xml` + `.bin`), its CPU runtime, and int8 with NNCF.

    from deploy.runtimes.openvino import compile_openvino, export_openvino
    export_openvino(net, example, "s0.xml")                      # fp32; calibration=[...] for int8
    model = compile_openvino("s0.xml", threads=1)                # f32, latency hint
    outputs = model(example)                                     # tuple of tensors

The module is captured with `torch.export` (symbolic batch, height and width with
`dynamic_hw=True`; for EfficientFormerV2 call `shape_generic()` on the deploy form first, so that
no code path depends on the input size) and converted by `ov.convert_model`; the IR keeps the
example's shape otherwise. `torch.export` rather than the TorchScript trace: the trace is
deprecated, and its graph of `shape_generic()` held matrix products of unequal ranks, which the
CPU plugin cannot compile with dynamic shapes. Weights are saved
in fp32 (`compress_to_fp16=False`), so the IR is exact. The CPU plugin's default precision on
CPUs with AVX-512 BF16 is bf16, which is not exact: `compile_openvino` asks for f32 unless told
otherwise.

`op_time_profile` reads the CPU plugin's per-node performance counters: where the time goes.

int8 (`calibration` given): `nncf.quantize` on the converted model (one sample per calibration
image), with bias correction off: NNCF's fast bias correction fails on the deploy form of
EfficientFormerV2 (a reshape of the attention-logit bias).
"""
from __future__ import annotations

import collections
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

from backbones.errors import NotFoundError, UsageError

from ..stacks import require_stack
from .base import Runtime, bind, dynamic_shapes

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["OpenVINOModel", "compile_openvino", "export_openvino", "op_time_profile", "quantize_nncf", "OpenVINO", "RUNTIMES"]

Precision = Literal["f32", "bf16", "f16"]


def quantize_nncf(ov_model, calibration: Sequence[torch.Tensor]):
    """An int8 copy of an OpenVINO model (`openvino.Model`) by NNCF post-training quantization,
    calibrated on `calibration` (tensors of the model's input shape)."""
    require_stack("nncf")
    import nncf

    if not calibration:
        raise ValueError("int8 quantization needs calibration images (pass --calibration DIR)")
    dataset = nncf.Dataset(list(calibration), lambda x: x.numpy())
    return nncf.quantize(ov_model, dataset, subset_size=len(calibration),
                         advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True))


def export_openvino(module: nn.Module, example: torch.Tensor, path: str | Path, dynamic_hw: bool = False,
                    calibration: Sequence[torch.Tensor] | None = None) -> Path:
    """Convert `module` (eval mode) to an OpenVINO IR and save it as `path` (`.xml`) and the
    `.bin` of the same name next to it.

    Args:
        example: the input to capture with; its shape is the IR's input shape unless `dynamic_hw`.
        dynamic_hw: batch, height and width symbolic in the IR.
        calibration: images (each of the example's shape) for NNCF int8 quantization; None: fp32.
    Returns the `.xml` path.
    """
    require_stack("openvino" if calibration is None else "nncf")
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise UsageError(f"an OpenVINO IR is saved as .xml (and .bin), got {path}")
    import torch
    module = module.eval()
    shape = [-1, example.shape[1], -1, -1] if dynamic_hw else list(example.shape)
    example, dims = dynamic_shapes(example, batch=dynamic_hw, hw=dynamic_hw)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=dims)
    model = ov.convert_model(program)
    model.reshape({model.input(0): ov.PartialShape(shape)})
    if calibration is not None:
        model = quantize_nncf(model, calibration)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


class OpenVINOModel:
    """A compiled OpenVINO model; calling it on a tensor returns its outputs as a tuple of tensors.

    Args:
        compiled: an `openvino.CompiledModel`.
    """

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch
        results = self._request.infer({0: x.contiguous().numpy()})
        return tuple(torch.from_numpy(results[o].copy()) for o in self.compiled.outputs)


def compile_openvino(path: str | Path, threads: int | None = None, precision: Precision = "f32",
                     perf_count: bool = False) -> OpenVINOModel:
    """Compile an IR (`.xml`) for the CPU plugin with the latency hint.

    Args:
        threads: `INFERENCE_NUM_THREADS` (None: the plugin's default).
        precision: `INFERENCE_PRECISION_HINT`; f32 is exact, the plugin's own default here is bf16.
        perf_count: collect per-node performance counters (`op_time_profile`); off for timing.
    """
    require_stack("openvino")
    import openvino as ov

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no OpenVINO IR at {path}")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": perf_count}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    core = ov.Core()
    return OpenVINOModel(core.compile_model(core.read_model(str(path)), "CPU", config))


# element-wise activations the CPU plugin runs inside the kernel of the node before them
_ACTIVATIONS = frozenset({"Gelu", "Clamp", "Relu", "Swish", "HSwish", "HSigmoid", "Sigmoid", "Tanh", "Erf",
                          "Elu", "Mish", "SoftPlus", "PRelu", "Exp"})


def _fused_activations(runtime_op) -> list[str]:
    """Activation op types folded into a compiled node (from its `originalLayersNames`), in order."""
    names = runtime_op.get_rt_info()["originalLayersNames"].astype(str).split(",")
    found = []
    for name in names:
        op_type = re.sub(r"_\d+$", "", name.rsplit("/", 1)[-1])
        if op_type in _ACTIVATIONS and op_type not in found:
            found.append(op_type)
    return found


def _runs_int8(exec_type: str) -> bool:
    """Whether a CPU-plugin kernel (its `exec_type`, e.g. `jit_avx2_1x1_I8`, `brgemm_avx2_f32`)
    computes in 8-bit integers."""
    return exec_type.rsplit("_", 1)[-1].lower() in ("i8", "u8")


def op_time_profile(path: str | Path, x: torch.Tensor, threads: int | None = None, runs: int = 50,
                    warmup: int = 5, precision: Precision = "f32") -> dict[str, float]:
    """Where the time of an OpenVINO IR goes on the CPU plugin: its per-node performance counters
    (`PERF_COUNT`) over `runs` runs on `x` after `warmup` untimed ones; each node's median time,
    summed by node type, in ms, largest first. The plugin runs an activation inside the kernel
    of the node before it, so a node with fused activations is named with them
    (`Convolution+Gelu`, `GroupConvolution+Clamp`): that is where an activation's cost shows.
    Nodes whose kernel computes in 8-bit integers are marked ` (int8)`: in an int8 model the
    unmarked ones are where it falls back to float.
    Compiled as `compile_openvino(path, threads, precision)`; `x` must have the IR's input shape."""
    model = compile_openvino(path, threads=threads, precision=precision, perf_count=True)
    runtime_ops = model.compiled.get_runtime_model().get_ordered_ops()
    kinds = {op.get_friendly_name(): _fused_activations(op) for op in runtime_ops}
    request = model.compiled.create_infer_request()
    feed = {0: x.contiguous().numpy()}
    for _ in range(warmup):
        request.infer(feed)
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for _ in range(runs):
        request.infer(feed)
        for node in request.profiling_info:
            node_type = node.node_type + (" (int8)" if _runs_int8(node.exec_type) else "")
            per_node[node.node_name, node_type].append(node.real_time.total_seconds())
    # each node's median over the runs: a run preempted by another process does not skew it
    per_op: collections.Counter = collections.Counter()
    for (name, node_type), seconds in per_node.items():
        median = statistics.median(seconds)
        if median > 0:
            base, _, int8 = node_type.partition(" ")
            per_op["+".join([base, *kinds.get(name, [])]) + (f" {int8}" if int8 else "")] += median * 1e3
    return dict(per_op.most_common())


class OpenVINO(Runtime):
    """OpenVINO IR (`.xml` + `.bin`) on the CPU plugin in f32; int8 through NNCF."""

    name = "openvino"
    order = 60
    what = "OpenVINO CPU (f32)"
    format = "openvino"
    backend = "openvino"
    suffix = ".xml"
    stack = "openvino"
    int8_stack = "nncf"
    imports = ("openvino",)
    int8 = True
    latency_table = True
    dynamic_hw = True
    profile_key = "ov_op_ms"

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_openvino(module, example, path, dynamic_hw=dynamic_hw, calibration=calibration)
        return {}

    def load(self, path, threads=None):
        return compile_openvino(path, threads=threads, precision="f32")

    def bound(self, path, x, threads):
        model = compile_openvino(path, threads=threads, precision="f32")
        info = {"ov_threads": int(model.compiled.get_property("INFERENCE_NUM_THREADS")),
                "ov_precision": model.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()}
        return bind(model, x, path, info, lambda n: self.bound(path, x, n))

    def profile(self, compiled, x, threads, runs, warmup):
        return op_time_profile(compiled.path, x, threads, runs, warmup)


RUNTIMES = (OpenVINO(),)
