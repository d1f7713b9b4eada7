"""Export a model in deploy form to ONNX, CoreML, TorchScript, ExecuTorch, OpenVINO, LiteRT, a
torch.export program (pt2) or an AOTInductor package (aoti), and check it; or share a fine-tuned
model as a folder in timm's own Hub format (hub).

    python tools/export.py --model efficientformerv2_s0 [--checkpoint C]
                           --format onnx|coreml|torchscript|executorch|openvino|litert|pt2|aoti --out PATH
                           [--features] [--size H [W]] [--int8 --calibration DIR] [--precision float16|float32]
                           [--no-normalize] [--coreml-shapes HxW ... | --coreml-range MIN MAX | --coreml-fixed]
                           [--json OUT] [--verbose] [--threads N]
    python tools/export.py --model efficientformerv2_s0 --checkpoint RUN.ckpt --format hub --out DIR
                           [--push ORG/REPO]

The formats are the runtime registry's (`deploy.runtimes`), and `hub`.

- hub (`deploy.hub_export`): a folder that plain `timm.create_model("local-dir:DIR", pretrained=True)`
  loads (after `--push ORG/REPO`: "hf-hub:ORG/REPO"), with the fine-tuned head: config.json
  (architecture, num_classes, label_names, pretrained_cfg with the run's evaluation transform),
  model.safetensors and a README.md model card (fine-tuned from, classes, the run's validation
  top-1, this command). The class count, names and transform come from the checkpoint. Written by
  timm's own `save_for_hf` and checked by loading it with timm (same logits within 1e-4).
  `--push` uploads the folder with huggingface_hub; without network it says so in one line
  (exit status 2) and the folder stays.

Inputs of the exported model: RGB images scaled to [0, 1] (pixel / 255), NCHW, ImageNet mean/std
normalisation inside the graph (CoreML: an ImageType taking 0..255 pixels); `--no-normalize`
exports a graph taking already normalised tensors. `--features` exports the four feature maps
(strides 4/8/16/32) instead of logits.

- ONNX: dynamic batch, and dynamic height/width with `--features`; ONNX Runtime against PyTorch.
- CoreML: ML program for iOS 16, float16 unless `--precision float32`; classifiers at `--size`,
  feature packages with ranged input sizes 64..2048 by default (`--coreml-range MIN MAX`,
  enumerated sizes `--coreml-shapes 512x512 800x1344`, or `--coreml-fixed` for `--size` only).
  Checked by validating the saved package (prediction parity only on macOS).
- TorchScript (legacy; use pt2 or aoti): traced (the graph also holds for other sizes), reloaded
  and compared.
- ExecuTorch (`.pte`): XNNPACK delegate, batch 1 at `--size` (also with `--features`); run in
  ExecuTorch's runtime; every operator left outside the delegate is listed (and warned about).
- LiteRT (`.tflite`, Android): converted by litert-torch, batch 1 at `--size` (also with
  `--features`); run in the LiteRT interpreter with XNNPACK. A model with an operator LiteRT
  cannot convert is refused, the operator named.
- OpenVINO (`.xml` + `.bin`): fixed size, or dynamic batch/height/width with `--features`
  (checked at `--size` and at a non-square other size); run on the CPU plugin in f32.
- pt2 (`.pt2`): a `torch.export` ExportedProgram (`torch.export.save`), dynamic batch, and dynamic
  height/width with `--features`; loaded back with `torch.export.load` and compared.
- aoti (`.pt2`): the same program compiled by AOTInductor (`aoti_compile_and_package`, needs a C++
  compiler, about a minute for S0); loaded with `aoti_load_package` and compared.

A classifier carries its class names: those its checkpoint records (a fine-tuned run's classes,
whatever their count), else ImageNet-1K's for 1000 classes: inside a CoreML package (a CoreML
classifier, `ClassifierConfig`: outputs `classLabel` and `classLabel_probs`), beside every other file as
`<name>.labels.txt` (one name per line, in class order). A model without names gets none.
--out must end in the format's suffix. Third-party messages (progress bars, version warnings,
native logs) are kept out of the output; `--verbose` shows them. Each stage of the export is
printed as it begins (an int8 export calibrates and quantizes for minutes on a CPU).

Every export is compared with PyTorch, max abs difference printed: ONNX Runtime, ExecuTorch,
OpenVINO, LiteRT, pt2 and aoti fp32 within 1e-4, reloaded TorchScript within 1e-5, CoreML float16 within 5e-2 (its
predictions run on macOS only; elsewhere the package is validated without them).
`--int8 --calibration DIR` (executorch, litert: PT2E quantizers; openvino: NNCF) calibrates
on images of an ImageNet-layout folder (DIR/train/<class>/<image>); a classifier's top-1 of the
float and the int8 model is reported on DIR/val when the folder has one with the classifier's
classes, and the check bounds the share of images where both agree on the top-1 class. Files are
written next to PATH in a temporary folder and moved into place once checked: bad input or a
failed check leaves nothing behind.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, check_writable, positive_int, run

from deploy.runtimes import FORMATS, INT8_FORMATS  # the registry's names: imports no torch

HUB = "hub"               # deploy.hub_export.HUB_FORMAT, as a literal: --help needs no torch

CALIBRATION_IMAGES = 64   # deploy.export.CALIBRATION_COUNT, as a literal: --help needs no torch
MIN_AGREEMENT = 0.9       # deploy.export.INT8_MIN_AGREEMENT
_INT8 = " or ".join(INT8_FORMATS)


def export(model: str, fmt: str, out: Path, checkpoint: Path | None = None, features: bool = False,
           size: tuple[int, int] = (224, 224), precision: str = "float16", normalize: bool = True,
           coreml_shapes: list[tuple[int, int]] | tuple[int, int] | str | None = None, int8: bool = False,
           calibration: Path | None = None, calibration_count: int = CALIBRATION_IMAGES, eval_limit: int | None = None,
           min_agreement: float = MIN_AGREEMENT, verbose: bool = False):
    """Export and check; returns a `deploy.export.ExportResult`. Third-party messages are
    swallowed unless `verbose`; the export's stages are printed as they begin (`export: ...`)."""
    from deploy.quiet import quiet
    try:  # the terminal, which quiet() takes from the exporters (their file descriptor 1 goes elsewhere)
        console = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    except (OSError, ValueError, AttributeError):  # stdout is no file (an embedding, a test): its object
        console = None
    stream = console or sys.stdout

    def progress(line: str) -> None:
        print(f"export: {line}", file=stream, flush=True)

    try:
        with quiet(verbose):
            from deploy.export import export_model
            return export_model(model, fmt, out, checkpoint=checkpoint, features=features, size=size,
                                normalize=normalize, precision=precision, coreml_shapes=coreml_shapes, int8=int8,
                                calibration=calibration, calibration_count=calibration_count,
                                eval_limit=eval_limit, min_agreement=min_agreement, progress=progress)
    finally:
        if console is not None:
            console.close()


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 320x480, got {text!r}") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _check_checkpoint(checkpoint: str | None) -> None:
    if checkpoint is None or checkpoint.startswith(("hf-hub:", "local-dir:")):  # read (and checked) when exporting
        return
    if not Path(checkpoint).is_file():
        raise UsageError(f"checkpoint {checkpoint} does not exist (or is not a file): pass the path of "
                         "a .ckpt/.pth/.pt/.safetensors file, or leave --checkpoint out for random weights")


def _hub(parser: ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> int:
    """--format hub: the folder, its check with timm, and the upload with --push."""
    if args.checkpoint is None:
        parser.error(f"--format {HUB} needs --checkpoint: the fine-tuned weights (a run's .ckpt) to share")
    others = [name for name, on in (("--features", args.features), ("--int8", args.int8),
                                    ("--calibration", args.calibration is not None), ("--json", args.json is not None),
                                    ("--size", args.size is not None)) if on]
    if others:
        parser.error(f"{', '.join(others)} do not apply to --format {HUB}")
    if args.push is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", args.push):
        parser.error(f"--push takes a repository id ORG/REPO, got {args.push!r}")
    _check_checkpoint(args.checkpoint)
    from deploy.quiet import quiet
    with quiet(args.verbose):
        from deploy.hub_export import command_line, export_hub
        command = command_line(["python", "tools/export.py", *(sys.argv[1:] if argv is None else argv)])
        try:
            result = export_hub(args.model, args.checkpoint, args.out, command=command, repo_id=args.push)
        except AssertionError as e:
            print(f"export: check FAILED (nothing written): {' '.join(str(e).split())}", file=sys.stderr)
            return 1
    print(result.summary())
    print(f"hub: plain timm loads it with timm.create_model(\"local-dir:{args.out}\", pretrained=True)")
    if args.push is not None:
        from deploy.hub_export import push_folder
        url = push_folder(args.out, args.push)
        print(f"hub: pushed to {url}; timm.create_model(\"hf-hub:{args.push}\", pretrained=True) loads it")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="export", description=__doc__)
    parser.add_argument("--model", required=True, help="efficientformerv2_s0/s1/s2/l, or a timm model name")
    parser.add_argument("--checkpoint", help="weights of a project model (any supported layout): a file, "
                                             "hf-hub:ORG/REPO or local-dir:PATH")
    parser.add_argument("--format", required=True, choices=(*FORMATS, HUB))
    parser.add_argument("--out", required=True, type=Path,
                        help=".onnx, .mlpackage, .pt, .pte, .xml, .tflite or .pt2; a new folder for hub")
    parser.add_argument("--push", metavar="ORG/REPO",
                        help="hub: also upload the folder to this Hugging Face Hub repository")
    parser.add_argument("--features", action="store_true", help="export the four feature maps")
    parser.add_argument("--size", type=positive_int, nargs="+", metavar="N",
                        help="example input size: H (square) or H W (default: the first --coreml-shapes, else 224)")
    parser.add_argument("--int8", action="store_true", help=f"{_INT8}: int8, calibrated on --calibration")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="ImageNet-layout folder: DIR/train calibrates --int8, DIR/val gives the top-1")
    parser.add_argument("--calibration-images", type=positive_int, default=CALIBRATION_IMAGES, metavar="N",
                        help=f"calibration images drawn from DIR/train (default {CALIBRATION_IMAGES})")
    parser.add_argument("--eval-images", type=positive_int, metavar="N", help="at most N images of DIR/val for the top-1")
    parser.add_argument("--min-agreement", type=_fraction, default=MIN_AGREEMENT, metavar="F",
                        help="--int8 classifier: least share of images where int8 and float agree on the top-1 "
                             f"(default {MIN_AGREEMENT}; 0 reports without a bound, e.g. for random weights)")
    parser.add_argument("--precision", choices=["float16", "float32"], default="float16", help="CoreML precision")
    parser.add_argument("--no-normalize", action="store_true", help="no ImageNet normalisation in the graph")
    flexible = parser.add_mutually_exclusive_group()
    flexible.add_argument("--coreml-shapes", type=_hw, nargs="+", metavar="HxW", help="CoreML: enumerated input sizes")
    flexible.add_argument("--coreml-range", type=int, nargs=2, metavar=("MIN", "MAX"),
                          help="CoreML: input height and width each in [MIN, MAX] (default for --features: 64 2048)")
    flexible.add_argument("--coreml-fixed", action="store_true", help="CoreML --features: only the --size input size")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="also write the check (top-1, agreement, mean cosine of the logits, max abs diff) "
                             "with its command, date and CPU as a record for the records page")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the exporters' and runtimes' own messages (progress, warnings, logs)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads of the export and its check (default: the usable cores, "
                             "or EFV2_THREADS / OMP_NUM_THREADS when set)")
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        parser.error("--size takes H or H W")
    if args.int8 and args.format not in INT8_FORMATS:
        parser.error(f"--int8 is for --format {_INT8}, not {args.format}")
    if args.int8 and args.calibration is None:
        parser.error("--int8 needs --calibration DIR, an ImageNet-layout folder of images (DIR/train/<class>/*)")
    if args.calibration is not None and args.format not in INT8_FORMATS:
        parser.error(f"--calibration is for --format {_INT8}, not {args.format}")
    if args.format == HUB:
        return _hub(parser, args, argv)
    if args.push is not None:
        parser.error(f"--push is for --format {HUB}")
    _check_checkpoint(args.checkpoint)
    if args.json is not None:
        check_writable(args.json, "--json")
    if args.size is not None:
        size = (args.size[0], args.size[-1])
    else:
        size = args.coreml_shapes[0] if args.coreml_shapes else (224, 224)
    flexible = "fixed" if args.coreml_fixed else tuple(args.coreml_range) if args.coreml_range else args.coreml_shapes
    from backbones.threads import set_cpu_threads
    set_cpu_threads(0, args.threads)  # no loader workers: the calibration images are read in this process
    try:
        result = export(args.model, args.format, args.out, args.checkpoint, args.features, size,
                        args.precision, not args.no_normalize, flexible, args.int8, args.calibration,
                        args.calibration_images, args.eval_images, args.min_agreement, args.verbose)
    except AssertionError as e:
        print(f"export: check FAILED (nothing written): {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    if result.ops:
        top = ", ".join(f"{k} x{v}" for k, v in sorted(result.ops.items(), key=lambda kv: -kv[1]))
        print(f"coreml ops: {top}")
    for line in result.details():
        print(line)
    print(result.summary())
    if args.json is not None:
        from deploy.benchmark import write_json
        from deploy.records import provenance
        record = {"model": args.model, "checkpoint": Path(args.checkpoint).as_posix() if args.checkpoint else None,
                  "resolution": size[0] if size[0] == size[1] else f"{size[0]}x{size[1]}", **result.record(),
                  **provenance(["tools/export.py", *(sys.argv[1:] if argv is None else map(str, argv))])}
        print(f"json: {write_json([record], args.json)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(run(main, "export"))
