"""Export of the deploy form to ONNX, CoreML and TorchScript, each followed by a check.

- ONNX: dynamo exporter, dynamic batch (and dynamic height/width for feature maps), checked with
  ONNX Runtime against PyTorch (max abs difference, bounded).
- CoreML: ML program (`.mlpackage`, iOS 16), float16 by default, an `ImageType` input with the
  ImageNet normalisation built in; checked by loading the saved package and listing its ops, and
  by prediction parity where a CoreML runtime exists (macOS only).
- TorchScript: traced, reloaded and compared with the eager model.

Inputs of the exported classifier and feature models: RGB images in [0, 1] (pixel / 255), NCHW;
the ImageNet mean/std normalisation is part of the graph (`normalize=False` exports a graph that
takes normalised tensors instead).
"""
from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from backbones import EfficientFormerV2

from .models import FeatureTuple, ImageInput, build_model, deploy_form
from .ort import create_session
from .stacks import ExportStackError, require_stack

__all__ = ["ExportStackError", "ExportResult", "export_model", "export_onnx", "check_onnx",
           "export_coreml", "check_coreml", "export_torchscript", "check_torchscript", "FORMATS",
           "ONNX_OPSET", "ONNX_ATOL", "COREML_FEATURE_RANGE"]

FORMATS = ("onnx", "coreml", "torchscript")
ONNX_OPSET = 20      # Gelu is a single ONNX op from opset 20 on
ONNX_ATOL = 1e-4     # float32 parity bound of ONNX Runtime against PyTorch
TORCHSCRIPT_ATOL = 1e-5
Format = Literal["onnx", "coreml", "torchscript"]

@dataclass
class ExportResult:
    """What an export produced and how it was checked."""

    format: str
    path: Path
    seconds: float
    checked: str                      # what the check did
    max_abs_diff: float | None = None  # runtime output vs PyTorch, where a runtime ran
    ok: bool = True                    # whether the check passed
    ops: dict[str, int] = field(default_factory=dict)
    note: str = ""                     # e.g. why no prediction parity was possible

    def summary(self) -> str:
        diff = f", max abs diff {self.max_abs_diff:.3g}" if self.max_abs_diff is not None else ""
        note = f" ({self.note})" if self.note else ""
        return (f"{self.format}: {self.path} in {self.seconds:.1f} s; {self.checked}{diff}: "
                f"{'ok' if self.ok else 'FAILED'}{note}")


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def _output_names(module: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        outs = _as_tuple(module(example))
    return ["logits"] if len(outs) == 1 else [f"feat{i}" for i in range(len(outs))]


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path, dynamic_batch: bool = True,
                dynamic_hw: bool = False, opset: int = ONNX_OPSET) -> Path:
    """Export `module` (eval mode) to a single-file ONNX model with input `image`.

    Args:
        dynamic_batch: the batch axis is symbolic. dynamic_hw: height and width are symbolic too.
    """
    require_stack("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dims: dict[int, object] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=1024)
    if dynamic_hw:
        dims[2] = torch.export.Dim.DYNAMIC
        dims[3] = torch.export.Dim.DYNAMIC
    names = _output_names(module, example)
    if dynamic_batch and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()  # a size-1 axis would specialise
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                    input_names=["image"], output_names=names,
                                    dynamic_shapes=({k: v for k, v in dims.items()},) if dims else None,
                                    external_data=False, optimize=True, verbose=False)
    program.save(str(path), external_data=False)
    return path


def check_onnx(path: str | Path, module: nn.Module, example: torch.Tensor, atol: float = ONNX_ATOL,
               session=None) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on `example` (all outputs);
    raises AssertionError when it exceeds `atol`."""
    sess = session or create_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = _as_tuple(module(example))
    if len(got) != len(want):
        raise AssertionError(f"ONNX model has {len(got)} outputs, PyTorch {len(want)}")
    diff = 0.0
    for g, w in zip(got, want):
        if tuple(g.shape) != tuple(w.shape):
            raise AssertionError(f"ONNX output shape {tuple(g.shape)} != PyTorch {tuple(w.shape)}")
        diff = max(diff, float(abs(torch.from_numpy(g) - w).max()))
    if not diff <= atol:
        raise AssertionError(f"ONNX Runtime differs from PyTorch by {diff:.3g} > {atol}")
    return diff


# --------------------------------------------------------------------------------------------
# CoreML
# --------------------------------------------------------------------------------------------
CoreMLShapes = list[tuple[int, int]] | tuple[int, int] | None
_FLEXIBLE_HINT = ("the traced graph does not hold at {hw[0]}x{hw[1]} ({why}): export one size (shapes=None), or, "
                  "for EfficientFormerV2, call shape_generic() on the deploy form first")
COREML_FEATURE_RANGE = (64, 2048)   # default ranged input sides of a --features CoreML package


def _coreml_check_sizes(shapes: CoreMLShapes, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Input sizes at which a flexible-shape trace is compared with the eager model: every
    enumerated size, or for a range its lower end, the example size and a non-square size."""
    if isinstance(shapes, tuple):
        lo, hi = shapes
        odd = (min(hi, max(lo, size[0] + 37)), min(hi, max(lo, size[1] - 29)))
        return list(dict.fromkeys([(lo, lo), tuple(size), odd]))
    return list(dict.fromkeys(tuple(s) for s in shapes))


def export_coreml(module: nn.Module, example: torch.Tensor, path: str | Path,
                  precision: Literal["float16", "float32"] = "float16", image_input: bool = True,
                  shapes: CoreMLShapes = None):
    """Convert `module` to an ML program package (`.mlpackage`, iOS 16 target).

    Fixed size (`shapes=None`): from the `torch.export` program at the example's size.
    Flexible sizes: from the module's trace, which must hold at every size (EfficientFormerV2:
    call `shape_generic()` on the deploy form first); before conversion the trace is compared
    with the eager module at each enumerated size (or at three sizes of a range) and the export
    stops with an AssertionError if they differ by more than 1e-4.

    Args:
        image_input: the input is a CoreML `ImageType` (RGB, pixel values 0..255 scaled by 1/255;
            the module then normalises itself) instead of a float tensor.
        shapes: a list of (height, width): enumerated input sizes; a (min, max) tuple: height and
            width each anywhere in [min, max] (ranged); None: only the example's size.
    Returns the `coremltools` model.
    """
    require_stack("coreml")
    import coremltools as ct
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, not {precision!r}")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"a CoreML ML program is saved as a .mlpackage, got {path}")
    n, c = example.shape[:2]
    size = tuple(example.shape[-2:])
    if isinstance(shapes, tuple):
        lo, hi = shapes
        if not (33 <= lo <= min(size) and max(size) <= hi):
            raise ValueError(f"CoreML size range {lo}..{hi} must contain the example size {size} and start at 33 "
                             "or more")
    elif shapes and size not in {tuple(s) for s in shapes}:
        raise ValueError(f"the enumerated CoreML sizes {list(shapes)} must include the example size {size} "
                         "(the package's default)")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with torch.no_grad():
        if shapes:  # a traced graph, checked to hold at the flexible sizes
            source = torch.jit.trace(module, example, check_trace=False)
            for hw in _coreml_check_sizes(shapes, size):
                x = torch.rand(n, c, *hw, generator=torch.Generator().manual_seed(0))
                try:
                    traced = _as_tuple(source(x))
                except RuntimeError as e:  # shapes fixed in the trace no longer fit
                    raise AssertionError(_FLEXIBLE_HINT.format(hw=hw, why=str(e).splitlines()[-1])) from e
                diff = max(float((a - b).abs().max()) for a, b in zip(traced, _as_tuple(module(x))))
                if diff > 1e-4:
                    raise AssertionError(_FLEXIBLE_HINT.format(hw=hw, why=f"max abs diff {diff:.3g}"))
            if isinstance(shapes, tuple):
                shape = ct.Shape(shape=(n, c, ct.RangeDim(shapes[0], shapes[1], default=size[0]),
                                        ct.RangeDim(shapes[0], shapes[1], default=size[1])))
            else:
                shape = ct.EnumeratedShapes(shapes=[(n, c, h, w) for h, w in shapes], default=(n, c) + size)
        else:  # torch.export at the example's size: every shape is a constant
            source = torch.export.export(module, (example,)).run_decompositions({})
            shape = tuple(example.shape)
    if image_input:
        inp = ct.ImageType(name="image", shape=shape, scale=1.0 / 255.0, bias=[0.0, 0.0, 0.0],
                           color_layout=ct.colorlayout.RGB)
    else:
        inp = ct.TensorType(name="image", shape=shape)
    names = _output_names(module, example)
    mlmodel = ct.convert(source, inputs=[inp], outputs=[ct.TensorType(name=nm) for nm in names],
                         convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                         compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32)
    mlmodel.short_description = "EfficientFormerV2 (deploy form); input: RGB image, ImageNet normalisation built in"
    mlmodel.save(str(path))
    return mlmodel


def check_coreml(path: str | Path, module: nn.Module | None = None, example: torch.Tensor | None = None,
                 atol: float = 5e-2) -> ExportResult:
    """Validate a saved `.mlpackage`: load its spec, check it is an ML program and count its ops;
    on macOS also compare a prediction with PyTorch (`atol`, float16 tolerance)."""
    require_stack("coreml")
    import coremltools as ct
    path = Path(path)
    start = time.perf_counter()
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise AssertionError(f"{path} is not an ML program (type {spec.WhichOneof('Type')})")
    ops: Counter = Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            ops.update(op.type for op in block.operations)
    if not ops:
        raise AssertionError(f"{path}: the ML program has no operations")
    inputs = [i.name for i in spec.description.input]
    outputs = [o.name for o in spec.description.output]
    checked = (f"package validated (spec {spec.specificationVersion}, inputs {inputs} {_input_sizes(spec)}, "
               f"outputs {outputs}, {sum(ops.values())} ops)")
    result = ExportResult("coreml", path, 0.0, checked, ops=dict(ops))
    if platform.system() != "Darwin":
        result.note = "no CoreML runtime on this OS (predictions need macOS); prediction parity not checked"
    elif module is not None and example is not None:
        from PIL import Image
        mlmodel = ct.models.MLModel(str(path))
        img = (example[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0) / 255
        pred = mlmodel.predict({inputs[0]: Image.fromarray(img)})
        with torch.no_grad():
            want = _as_tuple(module(x))
        result.max_abs_diff = max(float(abs(torch.from_numpy(pred[nm]) - w).max()) for nm, w in zip(outputs, want))
        result.ok = result.max_abs_diff <= atol
    result.seconds = time.perf_counter() - start
    return result


def _input_sizes(spec) -> str:
    """The input sizes a CoreML spec accepts: fixed HxW, enumerated sizes or ranges."""
    t = spec.description.input[0].type
    if t.WhichOneof("Type") == "imageType":
        img = t.imageType
        if img.WhichOneof("SizeFlexibility") == "enumeratedSizes":
            return "sizes " + ", ".join(f"{e.height}x{e.width}" for e in img.enumeratedSizes.sizes)
        if img.WhichOneof("SizeFlexibility") == "imageSizeRange":
            r = img.imageSizeRange
            return (f"height {r.heightRange.lowerBound}..{r.heightRange.upperBound}, "
                    f"width {r.widthRange.lowerBound}..{r.widthRange.upperBound}")
        return f"size {img.height}x{img.width}"
    arr = t.multiArrayType
    if arr.WhichOneof("ShapeFlexibility") == "enumeratedShapes":
        return "shapes " + ", ".join("x".join(map(str, e.shape)) for e in arr.enumeratedShapes.shapes)
    if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
        return "ranges " + " x ".join(f"{d.lowerBound}..{d.upperBound}" for d in arr.shapeRange.sizeRanges)
    return "shape " + "x".join(map(str, arr.shape))


# --------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------
def export_torchscript(module: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace `module` at the example's size and save it (`torch.jit.load` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example)
    traced.save(str(path))
    return path


def check_torchscript(path: str | Path, module: nn.Module, example: torch.Tensor,
                      atol: float = TORCHSCRIPT_ATOL) -> float:
    """Max abs difference of the reloaded TorchScript module against `module` on `example`."""
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got, want = _as_tuple(loaded(example)), _as_tuple(module(example))
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    if not diff <= atol:
        raise AssertionError(f"TorchScript output differs from PyTorch by {diff:.3g} > {atol}")
    return diff


# --------------------------------------------------------------------------------------------
# One call: build, deploy form, export, check
# --------------------------------------------------------------------------------------------
def export_model(name: str, fmt: Format, out: str | Path, checkpoint: str | Path | None = None,
                 features: bool = False, size: tuple[int, int] = (224, 224), normalize: bool = True,
                 precision: Literal["float16", "float32"] = "float16",
                 coreml_shapes: CoreMLShapes | Literal["fixed"] = None, model: nn.Module | None = None,
                 seed: int = 0) -> ExportResult:
    """Export a project model (or any timm model) in deploy form and check the result.

    Args:
        name: project variant (efficientformerv2_s0 ...) or timm model name.
        fmt: onnx, coreml or torchscript. out: output path (.onnx, .mlpackage, .pt).
        checkpoint: weights for a project model (its class count is taken from the file).
        features: export the four feature maps (strides 4/8/16/32) instead of logits; ONNX then
            has dynamic height/width (TorchScript's traced graph also holds for any size), and
            CoreML ranged sizes `COREML_FEATURE_RANGE` unless `coreml_shapes` says otherwise.
        size: example input (height, width). normalize: ImageNet normalisation inside the graph.
        precision: CoreML compute precision. model: an already built model (skips `name` lookup).
        coreml_shapes: CoreML flexible input sizes: a list of (height, width) (enumerated) or a
            (min, max) tuple (ranged); "fixed" for a features package of the size `size` only.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    require_stack(fmt)
    out = Path(out)
    start = time.perf_counter()
    if model is None:
        model = build_model(name, checkpoint, features=features)
    net = deploy_form(model)
    if fmt == "coreml" and features and coreml_shapes is None:
        coreml_shapes = (min(COREML_FEATURE_RANGE[0], *size), max(COREML_FEATURE_RANGE[1], *size))
    elif coreml_shapes == "fixed":
        coreml_shapes = None
    flexible = features if fmt != "coreml" else bool(coreml_shapes)
    if flexible and isinstance(net, EfficientFormerV2):
        net.shape_generic()  # one graph for every input size (symbolic sizes, traced graphs)
    if features:
        net = FeatureTuple(net)
    if normalize:
        net = ImageInput(net)
    net.eval()
    g = torch.Generator().manual_seed(seed)
    example = torch.rand(1, 3, *size, generator=g)
    if not normalize:
        example = (example - 0.45) / 0.225

    if fmt == "onnx":
        export_onnx(net, example, out, dynamic_batch=True, dynamic_hw=features)
        checks = [example, torch.rand(2, 3, *size, generator=g)]
        if features:
            checks.append(torch.rand(1, 3, size[0] + 37, size[1] - 29, generator=g))
        sess = create_session(out)
        diff = max(check_onnx(out, net, x, session=sess) for x in checks)
        shapes = ", ".join("x".join(map(str, x.shape)) for x in checks)
        return ExportResult("onnx", out, time.perf_counter() - start,
                            f"ONNX Runtime vs PyTorch on {shapes} (bound {ONNX_ATOL})", max_abs_diff=diff)
    if fmt == "coreml":
        export_coreml(net, example, out, precision=precision, image_input=normalize, shapes=coreml_shapes)
        result = check_coreml(out, net, example)
        result.seconds = time.perf_counter() - start
        return result
    export_torchscript(net, example, out)
    diff = check_torchscript(out, net, example)
    return ExportResult("torchscript", out, time.perf_counter() - start,
                        "reloaded TorchScript vs eager PyTorch", max_abs_diff=diff)
