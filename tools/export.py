"""Export a model in deploy form to ONNX, CoreML or TorchScript, and check the result.

    python tools/export.py --model efficientformerv2_s0 [--checkpoint C] --format onnx|coreml|torchscript
                           --out PATH [--features] [--size H [W]] [--precision float16|float32]
                           [--no-normalize] [--coreml-shapes HxW ... | --coreml-range MIN MAX | --coreml-fixed]

Inputs of the exported model: RGB images scaled to [0, 1] (pixel / 255), NCHW, ImageNet mean/std
normalisation inside the graph (CoreML: an ImageType taking 0..255 pixels); `--no-normalize`
exports a graph taking already normalised tensors. ONNX has a dynamic batch axis, and dynamic
height/width with `--features` (the four feature maps, strides 4/8/16/32; TorchScript's traced
graph also holds for any size). CoreML packages are ML programs for iOS 16, float16 unless
`--precision float32`; classifiers at the input size `--size`, feature packages (`--features`)
with ranged input sizes 64..2048 by default (`--coreml-range MIN MAX`, enumerated sizes
`--coreml-shapes 512x512 800x1344`, or `--coreml-fixed` for `--size` only; the same options make
a classifier flexible). Every export is checked: ONNX Runtime against PyTorch (max
abs difference printed, bounded by 1e-4), CoreML by validating the saved package and listing its
ops and input sizes (prediction parity only on macOS; a flexible package's traced graph is first
compared with PyTorch at several sizes), TorchScript by reloading it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export(model: str, fmt: str, out: Path, checkpoint: Path | None = None, features: bool = False,
           size: tuple[int, int] = (224, 224), precision: str = "float16", normalize: bool = True,
           coreml_shapes: list[tuple[int, int]] | tuple[int, int] | str | None = None):
    """Export and check; returns a `deploy.export.ExportResult`."""
    from deploy.export import export_model
    return export_model(model, fmt, out, checkpoint=checkpoint, features=features, size=size,
                        normalize=normalize, precision=precision, coreml_shapes=coreml_shapes)


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = text.lower().split("x")
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 320x480, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="efficientformerv2_s0/s1/s2/l, or a timm model name")
    parser.add_argument("--checkpoint", type=Path, help="weights of a project model (any supported layout)")
    parser.add_argument("--format", required=True, choices=["onnx", "coreml", "torchscript"])
    parser.add_argument("--out", required=True, type=Path, help=".onnx, .mlpackage or .pt")
    parser.add_argument("--features", action="store_true", help="export the four feature maps")
    parser.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="example input size: H (square) or H W (default: the first --coreml-shapes, else 224)")
    parser.add_argument("--precision", choices=["float16", "float32"], default="float16", help="CoreML precision")
    parser.add_argument("--no-normalize", action="store_true", help="no ImageNet normalisation in the graph")
    flexible = parser.add_mutually_exclusive_group()
    flexible.add_argument("--coreml-shapes", type=_hw, nargs="+", metavar="HxW", help="CoreML: enumerated input sizes")
    flexible.add_argument("--coreml-range", type=int, nargs=2, metavar=("MIN", "MAX"),
                          help="CoreML: input height and width each in [MIN, MAX] (default for --features: 64 2048)")
    flexible.add_argument("--coreml-fixed", action="store_true", help="CoreML --features: only the --size input size")
    args = parser.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        parser.error("--size takes H or H W")
    if args.size is not None:
        size = (args.size[0], args.size[-1])
    else:
        size = args.coreml_shapes[0] if args.coreml_shapes else (224, 224)
    from backbones import CheckpointError
    from deploy.export import ExportStackError
    flexible = "fixed" if args.coreml_fixed else tuple(args.coreml_range) if args.coreml_range else args.coreml_shapes
    try:
        result = export(args.model, args.format, args.out, args.checkpoint, args.features, size,
                        args.precision, not args.no_normalize, flexible)
    except (ValueError, CheckpointError, ExportStackError, FileNotFoundError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    except AssertionError as e:
        print(f"export: check FAILED: {e}", file=sys.stderr)
        return 1
    if result.ops:
        top = ", ".join(f"{k} x{v}" for k, v in sorted(result.ops.items(), key=lambda kv: -kv[1]))
        print(f"coreml ops: {top}")
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
