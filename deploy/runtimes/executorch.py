"""ExecuTorch export with the XNNPACK delegate (`.pte`), its runtime, and int8 through PT2E.

    from deploy.runtimes.executorch import ExecuTorchProgram, export_executorch, set_threads
    result = export_executorch(net, example, "s0.pte")          # fp32; calibration=[...] for int8
    result.undelegated                                           # {"aten.mm.default": 8, ...}
    set_threads(1)                                               # once per process, before running
    outputs = ExecuTorchProgram("s0.pte")(example)               # tuple of tensors

The program is captured with `torch.export` at the example's shape (batch and size fixed),
computations on constants only are folded (`constant_prop_pass`: e.g. attention biases of a
grid other than the training one, which the delegate would not take), lowered with `to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])` and
serialised. Every operator that stays outside the delegate (and so runs in ExecuTorch's
portable kernels, much slower) is listed by `undelegated_ops` and raises an
`UndelegatedOperatorWarning` naming it.

int8 (`calibration` given): the XNNPACK quantizer (symmetric per-channel int8 weights, int8
activations) through PT2E: the captured (and folded) program's `.module()`, `prepare_pt2e`, one
forward per calibration image, `convert_pt2e`, then the same lowering.
"""
from __future__ import annotations

import operator
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backbones.errors import NotFoundError, UsageError

from ..stacks import require_stack
from .base import Runtime, bind, calibrate_pt2e

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ExecuTorchExport", "ExecuTorchProgram", "UndelegatedOperatorWarning", "capture", "export_executorch",
           "quantize_pt2e", "set_threads", "undelegated_ops", "executorch_op_profile", "ExecuTorch",
           "RUNTIMES"]

_DELEGATE_CALL = "executorch_call_delegate"
_threads: int | None = None  # the thread count of this process's XNNPACK threadpool, once set


class UndelegatedOperatorWarning(UserWarning):
    """An operator of an ExecuTorch program runs outside the XNNPACK delegate."""


@dataclass
class ExecuTorchExport:
    """A written `.pte` program.

    Attributes:
        path: the `.pte` file. int8: whether it was quantized.
        undelegated: operator name -> count of the operators left outside the XNNPACK delegate.
        delegated_calls: how many XNNPACK delegate calls the program makes (partitions).
        quantized: the PT2E-converted module the program was lowered from (int8 only), a PyTorch
            reference of the quantized arithmetic.
    """

    path: Path
    int8: bool = False
    undelegated: dict[str, int] = field(default_factory=dict)
    delegated_calls: int = 0
    quantized: nn.Module | None = None


def _graph_module(program) -> torch.fx.GraphModule:
    """The top-level graph of an EdgeProgramManager, ExportedProgram or GraphModule."""
    import torch
    if hasattr(program, "exported_program"):  # EdgeProgramManager / ExecutorchProgramManager
        program = program.exported_program()
    if hasattr(program, "graph_module"):
        program = program.graph_module
    if not isinstance(program, torch.fx.GraphModule):
        raise TypeError(f"expected an ExecuTorch program or a GraphModule, got {type(program).__name__}")
    return program


def _op_name(target) -> str:
    """`aten.mm.default` for an edge operator, `executorch_call_delegate` for a delegate call."""
    return getattr(target, "__name__", None) or str(target)


def _call_nodes(program) -> list[torch.fx.Node]:
    return [n for n in _graph_module(program).graph.nodes if n.op == "call_function"]


def undelegated_ops(program) -> dict[str, int]:
    """Operators of a lowered program's top-level graph that run outside the delegate: name
    (e.g. `aten.mm.default`) -> count, most frequent first; delegate calls and the `getitem`
    that unpacks their outputs are not counted.

    Args:
        program: the result of `to_edge_transform_and_lower` (or its exported program / graph).
    """
    counts = Counter(_op_name(n.target) for n in _call_nodes(program)
                     if n.target is not operator.getitem and _DELEGATE_CALL not in _op_name(n.target))
    return dict(counts.most_common())


def capture(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`torch.export` of `module` (eval mode) at the example's shape, with every computation on
    constants only (parameters, buffers) folded into a constant."""
    require_stack("executorch")
    import torch
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass
    with torch.no_grad():
        return constant_prop_pass(torch.export.export(module.eval(), (example,)))


def quantize_pt2e(module: nn.Module, example: torch.Tensor, calibration: Sequence[torch.Tensor]) -> nn.Module:
    """`module` quantized for XNNPACK through PT2E, calibrated on `calibration` (each one batch
    of the example's shape): int8 symmetric per-channel weights, int8 activations. The float
    constants are folded first (`capture`), so that they are quantized as constants."""
    require_stack("executorch")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    if not calibration:
        raise ValueError("int8 quantization needs calibration images (pass --calibration DIR)")
    captured = capture(module, example).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return calibrate_pt2e(captured, quantizer, calibration)


def export_executorch(module: nn.Module, example: torch.Tensor, path: str | Path,
                      calibration: Sequence[torch.Tensor] | None = None) -> ExecuTorchExport:
    """Lower `module` (eval mode) to an ExecuTorch program with the XNNPACK delegate and write it.

    Args:
        example: the input; its shape (batch, channels, height, width) is fixed in the program.
        path: the `.pte` file to write (its folder must exist).
        calibration: images (each of the example's shape) for int8 PT2E calibration; None: fp32.
    Returns an `ExecuTorchExport`; each operator outside the delegate is also an
    `UndelegatedOperatorWarning`.
    """
    require_stack("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    import torch

    path = Path(path)
    module = module.eval()
    if calibration is None:
        quantized, program = None, capture(module, example)
    else:
        quantized = quantize_pt2e(module, example, calibration)
        with torch.no_grad():
            program = torch.export.export(quantized, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    result = ExecuTorchExport(path, int8=quantized is not None, undelegated=undelegated_ops(edge),
                              delegated_calls=sum(_DELEGATE_CALL in _op_name(n.target) for n in _call_nodes(edge)),
                              quantized=quantized)
    for name, count in result.undelegated.items():
        warnings.warn(f"{name} (x{count}) runs outside the XNNPACK delegate, in ExecuTorch's portable "
                      f"kernels: {path.name}", UndelegatedOperatorWarning, stacklevel=2)
    path.write_bytes(edge.to_executorch().buffer)
    return result


def set_threads(n: int) -> None:
    """Size the XNNPACK threadpool of this process to `n` threads. Resizing it after a program
    has run crashed ExecuTorch 1.5, so one thread count per process: a second call with the
    same count does nothing, with another count it raises RuntimeError (use a subprocess)."""
    global _threads
    if n < 1:
        raise UsageError(f"thread count must be at least 1, not {n}")
    if _threads == n:
        return
    if _threads is not None:
        raise RuntimeError(f"the ExecuTorch threadpool of this process already has {_threads} threads; "
                           f"run {n} threads in another process")
    require_stack("executorch")
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    _unsafe_reset_threadpool(int(n))
    _threads = int(n)


class ExecuTorchProgram:
    """A `.pte` program loaded in ExecuTorch's runtime; calling it on a tensor returns the
    outputs of its `forward` method as a tuple of tensors.

    Args:
        path: the `.pte` file. method: the method to run.
    """

    def __init__(self, path: str | Path, method: str = "forward") -> None:
        require_stack("executorch")
        from executorch.runtime import Runtime
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"no ExecuTorch program at {self.path}")
        self._program = Runtime.get().load_program(self.path)
        self._method = self._program.load_method(method)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch
        outputs = self._method.execute([x.contiguous()])
        return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in outputs)


def executorch_op_profile(path: str | Path, x: torch.Tensor, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Where the time of an ExecuTorch program goes: ExecuTorch's event tracer (ETDump) over
    `runs` runs after `warmup` untimed ones on `x`, read with `executorch.devtools.Inspector`;
    each event's median over the runs (a run preempted by another process does not skew it),
    summed by operator type, in ms, largest first. Operators inside the XNNPACK delegate
    appear under XNNPACK's names (`Fully Connected (NC, F32) GEMM`, `Transpose (ND, X32)`, ...),
    operators outside it under ExecuTorch's (`native_call_mm.out`, ...); the containers
    (`Method::execute`, `DELEGATE_CALL`, `OPERATOR_CALL`) and the loading events are left out, so
    the values add up to about the run's time. Runs in this process's XNNPACK threadpool (`set_threads`)."""
    import collections
    import re
    import statistics
    import tempfile

    require_stack("executorch")
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path), enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(warmup + runs):
        method.execute([x.contiguous()])
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no debug buffer: tensor debug data are not wanted
        etdump, debug = Path(tmp) / "run.etdp", Path(tmp) / "debug.bin"
        program.write_etdump_result_to_file(str(etdump), str(debug))
        inspector = Inspector(etdump_path=str(etdump))
    per_op: collections.Counter = collections.Counter()
    containers = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")
    for block in inspector.event_blocks:
        if block.name != "Execute":  # the other block times loading (Method::init ...)
            continue
        for event in block.events:
            if event.name in containers or event.perf_data is None:
                continue
            timed = event.perf_data.raw[-runs:]
            per_op[re.sub(r" #\d+$", "", event.name)] += statistics.median(timed) if timed else 0.0
    return dict(per_op.most_common())


class ExecuTorch(Runtime):
    """`.pte` programs with the XNNPACK delegate run in ExecuTorch's runtime; int8 through PT2E."""

    name = "executorch"
    order = 50
    what = "ExecuTorch (XNNPACK)"
    format = "executorch"
    backend = "executorch"
    suffix = ".pte"
    stack = "executorch"
    imports = ("executorch.runtime", "executorch.exir")
    int8 = True
    latency_table = True
    profile_key = "et_op_ms"

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        exported = export_executorch(module, example, path, calibration=calibration)
        return {"undelegated": exported.undelegated}

    def load(self, path, threads=None):
        if threads is not None:
            set_threads(threads)
        return ExecuTorchProgram(path)

    def compile(self, module, x, threads, workdir=None, name="model", calibration=None):
        import tempfile
        set_threads(threads)
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="efv2-executorch-"))
        with warnings.catch_warnings():  # listed in the record instead
            warnings.simplefilter("ignore", UndelegatedOperatorWarning)
            exported = export_executorch(module.eval(), x, workdir / f"{name}.pte", calibration=calibration)
        info = {"undelegated_ops": exported.undelegated, "delegate_calls": exported.delegated_calls}
        return bind(ExecuTorchProgram(exported.path), x, exported.path, info)

    def profile(self, compiled, x, threads, runs, warmup):
        return executorch_op_profile(compiled.path, x, runs, warmup)


RUNTIMES = (ExecuTorch(),)
