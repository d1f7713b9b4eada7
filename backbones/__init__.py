"""EfficientFormerV2 backbones: the model family, its factories and checkpoint loading.

Depends on torch and timm only.
"""
from __future__ import annotations

from typing import Any, Callable

from .checkpoint import (CheckpointError, LoadReport, infer_arch, is_deploy_state_dict, load_checkpoint,
                         read_state_dict, save_checkpoint, to_project_keys)
from .efficientformer_v2 import (SWITCHES, VARIANTS, Arch, EfficientFormerV2, StageArch, StagePlan,
                                 efficientformerv2_l, efficientformerv2_s0, efficientformerv2_s1,
                                 efficientformerv2_s2, feature_grids, resolve_arch, stage_plans)

_MODELS: dict[str, Callable[..., EfficientFormerV2]] = {
    "efficientformerv2_s0": efficientformerv2_s0,
    "efficientformerv2_s1": efficientformerv2_s1,
    "efficientformerv2_s2": efficientformerv2_s2,
    "efficientformerv2_l": efficientformerv2_l,
}


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(_MODELS)


def create_model(name: str, checkpoint: str | None = None, **kwargs: Any) -> EfficientFormerV2:
    """Build a registered variant by name, optionally loading weights (see `load_checkpoint`).

    Args:
        name: one of `list_models()`.
        checkpoint: optional weights file; loaded strictly.
        **kwargs: passed to `EfficientFormerV2` (num_classes, distillation, drop_path_rate, ...).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _MODELS[name](**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


__all__ = ["Arch", "StageArch", "StagePlan", "SWITCHES", "stage_plans", "feature_grids", "EfficientFormerV2",
           "VARIANTS", "is_deploy_state_dict", "efficientformerv2_s0",
           "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l", "create_model",
           "list_models", "load_checkpoint", "save_checkpoint", "read_state_dict", "to_project_keys",
           "infer_arch", "resolve_arch", "CheckpointError", "LoadReport"]
