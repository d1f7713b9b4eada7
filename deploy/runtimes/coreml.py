"""CoreML: ML program packages (`.mlpackage`, iOS 16), float16 by default, an `ImageType` input with
the ImageNet normalisation built in; checked by loading the saved package and listing its ops, and
by prediction parity where a CoreML runtime exists (macOS only).

A classifier with class names (its checkpoint's, or ImageNet-1K's for an unnamed 1000-class model)
is converted as a CoreML classifier (`ClassifierConfig`), so that an app shows names: its outputs
are `classLabel` (the top class's name) and `classLabel_probs` (name -> softmax probability).
"""
from __future__ import annotations

import platform
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from backbones.errors import UsageError

from ..stacks import require_stack
from .base import ExportResult, Runtime, as_tuple, other_size
from .onnxruntime import output_names

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["export_coreml", "check_coreml", "class_labels", "COREML_FEATURE_RANGE", "CoreML", "RUNTIMES"]

COREML_ATOL = 5e-2   # float16 tolerance of a CoreML prediction (macOS only)


CoreMLShapes = list[tuple[int, int]] | tuple[int, int] | None
_FLEXIBLE_HINT = ("the traced graph does not hold at {hw[0]}x{hw[1]} ({why}): export one size (shapes=None), or, "
                  "for EfficientFormerV2, call shape_generic() on the deploy form first")
COREML_FEATURE_RANGE = (64, 2048)   # default ranged input sides of a --features CoreML package


def _coreml_check_sizes(shapes: CoreMLShapes, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Input sizes at which a flexible-shape trace is compared with the eager model: every
    enumerated size, or for a range its lower end, the example size and a non-square size."""
    if isinstance(shapes, tuple):
        lo, hi = shapes
        odd = tuple(min(hi, max(lo, side)) for side in other_size(size))
        return list(dict.fromkeys([(lo, lo), tuple(size), odd]))
    return list(dict.fromkeys(tuple(s) for s in shapes))


def _with_softmax(module: nn.Module) -> nn.Module:
    """`module` followed by a softmax over the classes (a CoreML classifier's probabilities)."""
    from torch import nn
    return nn.Sequential(module, nn.Softmax(dim=-1)).eval()


def export_coreml(module: nn.Module, example: torch.Tensor, path: str | Path,
                  precision: Literal["float16", "float32"] = "float16", image_input: bool = True,
                  shapes: CoreMLShapes = None, class_labels: Sequence[str] | None = None):
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
        class_labels: one name per class of a classifier: the package is a CoreML classifier
            (`ClassifierConfig`) with outputs `classLabel` and `classLabel_probs` (softmax).
    Returns the `coremltools` model.
    """
    require_stack("coreml")
    import coremltools as ct
    import torch
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, not {precision!r}")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UsageError(f"a CoreML ML program is saved as a .mlpackage, got {path}")
    n, c = example.shape[:2]
    size = tuple(example.shape[-2:])
    if isinstance(shapes, tuple):
        lo, hi = shapes
        if not (33 <= lo <= min(size) and max(size) <= hi):
            raise UsageError(f"CoreML size range {lo}..{hi} must contain the example size {size} and start at 33 "
                             "or more")
    elif shapes and size not in {tuple(s) for s in shapes}:
        raise UsageError(f"the enumerated CoreML sizes {list(shapes)} must include the example size {size} "
                         "(the package's default)")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    names = output_names(module, example)
    if class_labels is not None:
        if names != ["logits"]:
            raise ValueError("class labels are for a classifier (one logits output)")
        module, names = _with_softmax(module), ["probabilities"]
    with torch.no_grad():
        if shapes:  # a traced graph, checked to hold at the flexible sizes
            source = torch.jit.trace(module, example, check_trace=False)
            for hw in _coreml_check_sizes(shapes, size):
                x = torch.rand(n, c, *hw, generator=torch.Generator().manual_seed(0))
                try:
                    traced = as_tuple(source(x))
                except RuntimeError as e:  # shapes fixed in the trace no longer fit
                    raise AssertionError(_FLEXIBLE_HINT.format(hw=hw, why=str(e).splitlines()[-1])) from e
                diff = max(float((a - b).abs().max()) for a, b in zip(traced, as_tuple(module(x))))
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
    classifier = None
    if class_labels is not None:
        classifier = ct.ClassifierConfig(list(class_labels), predicted_feature_name="classLabel")
    mlmodel = ct.convert(source, inputs=[inp], outputs=[ct.TensorType(name=nm) for nm in names],
                         classifier_config=classifier,
                         convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                         compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32)
    mlmodel.short_description = "EfficientFormerV2 (deploy form); input: RGB image, ImageNet normalisation built in"
    mlmodel.save(str(path))
    return mlmodel


def check_coreml(path: str | Path, module: nn.Module | None = None, example: torch.Tensor | None = None,
                 atol: float = COREML_ATOL) -> ExportResult:
    """Validate a saved `.mlpackage`: load its spec, check it is an ML program and count its ops;
    on macOS also compare a prediction with PyTorch (`atol`, float16 tolerance; a classifier's
    probabilities against the softmax of PyTorch's logits)."""
    require_stack("coreml")
    import coremltools as ct
    import torch
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
    labels = class_labels(spec)
    checked = (f"package validated (spec {spec.specificationVersion}, inputs {inputs} {_input_sizes(spec)}, "
               f"outputs {outputs}, {sum(ops.values())} ops{f', {len(labels)} class labels' if labels else ''})")
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
            want = as_tuple(module(x))
        if labels:  # a classifier: name -> probability
            probs = spec.description.predictedProbabilitiesName
            pred = {probs: [pred[probs][name] for name in labels]}
            outputs, want = [probs], (want[0].softmax(-1)[0],)
        result.max_abs_diff = max(float(abs(torch.as_tensor(pred[nm]) - w).max()) for nm, w in zip(outputs, want))
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


def class_labels(spec) -> list[str]:
    """The class names of a CoreML classifier's ML program (the `classes` of its `classify`
    operation), in class order; empty for other models."""
    if spec.WhichOneof("Type") != "mlProgram" or not spec.description.predictedFeatureName:
        return []
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                if op.type == "classify" and "classes" in op.inputs:
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


class CoreML(Runtime):
    """CoreML ML programs (`.mlpackage`); no runtime on Linux: the package is validated there."""

    name = "coreml"
    order = 31
    what = "CoreML"
    format = "coreml"
    suffix = ".mlpackage"
    stack = "coreml"
    embeds_labels = True
    writes_folder = True

    def configure(self, features, size, precision="float16", shapes=None, image_input=True, **options):
        if features and shapes is None:
            shapes = (min(COREML_FEATURE_RANGE[0], *size), max(COREML_FEATURE_RANGE[1], *size))
        elif shapes == "fixed":
            shapes = None
        return {"precision": precision, "shapes": shapes, "image_input": image_input}

    def any_size(self, features, options):
        return bool(options.get("shapes"))

    def export_checked(self, module, example, path, *, features=False, calibration=None, generator=None,
                       normalise=None, class_labels=None, **options):
        export_coreml(module, example, path, class_labels=class_labels, **options)
        result = check_coreml(path, module, example)
        if not result.ok:  # nothing is written for a failed check
            raise AssertionError(f"CoreML differs from PyTorch by {result.max_abs_diff:.3g}")
        if class_labels is not None:
            result.labels = f"{len(class_labels)} class names in the package (ClassifierConfig)"
        return result


RUNTIMES = (CoreML(),)
