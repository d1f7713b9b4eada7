"""Export of the deploy form to every file format of the runtime registry (`deploy.runtimes`),
each followed by its runtime's check against PyTorch.

- ONNX (`deploy.runtimes.onnxruntime`): dynamo exporter, dynamic batch (and dynamic height/width
  for feature maps), checked with ONNX Runtime (max abs difference, bounded).
- CoreML (`deploy.runtimes.coreml`): ML program (`.mlpackage`, iOS 16), float16 by default, an
  `ImageType` input with the ImageNet normalisation built in; checked by loading the saved package
  and listing its ops, and by prediction parity where a CoreML runtime exists (macOS only).
- TorchScript (legacy, `deploy.runtimes.torchscript`): traced, reloaded and compared.
- ExecuTorch (`deploy.runtimes.executorch`): `.pte` with the XNNPACK delegate at a fixed size, run
  in ExecuTorch's runtime; the operators left outside the delegate are listed.
- OpenVINO (`deploy.runtimes.openvino`): IR (`.xml` + `.bin`), dynamic height/width for feature
  maps, run on its CPU plugin in f32.
- LiteRT (`deploy.runtimes.litert`): `.tflite` converted by litert-torch at a fixed size, run in
  the LiteRT interpreter with XNNPACK.
- pt2 (`deploy.runtimes.pt2`): a `torch.export` ExportedProgram, symbolic batch (and height and
  width for feature maps), reloaded with `torch.export.load`.
- aoti (`deploy.runtimes.aoti`): the same program compiled by AOTInductor into a `.pt2` package,
  loaded with `torch._inductor.aoti_load_package`.
- int8 for ExecuTorch (PT2E, XNNPACK quantizer), LiteRT (PT2E) and OpenVINO (NNCF), calibrated on the images of
  an ImageNet-layout folder (`deploy.calibration`); the top-1 of the float and the int8 model on
  its val split is reported, and the check bounds their top-1 agreement.

Every fp32 check is bounded by 1e-4 (TorchScript 1e-5). Every file is written in a temporary
folder next to the target and moved there once checked. A classifier carries its class names
(those its checkpoint records, `backbones.model_from_checkpoint`; ImageNet-1K's for an unnamed
1000-class model): in the package for CoreML (`ClassifierConfig`), else in a labels file beside
the export (`<out stem>.labels.txt`, one name per line, in class order). Every format checks that
the output path ends in its suffix.

Inputs of the exported classifier and feature models: RGB images in [0, 1] (pixel / 255), NCHW;
the ImageNet mean/std normalisation is part of the graph (`normalize=False` exports a graph that
takes normalised tensors instead).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from backbones import EfficientFormerV2
from backbones.errors import UsageError
from backbones.model_info import class_names

from imagefolder import class_folders, eval_transform

from .calibration import calibration_images, val_samples
from .models import FeatureTuple, ImageInput, build_model, deploy_form, model_data_config
from .runtimes import FORMATS, INT8_FORMATS, RUNTIMES, format_runtime
from .runtimes.base import FP32_ATOL, ExportResult, Runner, as_tuple, check_runtime, other_size
from .runtimes.coreml import COREML_FEATURE_RANGE, CoreMLShapes, check_coreml, export_coreml
from .runtimes.onnxruntime import ONNX_OPSET, check_onnx, export_onnx
from .runtimes.torchscript import TORCHSCRIPT_ATOL, check_torchscript, export_torchscript
from .stacks import ExportStackError, require_stack

__all__ = ["ExportStackError", "ExportResult", "export_model", "export_onnx", "check_onnx",
           "export_coreml", "check_coreml", "export_torchscript", "check_torchscript", "check_runtime",
           "compare_on_images", "ImageComparison", "check_output_path", "staged_output", "require_stack",
           "FORMATS", "INT8_FORMATS", "SUFFIXES", "ONNX_OPSET", "ONNX_ATOL", "EDGE_ATOL", "INT8_MIN_AGREEMENT",
           "CALIBRATION_COUNT", "COREML_FEATURE_RANGE", "LABELS_SUFFIX", "imagenet_class_names", "model_class_names",
           "labels_path", "other_size", "graph_transform"]

SUFFIXES = {r.format: r.suffix for r in RUNTIMES.values() if r.format}
ONNX_ATOL = FP32_ATOL     # float32 parity bound of ONNX Runtime against PyTorch
EDGE_ATOL = FP32_ATOL     # float32 parity bound of ExecuTorch, OpenVINO, pt2 and AOTInductor against PyTorch
INT8_MIN_AGREEMENT = 0.9  # int8 exports: least fraction of images with the float model's top-1 class
CALIBRATION_COUNT = 64    # int8 calibration images
IMAGENET_CLASSES = 1000
LABELS_SUFFIX = ".labels.txt"
Format = Literal[FORMATS]  # one of the registry's export formats


def imagenet_class_names(classes: int) -> list[str] | None:
    """The ImageNet-1K class names (timm's `ImageNetInfo`, e.g. "tench, Tinca tinca") in class
    order for a classifier of 1000 classes; None for any other class count."""
    return class_names(classes) if classes == IMAGENET_CLASSES else None


def model_class_names(model: nn.Module, classes: int) -> list[str] | None:
    """The names of a classifier's `classes` outputs: its checkpoint's (`pretrained_cfg["label_names"]`,
    set by `backbones.model_from_checkpoint`), else ImageNet-1K's for 1000 classes, else None."""
    return class_names(classes, (getattr(model, "pretrained_cfg", None) or {}).get("label_names"))


def labels_path(out: str | Path) -> Path:
    """The labels file beside an export: `model.onnx` -> `model.labels.txt`."""
    out = Path(out)
    return out.with_name(out.stem + LABELS_SUFFIX) if out.suffix else out.with_name(out.name + LABELS_SUFFIX)


# --------------------------------------------------------------------------------------------
# Classifiers on real images: top-1 of PyTorch and of the export
# --------------------------------------------------------------------------------------------
@dataclass
class ImageComparison:
    """A classifier in PyTorch against its export on real images."""

    images: int
    max_abs_diff: float
    agreement: float                 # fraction of images whose top-1 class is the same
    top1_float: float | None = None  # percent, on labelled images
    top1_exported: float | None = None
    cosine: float | None = None      # mean cosine similarity of the two logit vectors over the images


def compare_on_images(runner: Runner, module: nn.Module, samples: Iterable[tuple[torch.Tensor, int | None]]
                      ) -> ImageComparison:
    """Logits of `runner` and of `module` on (image, label or None) pairs: max abs difference,
    top-1 agreement, mean cosine similarity of the logits, and top-1 accuracy of both where the
    labels are given."""
    n = agree = right_float = right_exported = labelled = 0
    diff = cosine = 0.0
    for x, label in samples:
        got = runner(x)[0]
        with torch.no_grad():
            want = as_tuple(module(x))[0]
        diff = max(diff, float((got - want).abs().max()))
        cosine += float(torch.nn.functional.cosine_similarity(got.float().reshape(1, -1),
                                                              want.float().reshape(1, -1))[0])
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
        return ImageComparison(n, diff, agree / n, cosine=cosine / n)
    return ImageComparison(n, diff, agree / n, 100.0 * right_float / labelled, 100.0 * right_exported / labelled,
                           cosine / n)


def _labelled_val(root: Path, transform: Callable, classes: int, limit: int | None, normalise) -> list | None:
    """(image, label) of the val split of `root` when it has one and its class count matches the
    classifier's; None otherwise."""
    if not class_folders(root / "val"):
        return None
    names = class_folders(root / "train") or class_folders(root / "val")
    if len(names) != classes:
        return None
    return [(normalise(x), y) for x, y in val_samples(root, transform, limit=limit)]


def graph_transform(model: nn.Module, size: tuple[int, int]) -> Callable:
    """RGB image -> (3, H, W) in [0, 1]: what an exported graph of `model` at `size` takes (its
    evaluation transform, `deploy.models.model_data_config`; the graph applies the mean/std
    itself, `ImageInput`). Calibration and the top-1 of exports read images with it."""
    return eval_transform(model_data_config(model, size), normalize=False)


# --------------------------------------------------------------------------------------------
# Writing: nothing half-written is left behind
# --------------------------------------------------------------------------------------------
def check_output_path(out: Path, fmt: str) -> None:
    """Fail early, before any export work, when `out` cannot be written for `fmt`."""
    runtime = format_runtime(fmt)
    if runtime.suffix and out.suffix != runtime.suffix:  # e.g. an ONNX file named x.mlpackage
        raise UsageError(f"--format {fmt} writes a {runtime.suffix} file: give --out a path ending in "
                         f"{runtime.suffix}, not {out.name}")
    for folder in (out.parent, *out.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"cannot write {out}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UsageError(f"cannot write {out}: no permission to write in {folder}")
            break
    if out.is_dir() and not runtime.writes_folder:
        raise UsageError(f"cannot write {out}: it is a folder")


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
                raise UsageError(f"cannot write {target}: a folder of that name is in the way")
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
                 min_agreement: float = INT8_MIN_AGREEMENT,
                 progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export a project model (or any timm model) in deploy form and check the result.

    The file is written in a temporary folder next to `out` and moved there once checked: a
    failed export or check leaves nothing behind.

    Args:
        name: project variant (efficientformerv2_s0 ...) or timm model name.
        fmt: one of `FORMATS` (onnx, coreml, torchscript, executorch, openvino, litert, pt2, aoti).
            out: output path (.onnx, .mlpackage, .pt, .pte, .xml with its .bin next to it, .tflite, .pt2).
        checkpoint: weights for a project model (its class count is taken from the file).
        features: export the four feature maps (strides 4/8/16/32) instead of logits; ONNX,
            OpenVINO, pt2 and aoti then have dynamic height/width (TorchScript's traced graph also
            holds for any size; ExecuTorch keeps the size `size`), and CoreML ranged sizes
            `COREML_FEATURE_RANGE` unless `coreml_shapes` says otherwise.
        size: example input (height, width). normalize: the model's mean/std normalisation (its
            `pretrained_cfg`) inside the graph.
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
        progress: called with a short line at each stage (reading, exporting and checking, top-1),
            so that a long export (int8 calibration) says where it is.
    Raises:
        ValueError: bad arguments, an output path that cannot be written, `int8` without
            `calibration` or for another format, a calibration folder without readable images.
        deploy.stacks.ExportStackError: the format's runtime is not installed.
        AssertionError: the check failed (nothing is written).
    """
    runtime = format_runtime(fmt)
    if int8 and not runtime.int8:
        raise UsageError(f"int8 export is for {' and '.join(INT8_FORMATS)}, not {fmt}")
    if int8 and calibration is None:
        raise UsageError("int8 export needs calibration images: pass --calibration DIR, an ImageNet-layout "
                         "folder (DIR/train/<class>/<image>; DIR/val/ also gives the top-1)")
    if calibration is not None and not runtime.int8:
        raise UsageError(f"calibration images are for the {' and '.join(INT8_FORMATS)} formats, not {fmt}")
    out = Path(out)
    check_output_path(out, fmt)  # a wrong suffix or an unwritable place before anything else
    runtime.require(int8=int8)
    start = time.perf_counter()
    say = progress or (lambda _: None)
    if model is None:
        model = build_model(name, checkpoint, features=features)
    # images in [0, 1] prepared as the model is evaluated (its pretrained_cfg) at the export size;
    # the mean/std of the same configuration is applied in the graph, or here without `normalize`
    config = model_data_config(model, size)
    transform = graph_transform(model, size)
    normalise = _identity if normalize else _normaliser(config["mean"], config["std"])
    images = None
    if calibration is not None:
        say(f"reading {calibration_count} calibration images of {calibration}")
        images = [normalise(x) for x in calibration_images(calibration, transform, calibration_count)]
    net = deploy_form(model)
    options = runtime.configure(features, size, precision=precision, shapes=coreml_shapes, image_input=normalize)
    if runtime.any_size(features, options) and isinstance(net, EfficientFormerV2):
        net.shape_generic()  # one graph for every input size (symbolic sizes, traced graphs)
    if features:
        net = FeatureTuple(net)
    if normalize:
        net = ImageInput(net, config["mean"], config["std"])
    net.eval()
    g = torch.Generator().manual_seed(seed)
    example = normalise(torch.rand(1, 3, *size, generator=g))
    labels = None if features else model_class_names(model, _classes(net, example))
    if runtime.embeds_labels and labels is not None:
        options["class_labels"] = labels

    slow = " (int8: calibrating and quantizing takes minutes on a CPU)" if int8 else ""
    say(f"exporting to {fmt} and checking it against PyTorch{slow}")
    with staged_output(out) as path:
        result = runtime.export_checked(net, example, path, features=features, calibration=images if int8 else None,
                                        generator=g, normalise=normalise, **options)
        result.path = out
        if calibration is not None and not features:
            say(f"top-1 of PyTorch and of the {fmt} export on {calibration}")
            _report_top1(result, runtime.load(path), net, Path(calibration), transform, images, eval_limit,
                         normalise, min_agreement)
        if labels is not None and not runtime.embeds_labels:
            labels_path(path).write_text("\n".join(labels) + "\n")
            result.labels = f"{labels_path(out)} ({len(labels)} class names, one per line)"
    result.seconds = time.perf_counter() - start
    return result


def _classes(net: nn.Module, example: torch.Tensor) -> int:
    with torch.no_grad():
        return as_tuple(net(example))[0].shape[-1]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _normaliser(mean: Iterable[float], std: Iterable[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images in [0, 1] -> as the graph without built-in normalisation takes them."""
    mean_t = torch.tensor(tuple(mean)).view(1, -1, 1, 1)
    std_t = torch.tensor(tuple(std)).view(1, -1, 1, 1)
    return lambda x: (x - mean_t) / std_t


def _report_top1(result: ExportResult, runner: Runner, net: nn.Module, root: Path, transform: Callable,
                 images: list[torch.Tensor], eval_limit: int | None, normalise, min_agreement: float) -> None:
    """Top-1 of PyTorch and of the export on `root/val` (when it has the classifier's classes),
    else top-1 agreement on the calibration images; int8 is bounded by the agreement."""
    with torch.no_grad():
        classes = as_tuple(net(images[0]))[0].shape[-1]
    val = _labelled_val(root, transform, classes, eval_limit, normalise)
    samples = val if val else [(x, None) for x in images]
    cmp = compare_on_images(runner, net, samples)
    result.max_abs_diff = max(result.max_abs_diff or 0.0, cmp.max_abs_diff)
    result.top1_float, result.top1_exported, result.agreement = cmp.top1_float, cmp.top1_exported, cmp.agreement
    result.cosine = cmp.cosine
    result.top1_images = cmp.images
    result.top1_split = str(root / "val") if val else f"{cmp.images} calibration images of {root}"
    if val is None and class_folders(root / "val"):
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
