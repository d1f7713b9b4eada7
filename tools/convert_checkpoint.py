"""Convert an official snap-research or timm EfficientFormerV2 checkpoint to the project's format.

    python tools/convert_checkpoint.py SRC DST [--model NAME]

DST is written as safetensors (the project's format). The source is read safely (no arbitrary
unpickling). Without --model the variant is inferred from the weights; with it, a checkpoint of
another variant is refused. The converted weights are loaded into the model strictly and checked.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, run

from backbones import EfficientFormerV2, create_model, infer_arch, list_models, load_checkpoint, save_checkpoint
from backbones.checkpoint import describe_arch, read_state_dict, to_project_keys


def convert_checkpoint(src: Path, dst: Path, model_name: str | None = None) -> str:
    """Write `src` as project-format safetensors at `dst`; returns a one-line report."""
    if dst.suffix != ".safetensors":
        raise UsageError(f"DST must end in .safetensors (the project's format), got {dst}")
    if not dst.parent.is_dir():
        raise UsageError(f"the folder of DST, {str(dst.parent)!r}, does not exist: create it first")
    sd, fmt = to_project_keys(read_state_dict(src))
    arch = infer_arch(sd)
    head = sd.get("head.weight")
    num_classes = head.shape[0] if head is not None else 0
    kwargs = dict(num_classes=num_classes, distillation="head_dist.weight" in sd)
    model = create_model(model_name, **kwargs) if model_name else EfficientFormerV2(arch, **kwargs)
    report = load_checkpoint(model, sd)  # strict: any missing or extra key fails here
    save_checkpoint(model, dst, metadata={"source_format": fmt, "arch": describe_arch(arch)})
    return f"{src} ({fmt}, {describe_arch(arch)}, {num_classes} classes) -> {dst} [{report}]"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="convert_checkpoint", description=__doc__)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--model", choices=list_models(), help="expected variant (checked)")
    args = parser.parse_args(argv)
    print(convert_checkpoint(args.src, args.dst, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "convert_checkpoint"))
