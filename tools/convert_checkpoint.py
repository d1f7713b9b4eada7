"""Convert an official snap-research, timm or Lightning EfficientFormerV2 checkpoint to the
project's format.

    python tools/convert_checkpoint.py SRC DST [--model NAME] [--img-size N]

SRC is a local file or a hub spec (`hf-hub:ORG/REPO`, e.g.
hf-hub:timm/efficientformerv2_s0.snap_dist_in1k, read from huggingface_hub's cache when offline).
DST is written as safetensors (the project's format, with a digest of its tensors that loading
verifies). The source is read safely (no arbitrary unpickling) and checked (digest, zip CRCs,
finite values). Without --model the variant is inferred from the weights; with it, a checkpoint
of another variant is refused. The training input size is read from the attention-bias tables
(e.g. 64 for a checkpoint trained at 64 px); --img-size N builds the model for another size, the
tables resampled to its grid. The converted weights are loaded into the model strictly and checked.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, positive_int, run

from backbones import EfficientFormerV2, create_model, infer_arch, list_models, load_checkpoint, save_checkpoint
from backbones.checkpoint import ArchitectureMismatchError, describe_arch, read_state_dict, to_project_keys

# the downsampling attention's bias table covers the stage-4 input grid: the input size / 16
_TRAIN_GRID_KEY = "stages.3.downsample.attn.pos_bias.attention_biases"


def training_size(state_dict: dict) -> int | None:
    """The input side the checkpoint's attention-bias tables were made for (None: no such table)."""
    table = state_dict.get(_TRAIN_GRID_KEY)
    if table is None or table.dim() != 2:
        return None
    side = math.isqrt(table.shape[-1])
    return 16 * side if side * side == table.shape[-1] else None


def convert_checkpoint(src: str, dst: Path, model_name: str | None = None, img_size: int | None = None) -> str:
    """Write `src` (a file or hub spec) as project-format safetensors at `dst`; returns a one-line report."""
    if dst.suffix != ".safetensors":
        raise UsageError(f"DST must end in .safetensors (the project's format), got {dst}")
    if not dst.parent.is_dir():
        raise UsageError(f"the folder of DST, {str(dst.parent)!r}, does not exist: create it first")
    sd, fmt = to_project_keys(read_state_dict(src))
    arch = infer_arch(sd)
    head = sd.get("head.weight")
    num_classes = head.shape[0] if head is not None else 0
    trained_at = training_size(sd)
    size = img_size or trained_at or 224
    kwargs = dict(num_classes=num_classes, distillation="head_dist.weight" in sd, img_size=size)
    model = create_model(model_name, **kwargs) if model_name else EfficientFormerV2(arch, **kwargs)
    try:
        report = load_checkpoint(model, sd)  # strict: any missing or extra key fails here
    except ArchitectureMismatchError as e:
        fix = f"pass --model {e.checkpoint_name}, or" if e.checkpoint_name in list_models() else "a custom architecture:"
        raise UsageError(f"{src}: the checkpoint is {e.checkpoint_name}, but --model is {model_name}: {fix} "
                         "leave --model out to convert the checkpoint's own architecture") from e
    save_checkpoint(model, dst, metadata={"source_format": fmt, "arch": describe_arch(arch), "img_size": str(size)})
    resized = f", bias tables resampled from {trained_at} to {size} px" if report.resampled else ""
    return (f"{src} ({fmt}, {describe_arch(arch)}, {num_classes} classes, img_size {size}{resized}) -> {dst} "
            f"[{report}]")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="convert_checkpoint", description=__doc__)
    parser.add_argument("src", help="checkpoint file, or hf-hub:ORG/REPO[@REVISION]")
    parser.add_argument("dst", type=Path)
    parser.add_argument("--model", choices=list_models(), help="expected variant (checked)")
    parser.add_argument("--img-size", type=positive_int, default=None,
                        help="training input side of the converted model (default: the checkpoint's own, read "
                             "from its attention-bias tables; another size resamples them)")
    args = parser.parse_args(argv)
    print(convert_checkpoint(args.src, args.dst, args.model, args.img_size))
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "convert_checkpoint"))
