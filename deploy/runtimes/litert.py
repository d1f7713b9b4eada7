"""LiteRT (the former TensorFlow Lite, `.tflite`): conversion with `litert-torch`, the LiteRT
interpreter with its XNNPACK delegate, and int8 through PT2E.

    from deploy.runtimes.litert import LiteRTProgram, export_litert
    export_litert(net, example, "s0.tflite")                     # fp32; calibration=[...] for int8
    outputs = LiteRTProgram("s0.tflite", threads=1)(example)     # tuple of tensors

`litert_torch.convert` captures the module with `torch.export` at the example's shape (batch and
size fixed, as for ExecuTorch) and lowers it to a LiteRT flatbuffer; no TensorFlow is involved.
The file keeps PyTorch's NCHW layout at its input and outputs (the converter adds the transposes
to and from the channels-last layout LiteRT computes in): one signature, `serving_default`, with
the input `args_0` and the outputs `output_0`, `output_1`, ... in PyTorch's order.

The interpreter (`ai_edge_litert.interpreter.Interpreter`) applies the XNNPACK delegate by default,
the CPU backend of LiteRT on Android too, with the thread count given (`num_threads`); every
interpreter has its own threadpool, so one process can hold several thread counts.

int8 (`calibration` given): `litert_torch`'s PT2E quantizer (symmetric per-channel int8 weights,
int8 activations), the way ExecuTorch's int8 is made: `torch.export`, `prepare_pt2e`, one
forward per calibration image, `convert_pt2e`, then the conversion with the quantizer's
`QuantConfig`. The converter turns a quantize at the graph's start and a dequantize at its end
into int8 inputs and outputs (with the normalisation inside the graph the input stays float,
without it the input is int8; the logits are int8): `LiteRTProgram` quantizes and dequantizes
with the scale and zero point stored in the file, as an app must.

A model LiteRT cannot convert raises `LiteRTConversionError` (a ValueError) naming the operator
from the converter's error.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backbones.errors import FileFormatError, NotFoundError, UsageError

from ..stacks import require_stack
from .base import Runtime, bind, calibrate_pt2e

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["LiteRTConversionError", "LiteRTProgram", "export_litert", "quantize_pt2e", "LiteRT", "RUNTIMES"]

SIGNATURE = "serving_default"  # the converter's one signature


class LiteRTConversionError(UsageError):
    """`litert_torch` cannot convert the model; the message names the operator."""


# how the converter (torch.export, its lowering to MLIR, the LiteRT converter) names what it cannot take
_OPERATOR_PATTERNS = (
    r"(?:[Nn]o lowering|[Ll]owering not|not (?:be )?lowered|[Uu]nsupported|not supported|[Ff]ailed to legalize"
    r")[^\n]*?((?:aten|torch\.ops\.aten|prims|quantized_decomposed|tfl|stablehlo|mhlo)\.[A-Za-z0-9_.]+)",
    r"((?:aten|torch\.ops\.aten|prims)\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)[^\n]*?(?:not supported|unsupported|"
    r"no lowering|is not lowered)",
    r"['\"]((?:tfl|stablehlo|mhlo|tf)\.[A-Za-z0-9_]+)['\"] op",
)


def _unconvertible_operator(exc: BaseException) -> str | None:
    """The operator a converter error is about, when its message names one."""
    text = str(exc)
    for pattern in _OPERATOR_PATTERNS:
        m = re.search(pattern, text)
        if m:
            return m.group(1).removeprefix("torch.ops.").rstrip(".")
    return None


def _fold_constants(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`graph` with every computation on constants only (parameters, buffers, and tensors built
    in the graph, such as the attention-bias index of a grid other than the training one) replaced
    by its value, in place: integer index arithmetic would otherwise be annotated for quantization."""
    from torchao.quantization.pt2e.constant_fold import ConstantFolder, replace_node_with_constant
    folder = ConstantFolder(graph, skip_constructors=False)
    folder.run()
    for node, value in folder.node_replacements.items():
        replace_node_with_constant(graph, node, value)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def quantize_pt2e(module: nn.Module, example: torch.Tensor, calibration: Sequence[torch.Tensor]):
    """`module` quantized with `litert_torch`'s PT2E quantizer, calibrated on `calibration` (each
    one batch of the example's shape): int8 symmetric per-channel weights, int8 activations.
    Returns (the converted module, the quantizer) for `litert_torch.convert`'s `QuantConfig`."""
    require_stack("litert")
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    if not calibration:
        raise ValueError("int8 quantization needs calibration images (pass --calibration DIR)")
    with torch.no_grad():
        captured = _fold_constants(torch.export.export(module.eval(), (example,)).module())
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return calibrate_pt2e(captured, quantizer, calibration, fold_quantize=False), quantizer


def export_litert(module: nn.Module, example: torch.Tensor, path: str | Path,
                  calibration: Sequence[torch.Tensor] | None = None) -> Path:
    """Convert `module` (eval mode) to a LiteRT flatbuffer and write it at `path`.

    Args:
        example: the input; its shape (batch, channels, height, width) is fixed in the file.
        path: the `.tflite` file to write (its folder must exist).
        calibration: images (each of the example's shape) for int8 PT2E calibration; None: fp32.
    Raises:
        LiteRTConversionError: the converter cannot take an operator of the model (named).
    """
    require_stack("litert")
    import litert_torch
    import torch

    path = Path(path)
    if path.suffix != ".tflite":
        raise UsageError(f"a LiteRT model is saved as .tflite, got {path}")
    module = module.eval()
    try:
        if calibration is None:
            with torch.no_grad():
                converted = litert_torch.convert(module, (example,))
        else:
            from litert_torch.quantize.quant_config import QuantConfig
            quantized, quantizer = quantize_pt2e(module, example, calibration)
            with torch.no_grad():
                converted = litert_torch.convert(quantized, (example,),
                                                 quant_config=QuantConfig(pt2e_quantizer=quantizer))
    except Exception as exc:  # noqa: BLE001 - only errors that name an operator become bad input
        op = _unconvertible_operator(exc)
        if op is None and isinstance(exc, AssertionError):  # the converter's own assertion, not a failed check
            raise RuntimeError(f"litert-torch could not convert the model: {exc}") from exc
        if op is None:
            raise
        raise LiteRTConversionError(f"LiteRT cannot convert the operator {op} of this model "
                                    f"({type(exc).__name__} in litert-torch); export it to another format "
                                    "(onnx, executorch) or replace that operation") from exc
    converted.export(str(path))
    return path


class LiteRTProgram:
    """A `.tflite` file in the LiteRT interpreter (XNNPACK delegate); calling it on a float tensor
    returns the outputs of its signature as a tuple of float tensors, in PyTorch's order. An int8
    input is quantized, int8 outputs dequantized, with the file's scale and zero point.

    Args:
        path: the `.tflite` file.
        threads: the interpreter's threads (XNNPACK's threadpool); None: torch's intra-op count.
    Attributes:
        interpreter: the `ai_edge_litert.interpreter.Interpreter`. input, outputs: its tensor
            details (name, index, shape, dtype, quantization). partitions: how many subgraphs
            the XNNPACK delegate took (1: all of the graph).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require_stack("litert")
        import torch
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise NotFoundError(f"no LiteRT model at {self.path}")
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        del runner  # it holds the interpreter's tensors: we call the interpreter itself
        if len(inputs) != 1:
            raise FileFormatError(f"{self.path} takes {len(inputs)} inputs, not one image")
        self.input = next(iter(inputs.values()))
        # the signature's outputs by name (output_0, output_1, ...): PyTorch's order
        self.outputs = [outputs[k] for k in sorted(outputs, key=lambda k: (len(k), k))]
        # XNNPACK partitions: the interpreter lists each delegated subgraph as one DELEGATE node
        # (1: the whole graph in XNNPACK); the only listing of the nodes is this private method
        self.partitions = sum(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())

    @staticmethod
    def _scale(detail: dict) -> tuple[float, int] | None:
        scale, zero = detail.get("quantization", (0.0, 0))
        return (float(scale), int(zero)) if detail["dtype"].__name__ in ("int8", "uint8") and scale else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import numpy as np
        import torch

        feed = x.detach().contiguous().numpy()
        q = self._scale(self.input)
        if q is not None:
            info = np.iinfo(self.input["dtype"])
            feed = np.clip(np.round(feed / q[0]) + q[1], info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], feed)
        self.interpreter.invoke()
        out = []
        for detail in self.outputs:
            value = self.interpreter.get_tensor(detail["index"])
            q = self._scale(detail)
            if q is not None:
                value = (value.astype(np.float32) - q[1]) * q[0]
            out.append(torch.from_numpy(np.array(value, copy=True)))
        return tuple(out)


class LiteRT(Runtime):
    """`.tflite` files converted by litert-torch, run in the LiteRT interpreter with XNNPACK;
    int8 through PT2E."""

    name = "litert"
    order = 65
    what = "LiteRT (XNNPACK)"
    format = "litert"
    backend = "litert"
    suffix = ".tflite"
    stack = "litert"
    imports = ("litert_torch", "ai_edge_litert.interpreter")
    int8 = True
    latency_table = True

    def export(self, module, example, path, *, dynamic_batch=False, dynamic_hw=False, calibration=None, **options):
        export_litert(module, example, path, calibration=calibration)
        return {}

    def load(self, path, threads=None):
        return LiteRTProgram(path, threads)

    def bound(self, path, x, threads):
        program = LiteRTProgram(path, threads)
        info = {"litert_threads": program.threads, "xnnpack_partitions": program.partitions}
        return bind(program, x, path, info, lambda n: self.bound(path, x, n))


RUNTIMES = (LiteRT(),)
