"""Convert an official snap-research, timm or Lightning EfficientFormerV2 checkpoint to the
project's format, or a whole official detector or segmentor to an mmengine checkpoint of the
project's configs.

    python tools/convert_checkpoint.py SRC DST [--model NAME] [--img-size N]
    python tools/convert_checkpoint.py mask_rcnn_s2_coco.pth s2_coco.pth --model efficientformerv2_s2

A whole detector or segmentor (the official release's COCO Mask R-CNN and ADE20K Semantic FPN
files, mmdet 2 / mmseg 0.x: keys backbone.patch_embed.*, backbone.network.N.*, a meta dict with
CLASSES) is written as an mmengine checkpoint (DST ending in .pth): its backbone in the project's
keys (with its official dense attention-bias tables, which select the backbone's dense mode), the
neck and heads as they are, CLASSES (and PALETTE) kept as the dataset meta that mmdet's and mmseg's
inferencers read, and a digest of its tensors. tools/mm_test.py and load_from take the official
file as it is too; the converted file loads without conversion and says what it is.

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

import sys
from pathlib import Path

from _cli import ArgumentParser, UsageError, positive_int, run

from backbones import (EfficientFormerV2, create_model, infer_arch, list_models, load_checkpoint, resolve_arch,
                       save_checkpoint)
from backbones.checkpoint import ArchitectureMismatchError, describe_arch, read_state_dict, to_project_keys
from backbones.dense_bias import bias_mode, checkpoint_bias_mode

def training_size(state_dict: dict) -> int | None:
    """The input side the checkpoint's attention-bias tables were made for (None: no such table),
    offset or official dense tables alike (`backbones.dense_bias.checkpoint_bias_mode`)."""
    try:
        found = checkpoint_bias_mode(state_dict)
    except ValueError:
        return None
    return found[1] if found else None


def convert_checkpoint(src: str, dst: Path, model_name: str | None = None, img_size: int | None = None) -> str:
    """Write `src` (a file or hub spec) as project-format safetensors at `dst` (or a whole
    detector or segmentor as an mmengine checkpoint, `convert_dense_model`); returns a one-line report."""
    if not dst.parent.is_dir():
        raise UsageError(f"the folder of DST, {str(dst.parent)!r}, does not exist: create it first")
    raw = read_state_dict(src)
    if is_dense_model(raw):
        if img_size is not None:
            raise UsageError("--img-size applies to backbone checkpoints; a detector or segmentor keeps the "
                             "resolution its backbone was trained at")
        return convert_dense_model(src, dst, model_name)
    if dst.suffix != ".safetensors":
        raise UsageError(f"DST must end in .safetensors (the project's format), got {dst}")
    sd, fmt = to_project_keys(raw)
    arch = infer_arch(sd)
    head = sd.get("head.weight")
    num_classes = head.shape[0] if head is not None else 0
    trained_at = training_size(sd)
    size = img_size or trained_at or 224
    kwargs = dict(num_classes=num_classes, distillation="head_dist.weight" in sd, img_size=size,
                  features_only=not any(k.startswith("norm.") for k in sd))  # a dense backbone has no final norm
    model = create_model(model_name, **kwargs) if model_name else EfficientFormerV2(arch, **kwargs)
    try:
        report = load_checkpoint(model, sd)  # strict: any missing or extra key fails here
    except ArchitectureMismatchError as e:
        fix = f"pass --model {e.checkpoint_name}, or" if e.checkpoint_name in list_models() else "a custom architecture:"
        raise UsageError(f"{src}: the checkpoint is {e.checkpoint_name}, but --model is {model_name}: {fix} "
                         "leave --model out to convert the checkpoint's own architecture") from e
    save_checkpoint(model, dst, metadata={"source_format": fmt, "arch": describe_arch(arch),
                                          "img_size": str(model.img_size), "bias_mode": bias_mode(model)})
    resized = f", bias tables resampled from {trained_at} to {size} px" if report.resampled else ""
    return (f"{src} ({fmt}, {describe_arch(arch)}, {num_classes} classes, img_size {size}{resized}) -> {dst} "
            f"[{report}]")


def is_dense_model(state_dict: dict) -> bool:
    """Whether a state dict is a whole detector or segmentor: a backbone and other parts."""
    return any(k.startswith("backbone.") for k in state_dict) and \
        any(not k.startswith("backbone.") for k in state_dict)


def convert_dense_model(src: str, dst: Path, model_name: str | None = None) -> str:
    """Write the detector or segmentor `src` as an mmengine checkpoint at `dst` (.pth): backbone
    keys in the project's layout (`openmmlab.backbone.to_backbone_keys`), checked by loading them
    strictly into the backbone they describe, other parts as they are, CLASSES/PALETTE of its meta
    as ``meta.dataset_meta``. Returns a one-line report."""
    import torch

    from backbones.checkpoint import DIGEST_KEY, _read_torch, tensor_digest, unwrap_state_dict
    from openmmlab.backbone import to_backbone_keys

    if dst.suffix != ".pth":
        raise UsageError(f"{src} is a whole detector or segmentor: DST must end in .pth (an mmengine checkpoint "
                         f"for tools/mm_test.py and load_from), got {dst}")
    source = _read_torch(Path(src))
    sd = {k: v for k, v in unwrap_state_dict(source, src).items() if not k.endswith("attention_bias_idxs_seg")}
    sd, fmt = to_backbone_keys(sd, "backbone.")
    body = {k[len("backbone.body."):]: v for k, v in sd.items() if k.startswith("backbone.body.")}
    if not body:
        raise UsageError(f"{src}: its backbone is not an EfficientFormerV2 (first keys: {list(sd)[:3]})")
    arch = infer_arch(body)
    mode, size = checkpoint_bias_mode(body) or ("offset", 224)
    backbone = EfficientFormerV2(arch, features_only=True, img_size=size, bias_mode=mode)
    if model_name:
        if describe_arch(resolve_arch(model_name)) != describe_arch(arch):
            raise UsageError(f"{src}: the backbone is {describe_arch(arch)}, but --model is {model_name}: pass --model "
                             f"{describe_arch(arch)}, or leave --model out")
    report = load_checkpoint(backbone, body)  # strict: a missing or extra backbone key fails here
    meta = source.get("meta") if isinstance(source.get("meta"), dict) else {}
    dataset_meta = dict(meta.get("dataset_meta") or {})
    for old, new in (("CLASSES", "classes"), ("PALETTE", "palette")):
        if old in meta and new not in dataset_meta:
            dataset_meta[new] = list(meta[old]) if isinstance(meta[old], tuple) else meta[old]
    sd = {k: v.contiguous() for k, v in sd.items()}
    out = {"meta": {"dataset_meta": dataset_meta, "source": str(src), "source_format": fmt or "project",
                    "backbone": describe_arch(arch), "bias_mode": mode, "img_size": size},
           "state_dict": sd, DIGEST_KEY: tensor_digest(sd)}
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        torch.save(out, partial)
        partial.replace(dst)
    finally:
        partial.unlink(missing_ok=True)
    classes = dataset_meta.get("classes") or []
    return (f"{src} ({fmt or 'project'} detector/segmentor, backbone {describe_arch(arch)}, {mode} attention bias at "
            f"img_size {size}, {len(classes)} classes) -> {dst} [backbone {report}]")


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
