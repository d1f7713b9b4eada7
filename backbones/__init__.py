"""EfficientFormerV2 backbones: the model family, its factories and checkpoint loading.

Depends on torch, timm and huggingface_hub only. The architecture description lives in
`backbones.arch`, the network in `backbones.efficientformer_v2`; the registered names of
`create_model` are the factories of `backbones.arch.RELEASED`.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from .arch import RELEASED, Variant
from .checkpoint import (CheckpointError, LoadReport, infer_arch, is_deploy_state_dict, load_checkpoint,
                         read_checkpoint, read_state_dict, save_checkpoint, to_project_keys)
from .efficientformer_v2 import (MODEL_FACTORIES, SWITCHES, VARIANTS, Arch, EfficientFormerV2, StageArch,
                                 StagePlan, efficientformerv2_l, efficientformerv2_s0, efficientformerv2_s1,
                                 efficientformerv2_s2, feature_grids, load_pretrained, pretrained_cfg_for,
                                 resolve_arch, stage_plans)
from .model_info import ModelInfo, checkpoint_info, model_from_checkpoint, model_metadata

_MODELS: dict[str, Callable[..., EfficientFormerV2]] = MODEL_FACTORIES


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(_MODELS)


def create_model(name: str, pretrained: bool | str = False, checkpoint: str | None = None,
                 **kwargs: Any) -> EfficientFormerV2:
    """Build a registered variant by name, optionally with weights (see `load_checkpoint`).

    Args:
        name: one of `list_models()`, or a model in timm's Hub format, `hf-hub:ORG/REPO` or
            `local-dir:PATH` (the architecture, class count and distillation head its config.json
            records, with its weights when `pretrained` is True, as in timm: `backbones.hub`).
        pretrained: True loads the variant's ImageNet weights from the Hugging Face Hub
            (`model.pretrained_cfg["hf_hub_id"]`, read from huggingface_hub's cache when offline;
            heads dropped when `num_classes` is not 1000); a string is a checkpoint spec (a local
            file or `hf-hub:ORG/REPO`) loaded strictly, whose class count, distillation head,
            training size and class names are taken from the file unless passed
            (`backbones.model_info`).
        checkpoint: a checkpoint spec loaded strictly (the older name of `pretrained=SPEC`).
        **kwargs: passed to `EfficientFormerV2` (num_classes, distillation, drop_path_rate, ...).
    """
    if name.startswith(("hf-hub:", "local-dir:")):  # a model in timm's Hub format: its config.json says which
        if checkpoint is not None or pretrained not in (False, None, True):
            raise ValueError(f"{name} brings its own weights: pass no other checkpoint")
        from .hub import source_model_kwargs
        arch_name, recorded = source_model_kwargs(name)
        if arch_name not in _MODELS:
            raise CheckpointError(f"{name}: config.json names the architecture {arch_name!r}, which is not one of "
                                  f"{', '.join(list_models())}")
        # as timm's create_model: pretrained=True loads the weights, False builds the network only
        return _MODELS[arch_name](pretrained=name if pretrained else False, **{**recorded, **kwargs})
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if checkpoint is not None and pretrained not in (False, None):
        raise ValueError("pass either pretrained or checkpoint, not both")
    spec = checkpoint if checkpoint is not None else pretrained
    info = None
    if isinstance(spec, (str, os.PathLike)) and str(spec):
        from .model_info import checkpoint_kwargs, checkpoint_info
        info = checkpoint_info(spec)
        kwargs.update(checkpoint_kwargs(info, kwargs))
        spec = str(spec)
    model = _MODELS[name](pretrained=spec, **kwargs)
    if info is not None:
        from .model_info import set_class_names
        set_class_names(model, info.class_names)
    return model


__all__ = ["Arch", "StageArch", "StagePlan", "SWITCHES", "stage_plans", "feature_grids", "EfficientFormerV2",
           "VARIANTS", "RELEASED", "Variant", "is_deploy_state_dict", "efficientformerv2_s0",
           "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l", "create_model",
           "list_models", "load_checkpoint", "load_pretrained", "pretrained_cfg_for", "save_checkpoint",
           "read_state_dict", "to_project_keys", "infer_arch", "resolve_arch", "CheckpointError", "LoadReport", "read_checkpoint", "ModelInfo",
           "checkpoint_info", "model_from_checkpoint", "model_metadata"]
