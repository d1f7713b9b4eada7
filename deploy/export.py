"""Export of the deploy form to ONNX, CoreML, TorchScript, ExecuTorch and OpenVINO, each
followed by a check.

- ONNX: dynamo exporter, dynamic batch (and dynamic height/width for feature maps), checked with
  ONNX Runtime against PyTorch (max abs difference, bounded).
- CoreML: ML program (`.mlpackage`, iOS 16), float16 by default, an `ImageType` input with the
  ImageNet normalisation built in; checked by loading the saved package and listing its ops, and
  by prediction parity where a CoreML runtime exists (macOS only).
- TorchScript: traced, reloaded and compared with the eager model.
- ExecuTorch (`deploy.executorch`): `.pte` with the XNNPACK delegate at a fixed size, run in
  ExecuTorch's runtime against PyTorch; the operators left outside the delegate are listed.
- OpenVINO (`deploy.openvino`): IR (`.xml` + `.bin`), dynamic height/width for feature maps,
  run on its CPU plugin in f32 against PyTorch.
- int8 for ExecuTorch (PT2E, XNNPACK quantizer) and OpenVINO (NNCF), calibrated on the images of
  an ImageNet-layout folder (`deploy.calibration`); the top-1 of the float and the int8 model on
  its val split is reported, and the check bounds their top-1 agreement.

Every file is written in a temporary folder next to the target and moved there once checked.

Inputs of the exported classifier and feature models: RGB images in [0, 1] (pixel / 255), NCHW;
the ImageNet mean/std normalisation is part of the graph (`normalize=False` exports a graph that
takes normalised tensors instead).
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from backbones import EfficientFormerV2

from .calibration import calibration_images, class_names, val_samples
from .models import IMAGENET_MEAN, IMAGENET_STD, FeatureTuple, ImageInput, build_model, deploy_form
from .ort import create_session
from .stacks import ExportStackError, require_stack

__all__ = ["ExportStackError", "ExportResult", "export_model", "export_onnx", "check_onnx",
           "export_coreml", "check_coreml", "export_torchscript", "check_torchscript", "check_runtime",
           "compare_on_images", "ImageComparison", "check_output_path", "staged_output", "require_stack",
           "FORMATS", "INT8_FORMATS", "SUFFIXES", "ONNX_OPSET", "ONNX_ATOL", "EDGE_ATOL", "INT8_MIN_AGREEMENT",
           "CALIBRATION_COUNT", "COREML_FEATURE_RANGE"]

FORMATS = ("onnx", "coreml", "torchscript", "executorch", "openvino")
INT8_FORMATS = ("executorch", "openvino")
SUFFIXES = {"onnx": ".onnx", "coreml": ".mlpackage", "torchscript": ".pt", "executorch": ".pte", "openvino": ".xml"}
ONNX_OPSET = 20      # Gelu is a single ONNX op from opset 20 on
ONNX_ATOL = 1e-4     # float32 parity bound of ONNX Runtime against PyTorch
TORCHSCRIPT_ATOL = 1e-5
EDGE_ATOL = 1e-4     # float32 parity bound of ExecuTorch and OpenVINO against PyTorch
INT8_MIN_AGREEMENT = 0.9  # int8 exports: least fraction of images with the float model's top-1 class
CALIBRATION_COUNT = 64    # int8 calibration images
Format = Literal["onnx", "coreml", "torchscript", "executorch", "openvino"]

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
    int8: bool = False
    undelegated: dict[str, int] | None = None  # ExecuTorch: operators outside the XNNPACK delegate
    top1_float: float | None = None    # percent, PyTorch float model on top1_split
    top1_exported: float | None = None  # percent, the export in its runtime on top1_split
    agreement: float | None = None     # fraction of images where both give the same top-1 class
    top1_images: int = 0
    top1_split: str = ""

    def summary(self) -> str:
        diff = f", max abs diff {self.max_abs_diff:.3g}" if self.max_abs_diff is not None else ""
        note = f" ({self.note})" if self.note else ""
        return (f"{self.format}{' int8' if self.int8 else ''}: {self.path} in {self.seconds:.1f} s; "
                f"{self.checked}{diff}: {'ok' if self.ok else 'FAILED'}{note}")

    def details(self) -> list[str]:
        """Lines about undelegated operators and top-1, where they apply."""
        lines = []
        if self.undelegated is not None:
            ops = ", ".join(f"{k} x{v}" for k, v in self.undelegated.items()) or "none"
            lines.append(f"{self.format}: operators outside the XNNPACK delegate: {ops}")
        if self.agreement is not None:
            kind = "int8" if self.int8 else "exported"
            top1 = (f"top-1 float {self.top1_float:.2f}% vs {kind} {self.top1_exported:.2f}%; "
                    if self.top1_float is not None else "")
            lines.append(f"{self.format}: on {self.top1_split} ({self.top1_images} images): {top1}"
                         f"top-1 agreement {self.agreement:.1%}")
        return lines


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


def other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second, non-square input size for checking a graph with symbolic height and width:
    taller by 37 and narrower by 29 pixels (at least 33), so neither side is a multiple of 32."""
    return size[0] + 37, max(size[1] - 29, 33)


def _coreml_check_sizes(shapes: CoreMLShapes, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Input sizes at which a flexible-shape trace is compared with the eager model: every
    enumerated size, or for a range its lower end, the example size and a non-square size."""
    if isinstance(shapes, tuple):
        lo, hi = shapes
        odd = tuple(min(hi, max(lo, side)) for side in other_size(size))
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
    if len(got) != len(want):
        raise AssertionError(f"TorchScript module has {len(got)} outputs, PyTorch {len(want)}")
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    if not diff <= atol:
        raise AssertionError(f"TorchScript output differs from PyTorch by {diff:.3g} > {atol}")
    return diff


# --------------------------------------------------------------------------------------------
# ExecuTorch and OpenVINO: runtime parity, top-1 on an image folder
# --------------------------------------------------------------------------------------------
Runner = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def check_runtime(runner: Runner, module: nn.Module, inputs: list[torch.Tensor], what: str,
                  atol: float | None = EDGE_ATOL) -> float:
    """Max abs difference between `runner` (an exported model in its runtime) and `module` over
    all outputs of every input; raises AssertionError on another output count or shape, or
    when the difference exceeds `atol` (None: no bound)."""
    diff = 0.0
    for x in inputs:
        got = runner(x)
        with torch.no_grad():
            want = _as_tuple(module(x))
        if len(got) != len(want):
            raise AssertionError(f"{what} has {len(got)} outputs, PyTorch {len(want)}")
        for g, w in zip(got, want):
            if tuple(g.shape) != tuple(w.shape):
                raise AssertionError(f"{what} output shape {tuple(g.shape)} != PyTorch {tuple(w.shape)} "
                                     f"on input {tuple(x.shape)}")
            diff = max(diff, float((g - w).abs().max()))
    if atol is not None and not diff <= atol:
        raise AssertionError(f"{what} differs from PyTorch by {diff:.3g} > {atol}")
    return diff


@dataclass
class ImageComparison:
    """A classifier in PyTorch against its export on real images."""

    images: int
    max_abs_diff: float
    agreement: float                 # fraction of images whose top-1 class is the same
    top1_float: float | None = None  # percent, on labelled images
    top1_exported: float | None = None


def compare_on_images(runner: Runner, module: nn.Module, samples: Iterable[tuple[torch.Tensor, int | None]]
                      ) -> ImageComparison:
    """Logits of `runner` and of `module` on (image, label or None) pairs: max abs difference,
    top-1 agreement, and top-1 accuracy of both where the labels are given."""
    n = agree = right_float = right_exported = labelled = 0
    diff = 0.0
    for x, label in samples:
        got = runner(x)[0]
        with torch.no_grad():
            want = _as_tuple(module(x))[0]
        diff = max(diff, float((got - want).abs().max()))
        pred_exported, pred_float = int(got.argmax(-1)[0]), int(want.argmax(-1)[0])
        n += 1
        agree += pred_exported == pred_float
        if label is not None:
            labelled += 1
            right_float += pred_float == label
            right_exported += pred_exported == label
    if not n:
        raise ValueError("no images to compare on")
    if not labelled:
        return ImageComparison(n, diff, agree / n)
    return ImageComparison(n, diff, agree / n, 100.0 * right_float / labelled, 100.0 * right_exported / labelled)


def _labelled_val(root: Path, size: tuple[int, int], classes: int, limit: int | None, normalise) -> list | None:
    """(image, label) of the val split of `root` when it has one and its class count matches the
    classifier's; None otherwise."""
    if not class_names(root / "val"):
        return None
    names = class_names(root / "train") or class_names(root / "val")
    if len(names) != classes:
        return None
    return [(normalise(x), y) for x, y in val_samples(root, size, limit=limit)]


# --------------------------------------------------------------------------------------------
# Writing: nothing half-written is left behind
# --------------------------------------------------------------------------------------------
def check_output_path(out: Path, fmt: str) -> None:
    """Fail early, before any export work, when `out` cannot be written for `fmt`."""
    suffix = SUFFIXES.get(fmt)
    if fmt in ("executorch", "openvino", "coreml") and out.suffix != suffix:
        raise ValueError(f"{fmt} output must end in {suffix}, got {out}")
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"cannot write {out}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ValueError(f"cannot write {out}: no permission to write in {folder}")
            break
    if out.is_dir() and fmt != "coreml":
        raise ValueError(f"cannot write {out}: it is a folder")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A path of the same name in a temporary folder next to `out`: what the caller writes there
    (with any companion files, e.g. OpenVINO's `.bin`) is moved to `out`'s folder when the block
    ends without an error, and removed otherwise (with the folders this created)."""
    missing = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp / out.name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in missing:  # innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    try:
        staged = sorted(tmp.iterdir(), key=lambda p: p.name == out.name)  # the main file last
        for path in staged:  # check every target before moving anything
            target = out.parent / path.name
            if target != out and target.is_dir():
                raise ValueError(f"cannot write {target}: a folder of that name is in the way")
        for path in staged:
            target = out.parent / path.name
            if target == out and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # an earlier export of the same folder-format (CoreML) output
            elif path.is_dir() and (target.is_file() or target.is_symlink()):
                target.unlink()
            os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# One call: build, deploy form, export, check
# --------------------------------------------------------------------------------------------
def export_model(name: str, fmt: Format, out: str | Path, checkpoint: str | Path | None = None,
                 features: bool = False, size: tuple[int, int] = (224, 224), normalize: bool = True,
                 precision: Literal["float16", "float32"] = "float16",
                 coreml_shapes: CoreMLShapes | Literal["fixed"] = None, model: nn.Module | None = None,
                 seed: int = 0, int8: bool = False, calibration: str | Path | None = None,
                 calibration_count: int = CALIBRATION_COUNT, eval_limit: int | None = None,
                 min_agreement: float = INT8_MIN_AGREEMENT) -> ExportResult:
    """Export a project model (or any timm model) in deploy form and check the result.

    The file is written in a temporary folder next to `out` and moved there once checked: a
    failed export or check leaves nothing behind.

    Args:
        name: project variant (efficientformerv2_s0 ...) or timm model name.
        fmt: onnx, coreml, torchscript, executorch or openvino. out: output path (.onnx,
            .mlpackage, .pt, .pte, .xml with its .bin next to it).
        checkpoint: weights for a project model (its class count is taken from the file).
        features: export the four feature maps (strides 4/8/16/32) instead of logits; ONNX and
            OpenVINO then have dynamic height/width (TorchScript's traced graph also holds for any
            size; ExecuTorch keeps the size `size`), and CoreML ranged sizes `COREML_FEATURE_RANGE`
            unless `coreml_shapes` says otherwise.
        size: example input (height, width). normalize: ImageNet normalisation inside the graph.
        precision: CoreML compute precision. model: an already built model (skips `name` lookup).
        coreml_shapes: CoreML flexible input sizes: a list of (height, width) (enumerated) or a
            (min, max) tuple (ranged); "fixed" for a features package of the size `size` only.
        int8: quantize (executorch: XNNPACK quantizer through PT2E; openvino: NNCF), calibrated
            on images of `calibration`; the check then bounds the agreement of top-1 classes
            (classifiers) instead of the difference, which is still measured.
        calibration: ImageNet-layout folder: `train/` gives the calibration images, `val/` (when
            present, and the classifier has its class count) the top-1 of the PyTorch model and
            of the export.
        calibration_count: calibration images used. eval_limit: most val images for the top-1.
        min_agreement: int8 classifiers: least fraction of the compared images on which the int8
            and the float model give the same top-1 class (a model with random weights has
            near-tied logits: pass 0 to report its figures without a bound).
    Raises:
        ValueError: bad arguments, an output path that cannot be written, `int8` without
            `calibration` or for another format, a calibration folder without readable images.
        deploy.stacks.ExportStackError: the format's runtime is not installed.
        AssertionError: the check failed (nothing is written).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"int8 export is for {' and '.join(INT8_FORMATS)}, not {fmt}")
    if int8 and calibration is None:
        raise ValueError("int8 export needs calibration images: pass --calibration DIR, an ImageNet-layout "
                         "folder (DIR/train/<class>/<image>; DIR/val/ also gives the top-1)")
    if calibration is not None and fmt not in INT8_FORMATS:
        raise ValueError(f"calibration images are for the executorch and openvino formats, not {fmt}")
    require_stack("nncf" if fmt == "openvino" and int8 else fmt)
    out = Path(out)
    check_output_path(out, fmt)
    start = time.perf_counter()
    normalise = _identity if normalize else _imagenet_normalise
    images = None
    if calibration is not None:
        images = [normalise(x) for x in calibration_images(calibration, size, calibration_count)]
    if model is None:
        model = build_model(name, checkpoint, features=features)
    net = deploy_form(model)
    if fmt == "coreml" and features and coreml_shapes is None:
        coreml_shapes = (min(COREML_FEATURE_RANGE[0], *size), max(COREML_FEATURE_RANGE[1], *size))
    elif coreml_shapes == "fixed":
        coreml_shapes = None
    flexible = {"coreml": bool(coreml_shapes), "executorch": False}.get(fmt, features)
    if flexible and isinstance(net, EfficientFormerV2):
        net.shape_generic()  # one graph for every input size (symbolic sizes, traced graphs)
    if features:
        net = FeatureTuple(net)
    if normalize:
        net = ImageInput(net)
    net.eval()
    g = torch.Generator().manual_seed(seed)
    example = normalise(torch.rand(1, 3, *size, generator=g))

    with staged_output(out) as path:
        if fmt == "onnx":
            export_onnx(net, example, path, dynamic_batch=True, dynamic_hw=features)
            checks = [example, normalise(torch.rand(2, 3, *size, generator=g))]
            if features:
                checks.append(normalise(torch.rand(1, 3, *other_size(size), generator=g)))
            sess = create_session(path)
            diff = max(check_onnx(path, net, x, session=sess) for x in checks)
            result = ExportResult("onnx", out, 0.0, f"ONNX Runtime vs PyTorch on {_shapes(checks)} (bound {ONNX_ATOL})",
                                  max_abs_diff=diff)
        elif fmt == "coreml":
            export_coreml(net, example, path, precision=precision, image_input=normalize, shapes=coreml_shapes)
            result = check_coreml(path, net, example)
            if not result.ok:  # nothing is written for a failed check
                raise AssertionError(f"CoreML differs from PyTorch by {result.max_abs_diff:.3g}")
            result.path = out
        elif fmt == "torchscript":
            export_torchscript(net, example, path)
            diff = check_torchscript(path, net, example)
            result = ExportResult("torchscript", out, 0.0, "reloaded TorchScript vs eager PyTorch", max_abs_diff=diff)
        else:
            result = _export_edge(fmt, net, example, path, out, features, images if int8 else None, g, normalise)
            if calibration is not None and not features:
                _report_top1(result, _runner(fmt, path), net, Path(calibration), size, images, eval_limit, normalise,
                             min_agreement)
    result.seconds = time.perf_counter() - start
    return result


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as the graph without built-in normalisation takes them."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    return (x - mean) / std


def _shapes(inputs: list[torch.Tensor]) -> str:
    return ", ".join("x".join(map(str, x.shape)) for x in inputs)


def _runner(fmt: str, path: Path) -> Runner:
    if fmt == "executorch":
        from .executorch import ExecuTorchProgram
        return ExecuTorchProgram(path)
    from .openvino import compile_openvino
    return compile_openvino(path, precision="f32")


def _export_edge(fmt: str, net: nn.Module, example: torch.Tensor, path: Path, out: Path, features: bool,
                 images: list[torch.Tensor] | None, g: torch.Generator, normalise) -> ExportResult:
    """Export to ExecuTorch or OpenVINO and compare the runtime with PyTorch on random inputs:
    fp32 within `EDGE_ATOL`; int8 difference measured, not bounded."""
    int8 = images is not None
    checks = [example, normalise(torch.rand(*example.shape, generator=g))]
    if fmt == "executorch":
        from .executorch import export_executorch
        exported = export_executorch(net, example, path, calibration=images)
        what = "ExecuTorch (XNNPACK)"
        undelegated = exported.undelegated
    else:
        from .openvino import export_openvino
        export_openvino(net, example, path, dynamic_hw=features, calibration=images)
        what = "OpenVINO CPU (f32)"
        undelegated = None
        if features:  # symbolic height and width: another, non-square size
            checks.append(normalise(torch.rand(1, 3, *other_size(tuple(example.shape[-2:])), generator=g)))
    diff = check_runtime(_runner(fmt, path), net, checks, what, atol=None if int8 else EDGE_ATOL)
    bound = "int8: difference not bounded" if int8 else f"bound {EDGE_ATOL}"
    return ExportResult(fmt, out, 0.0, f"{what} vs PyTorch on {_shapes(checks)} ({bound})", max_abs_diff=diff,
                        int8=int8, undelegated=undelegated)


def _report_top1(result: ExportResult, runner: Runner, net: nn.Module, root: Path, size: tuple[int, int],
                 images: list[torch.Tensor], eval_limit: int | None, normalise, min_agreement: float) -> None:
    """Top-1 of PyTorch and of the export on `root/val` (when it has the classifier's classes),
    else top-1 agreement on the calibration images; int8 is bounded by the agreement."""
    with torch.no_grad():
        classes = _as_tuple(net(images[0]))[0].shape[-1]
    val = _labelled_val(root, size, classes, eval_limit, normalise)
    samples = val if val else [(x, None) for x in images]
    cmp = compare_on_images(runner, net, samples)
    result.max_abs_diff = max(result.max_abs_diff or 0.0, cmp.max_abs_diff)
    result.top1_float, result.top1_exported, result.agreement = cmp.top1_float, cmp.top1_exported, cmp.agreement
    result.top1_images = cmp.images
    result.top1_split = str(root / "val") if val else f"{cmp.images} calibration images of {root}"
    if val is None and class_names(root / "val"):
        result.note = f"no top-1: the classifier has {classes} classes, {root / 'val'} another count"
    if result.int8:
        result.checked += f"; top-1 agreement with PyTorch float on {cmp.images} images (bound {min_agreement:.0%})"
        if not cmp.agreement >= min_agreement:
            raise AssertionError(f"int8 {result.format} agrees with the float model on the top-1 class of "
                                 f"{cmp.agreement:.1%} of {result.top1_split} < {min_agreement:.0%} "
                                 f"(top-1 float {cmp.top1_float}, int8 {cmp.top1_exported}); calibrate on more "
                                 "or more typical images")
    elif not cmp.max_abs_diff <= EDGE_ATOL:
        raise AssertionError(f"{result.format} differs from PyTorch by {cmp.max_abs_diff:.3g} > {EDGE_ATOL} "
                             f"on the images of {result.top1_split}")
