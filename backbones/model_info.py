"""What a checkpoint knows about its model, and the model built from the checkpoint alone.

A checkpoint the project writes (`save_checkpoint` of a model, the classification package's
Lightning checkpoints) carries a description of its model as string metadata (`model_metadata`):
the variant name or architecture, class count, whether it has the distillation head, the
training input side and the class names. `checkpoint_info` reads it back (for any other file it
is read from the tensors: class count from the head, distillation head from its keys, training
size from the attention-bias grid, architecture from the shapes), and `model_from_checkpoint`
builds the model from it:

    from backbones import model_from_checkpoint
    model = model_from_checkpoint("runs/ft/checkpoints/last.ckpt")   # 3 classes, no distillation head
    model.pretrained_cfg["label_names"]                                # ['cat', 'dog', 'fox']

`create_model(name, pretrained=FILE)` takes the class count, distillation head and input size from
the file the same way, unless they are passed. The class names live in timm's place,
`model.pretrained_cfg["label_names"]`; `class_names` gives what a person reads for each output
(the ImageNet-1K names for an unnamed 1000-class model).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import Arch
from .checkpoint import (CheckpointError, describe_arch, infer_arch, load_checkpoint, model_metadata, read_checkpoint,
                         to_project_keys)
from .efficientformer_v2 import EfficientFormerV2

__all__ = ["ModelInfo", "checkpoint_info", "checkpoint_kwargs", "model_from_checkpoint", "model_metadata",
           "class_names", "set_class_names"]

IMAGENET_CLASSES = 1000
# the downsampling attention's bias table covers the stage-3 grid (input size / 16) of training
_TRAIN_GRID_KEY = "stages.3.downsample.attn.pos_bias.attention_biases"


@dataclass
class ModelInfo:
    """A checkpoint's model: None where the file does not tell."""

    arch: Arch | None = None
    num_classes: int | None = None       # 0 or None for a backbone (features) checkpoint
    distillation: bool | None = None
    img_size: int | None = None
    class_names: list[str] | None = None

    @property
    def model_name(self) -> str | None:
        """The variant (e.g. "efficientformerv2_s0") or a description of a custom architecture."""
        return describe_arch(self.arch) if self.arch is not None else None

    def kwargs(self) -> dict[str, Any]:
        """`EfficientFormerV2` keyword arguments the file decides: num_classes, distillation, img_size."""
        out: dict[str, Any] = {}
        if self.num_classes:
            out["num_classes"] = self.num_classes
            if self.distillation is not None:
                out["distillation"] = self.distillation
        if self.img_size:
            out["img_size"] = self.img_size
        return out


def class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str] | None:
    """Names a person can read for a classifier's outputs: `names` when there is one per output
    (unless they are ImageNet's WordNet ids, the folder names of ImageNet itself); for 1000 classes
    otherwise ImageNet-1K's (`timm.data.ImageNetInfo`); else None."""
    if num_classes == IMAGENET_CLASSES:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        if names is None or len(names) != IMAGENET_CLASSES or list(names) == list(info.label_names()):
            return list(info.label_descriptions())
    if names is not None and len(names) == num_classes:
        return list(names)
    return None


def set_class_names(model: nn.Module, names: Sequence[str] | None) -> None:
    """Record the class names on the model (timm's `pretrained_cfg["label_names"]`)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if names is not None and isinstance(cfg, dict):
        model.pretrained_cfg = {**cfg, "label_names": tuple(names)}
        if hasattr(model, "default_cfg"):
            model.default_cfg = model.pretrained_cfg


def _from_metadata(meta: Mapping[str, Any], info: ModelInfo) -> None:
    """Fill `info` from string metadata (`model_metadata`); malformed entries are ignored."""
    try:
        if meta.get("arch"):
            info.arch = Arch.from_dict(json.loads(meta["arch"]))
        if meta.get("num_classes"):
            info.num_classes = int(meta["num_classes"])
        if meta.get("distillation") in ("true", "false"):
            info.distillation = meta["distillation"] == "true"
        if meta.get("img_size"):
            info.img_size = int(meta["img_size"])
        if meta.get("class_names"):
            info.class_names = [str(n) for n in json.loads(meta["class_names"])]
        elif meta.get("classes"):  # older toy classifiers: comma-separated names
            info.class_names = str(meta["classes"]).split(",")
    except (ValueError, TypeError, KeyError):
        pass


def _read(spec: str | Path) -> tuple[ModelInfo, dict[str, torch.Tensor]]:
    raw, extra = read_checkpoint(spec)
    state, _ = to_project_keys(raw)
    info = ModelInfo()
    if "head.weight" in state:
        info.num_classes = int(state["head.weight"].shape[0])
        info.distillation = "head_dist.weight" in state
    if _TRAIN_GRID_KEY in state:  # bias tables are stored at the training grid: size / 16
        info.img_size = 16 * math.isqrt(state[_TRAIN_GRID_KEY].shape[-1])
    try:
        info.arch = infer_arch(state)
    except (CheckpointError, KeyError):
        pass
    meta = extra.get("metadata")
    if isinstance(meta, Mapping):
        _from_metadata(meta, info)
    hparams = extra.get("hyper_parameters")
    if isinstance(hparams, Mapping) and hparams.get("img_size"):  # a Lightning checkpoint of older runs
        info.img_size = info.img_size or int(hparams["img_size"])
    names = extra.get("class_names")
    if info.class_names is None and isinstance(names, (list, tuple)):
        info.class_names = [str(n) for n in names]
    if info.class_names is not None and info.num_classes and len(info.class_names) != info.num_classes:
        info.class_names = None  # names of another head: not this classifier's
    return info, state


def checkpoint_kwargs(info: ModelInfo, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the file decides, less what `kwargs` pass (a features model takes no head settings)."""
    decided = info.kwargs()
    if kwargs.get("features_only"):
        decided = {k: v for k, v in decided.items() if k == "img_size"}
    return {k: v for k, v in decided.items() if k not in kwargs}


def checkpoint_info(spec: str | Path) -> ModelInfo:
    """What the checkpoint `spec` (a local file or `hf-hub:ORG/REPO`) says about its model.

    Raises:
        CheckpointError: the file cannot be read, or holds no EfficientFormerV2 weights.
    """
    return _read(spec)[0]


def model_from_checkpoint(spec: str | Path, **kwargs: Any) -> EfficientFormerV2:
    """The model a checkpoint holds, built from the checkpoint alone and loaded strictly.

    Args:
        spec: a local file (project, Lightning, official or timm layout) or `hf-hub:ORG/REPO`.
        **kwargs: `EfficientFormerV2` arguments; those the file decides (num_classes,
            distillation, img_size) are read from it unless passed (e.g. features_only=True, or
            drop_path_rate for fine-tuning).

    The class names the checkpoint carries are in `model.pretrained_cfg["label_names"]`.
    """
    info, state = _read(spec)
    if info.arch is None:
        raise CheckpointError(f"{spec}: the architecture cannot be read from the checkpoint's weights")
    model = EfficientFormerV2(info.arch, **{**checkpoint_kwargs(info, kwargs), **kwargs})
    load_checkpoint(model, state)
    set_class_names(model, info.class_names)
    return model
