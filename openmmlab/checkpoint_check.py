"""A dense checkpoint checked against the model of a run before the run starts.

mmengine loads ``load_from`` and ``resume`` checkpoints with ``strict=False`` and only logs the
keys that do not fit: a detector evaluated with half of its weights random. `tools/mm_test.py`,
`tools/mm_train.py --resume` and ``load_from`` therefore read the file first:

- `adapt_config_to_checkpoint` (before the model is built): a checkpoint whose backbone holds the
  official dense attention-bias tables sets ``bias_mode='dense'`` and their ``img_size`` on the
  config's EfficientFormerV2 backbone (and one with the project's offset tables ``'offset'``), so
  that the model is built for it (also under a distributed launcher, where a built model can no
  longer change its parameters);
- `check_checkpoint_fits` (after the model is built, before anything runs): the file's keys, with
  the backbone's converted as the backbone's own loading converts them
  (`openmmlab.backbone.to_backbone_keys`), against the model's: keys the file lacks, keys the
  model has no place for, and shapes that differ are one `CheckpointMismatch` (a `backbones.CheckpointError`)
  that names their groups (``backbone``, ``roi_head.bbox_head``, ...) and what to do.

Depends on mmengine, torch and `backbones` only.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import torch
from mmengine.logging import print_log
from torch import nn

from backbones.checkpoint import (DIGEST_KEY, CheckpointError, _check_zip, _shape_signature, _verify_digest,
                                  check_finite, describe_arch, infer_arch, to_project_keys)
from backbones.dense_bias import checkpoint_bias_mode

from .backbone import EfficientFormerV2, to_backbone_keys

__all__ = ["CheckpointMismatch", "checkpoint_state_dict", "adapt_config_to_checkpoint", "check_checkpoint_fits"]

_BACKBONE_TYPES = ("EfficientFormerV2", EfficientFormerV2)
# the layers whose first dimension is the class count: mmdet's box head (classes + background),
# its mask head, mmseg's decode and auxiliary heads
_CLASS_LAYERS = {"fc_cls.weight": 1, "conv_logits.weight": 0, "conv_seg.weight": 0}


class CheckpointMismatch(CheckpointError):
    """A checkpoint that does not fit the model of a run; the message says what to do."""


def checkpoint_state_dict(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an mmengine (or mmdet 2 / mmseg 0.x) checkpoint read by
    `openmmlab.runner.read_checkpoint`, with mmengine's own prefix handling (``module.`` of a
    distributed wrapper removed); a zip archive that fails its CRC checks or NaN/Inf values are a
    `CheckpointMismatch` (a damaged file)."""
    path = Path(path)
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, Mapping):
        raise CheckpointMismatch(f"checkpoint {str(path)!r} holds no state dict")
    try:
        _verify_digest(sd, checkpoint.get(DIGEST_KEY), str(path))  # files tools/convert_checkpoint.py wrote
    except CheckpointError as exc:
        raise CheckpointMismatch(str(exc)) from exc
    sd = {re.sub(r"^module\.", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    try:
        if path.suffix != ".safetensors" and path.is_file():
            with path.open("rb") as f:
                if f.read(4) == b"PK\x03\x04":
                    _check_zip(path)
        check_finite(sd, str(path))
    except CheckpointError as exc:
        raise CheckpointMismatch(str(exc)) from exc
    return sd  # an empty one is refused by the fit check, after the config's own checks


def _backbone_cfgs(model_cfg: Any) -> list[Any]:
    """The config dicts of EfficientFormerV2 backbones in a model config."""
    found = []
    if isinstance(model_cfg, Mapping):
        if model_cfg.get("type") in _BACKBONE_TYPES:
            found.append(model_cfg)
        for v in model_cfg.values():
            found += _backbone_cfgs(v)
    elif isinstance(model_cfg, (list, tuple)):
        for v in model_cfg:
            found += _backbone_cfgs(v)
    return found


def _body_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The project-layout keys of the backbone under `prefix` (converted as the backbone does)."""
    converted, _ = to_backbone_keys(sd, prefix)
    start = prefix + "body."
    return {k[len(start):]: v for k, v in converted.items() if k.startswith(start)}


def adapt_config_to_checkpoint(cfg: Any, state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Set ``bias_mode`` and ``img_size`` of the config's EfficientFormerV2 backbone (at
    ``model.backbone``) to those of the checkpoint's backbone tables, where they differ (logged)."""
    model_cfg = cfg.get("model") if hasattr(cfg, "get") else None
    backbone = model_cfg.get("backbone") if isinstance(model_cfg, Mapping) else None
    if not isinstance(backbone, Mapping) or backbone.get("type") not in _BACKBONE_TYPES:
        return
    try:
        found = checkpoint_bias_mode(_body_keys(state_dict, "backbone."))
    except ValueError:
        return  # tables of an unknown place: the fit check names them
    if found is None:
        return
    mode, size = found
    if backbone.get("bias_mode", "offset") == mode and (mode == "offset" or backbone.get("img_size") == size):
        return
    backbone["bias_mode"] = mode
    backbone["img_size"] = size
    print_log(f"{path}: its backbone has {mode} attention-bias tables: model.backbone.bias_mode='{mode}', "
              f"img_size={size}", logger="current", level=logging.INFO)


def _group(key: str) -> str:
    """The part of the model a key belongs to: its top-level module, and for a container of heads
    (``roi_head``) the head."""
    parts = key.split(".")
    if len(parts) > 2 and parts[1].endswith(("_head", "_roi_extractor")):
        return ".".join(parts[:2])
    return parts[0]


def _groups(keys: list[str]) -> str:
    counts = Counter(_group(k) for k in keys)
    return ", ".join(f"{g} ({n} key{'s' if n > 1 else ''})" for g, n in counts.items())


def _class_count(key: str, shape: tuple[int, ...]) -> int | None:
    for suffix, extra in _CLASS_LAYERS.items():
        if key.endswith(suffix) and shape:
            return int(shape[0]) - extra
    return None


def _checkpoint_classes(checkpoint: Mapping[str, Any]) -> list[str]:
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    classes = (meta.get("dataset_meta") or {}).get("classes") if isinstance(meta.get("dataset_meta"), Mapping) \
        else None
    classes = classes or meta.get("CLASSES")
    return [str(c) for c in classes] if isinstance(classes, (list, tuple)) else []


def _backbone(model: nn.Module) -> tuple[str, EfficientFormerV2] | None:
    for name, m in model.named_modules():
        if isinstance(m, EfficientFormerV2):
            return (name + "." if name else ""), m
    return None


def _variant_config(config: str | None, name: str) -> str:
    """The config of another variant beside `config` (the variant token replaced), if it exists."""
    if not config or not name.startswith("efficientformerv2_"):
        return ""
    other = re.sub(r"efficientformerv2-(s0|s1|s2|l)", "efficientformerv2-" + name.split("_", 1)[1], Path(config).name)
    path = Path(config).with_name(other)
    return str(path) if other != Path(config).name and path.is_file() else ""


def check_checkpoint_fits(model: nn.Module, checkpoint: Mapping[str, Any], path: str | Path,
                          config: str | None = None) -> None:
    """Raise `CheckpointMismatch` unless the checkpoint holds every key of `model` (after the
    backbone's own conversion) with its shape, and no key the model has no place for. The one-line
    message names the groups of missing, unexpected and reshaped keys, what the file looks like
    (another variant, a classification or backbone-only file, another task's model, another
    class count) and what to do."""
    model = getattr(model, "module", model)  # a distributed wrapper
    sd = checkpoint_state_dict(checkpoint, path)
    found = _backbone(model)
    prefix = found[0] if found else ""
    if found:
        sd, _ = to_backbone_keys(sd, prefix)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    reshaped = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    where = f"checkpoint {str(path)!r}"
    config_name = f" of {config}" if config else ""
    parts = []
    if missing:
        parts.append(f"the model's {_groups(missing)} missing from the file")
    if unexpected:
        parts.append(f"unexpected {_groups(unexpected)}")
    if reshaped:
        shown = "; ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in reshaped[:2])
        parts.append(f"other shapes in {_groups(reshaped)} ({shown})")
    facts = ", ".join(parts)
    init = ("to start a new training from its backbone only, set model.backbone.init_cfg=dict(type='Pretrained', "
            f"checkpoint='{path}') (--cfg-options model.backbone.init_cfg.checkpoint={path}) instead")
    why, todo = "", f"use the config it was trained with; {init}"

    model_groups = {k.split(".")[0] for k in own}
    file_groups = {k.split(".")[0] for k in sd}
    if found and not (file_groups & model_groups):
        try:
            to_project_keys(sd)
            why = "it is a classification (backbone-only) checkpoint"
            todo = (f"pass it as model.backbone.init_cfg=dict(type='Pretrained', checkpoint='{path}') "
                    f"(--cfg-options model.backbone.init_cfg.checkpoint={path}) to start training from it")
        except CheckpointError:
            why = "it holds none of the model's parts"
    elif found and any(k.startswith(prefix) for k in missing + unexpected + reshaped):
        body = _body_keys(sd, prefix)
        try:
            arch = infer_arch(body)
        except (CheckpointError, KeyError):
            arch = None
        if arch is not None and _shape_signature(arch) != _shape_signature(found[1].body.arch):
            name, model_name = describe_arch(arch), describe_arch(found[1].body.arch)
            other = _variant_config(config, name)
            why = f"its backbone is {name} but the config's is {model_name}"
            if name.startswith("efficientformerv2_"):
                todo = f"use the config of {name}" + (f" ({other})" if other else "") + \
                    f" or set model.backbone.arch='{name.split('_', 1)[1].split(' ')[0]}'"
            else:
                todo = "use the config it was trained with (model.backbone.arch set to its architecture)"
    if not why:
        extra_tasks = sorted({_group(k) for k in unexpected} - {k.split(".")[0] for k in own})
        class_layers = [k for k in reshaped if _class_count(k, tuple(own[k].shape)) is not None]
        in_heads = all(_group(k) not in (prefix.rstrip("."), "neck") for k in reshaped)
        if extra_tasks and missing and not any(k.startswith(prefix) for k in missing):
            why = (f"it is another model's checkpoint ({', '.join(extra_tasks)} "
                   f"{'is' if len(extra_tasks) == 1 else 'are'} not part of this config's model)")
        elif class_layers and in_heads and not missing and not unexpected:
            k = class_layers[0]
            theirs, ours = _class_count(k, tuple(sd[k].shape)), _class_count(k, tuple(own[k].shape))
            names = _checkpoint_classes(checkpoint)
            shown = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
            why = f"its heads are for {theirs} classes{shown}, the config's for {ours}"
            todo = ("test or resume with the config it was trained with (a run dumps it in its work dir), or pass "
                    "--classes-from-data when it was trained on this data's classes; " + init)
        elif missing and not unexpected and not reshaped:
            why = "the file is incomplete (damaged, or saved from a part of the model)"
            todo = "fetch or write it again, or " + todo
    raise CheckpointMismatch(f"{where} does not fit the model{config_name}: {facts}" + (f"; {why}" if why else "")
                             + f": {todo}")
