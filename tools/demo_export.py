"""Export demo: the toy-trained S0 classifier to ONNX and CoreML, with their checks.

    python tools/demo_export.py [--data data] [--checkpoint artifacts/cls_toy/efficientformerv2_s0.safetensors]
                                [--out artifacts/export]

Uses the classifier `make demo` wrote (a fresh S0 with random weights where there is none),
exports its deploy form to ONNX (checked with ONNX Runtime against PyTorch, on a toy validation
image when DATA/toy_cls exists) and to a CoreML ML program (validated by loading the package;
predictions need macOS). Last line: `demo-export: onnx max diff <value> coreml <ok or reason> in <seconds> s`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from _cli import ArgumentParser, run
from _demo import TOY_CLASSIFIER, add_threads_option, apply_threads


def _toy_images(data: Path, model, size: int, n: int = 2):
    """Up to `n` toy validation images as a (n, 3, size, size) tensor in [0, 1] (the model's
    evaluation transform at `size`, unnormalised: the exported graph normalises), or None."""
    import torch

    from deploy.calibration import val_samples
    from deploy.export import graph_transform
    images = [x for x, _ in val_samples(data / "toy_cls", graph_transform(model, (size, size)), limit=n)]
    return torch.cat(images) if images else None


def run_demo(data: Path, checkpoint: Path, out: Path) -> tuple[float, str]:
    """Export to ONNX and CoreML; returns (ONNX max abs diff, CoreML status)."""
    from deploy.export import ExportStackError, check_onnx, export_model
    from deploy.models import ImageInput, build_model, deploy_form
    name = "efficientformerv2_s0"
    if checkpoint.is_file():
        print(f"demo-export: using the toy-trained classifier {checkpoint}")
        model = build_model(name, checkpoint)
    else:
        print(f"demo-export: {checkpoint} not found (run `make demo` first); exporting a fresh S0")
        model = build_model(name)
    size = (model.img_size, model.img_size)  # the training input size of the checkpoint
    onnx_res = export_model(name, "onnx", out / f"{name}.onnx", model=model, size=size)
    print(onnx_res.summary())
    diff = onnx_res.max_abs_diff
    images = _toy_images(data, model, size[0])
    if images is not None:
        net = ImageInput(deploy_form(model)).eval()
        diff = max(diff, check_onnx(onnx_res.path, net, images))
        print(f"demo-export: ONNX Runtime on {len(images)} toy validation images: max abs diff {diff:.3g}")
    try:
        cm = export_model(name, "coreml", out / f"{name}.mlpackage", model=model, size=size)
    except ExportStackError as e:
        return diff, f"not exported ({e})"
    except AssertionError as e:  # a failed check writes nothing
        return diff, f"check failed ({' '.join(str(e).split())})"
    print(f"coreml ops: {', '.join(f'{k} x{v}' for k, v in sorted(cm.ops.items(), key=lambda kv: -kv[1]))}")
    print(cm.summary())
    return diff, "ok"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="demo-export", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--checkpoint", type=Path, default=TOY_CLASSIFIER)
    parser.add_argument("--out", type=Path, default=Path("artifacts/export"))
    add_threads_option(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    apply_threads(args.threads, workers=0)
    diff, coreml = run_demo(args.data, args.checkpoint, args.out)
    print(f"demo-export: onnx max diff {diff:.2e} coreml {coreml} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "demo-export"))
