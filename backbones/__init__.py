"""EfficientFormerV2 backbones: the model family, its factories and checkpoint loading.

Depends on torch, timm, huggingface_hub and safetensors only. The architecture description lives
in `backbones.arch`, the network in `backbones.efficientformer_v2`, checkpoint reading in
`backbones.checkpoint`, the factories and `create_model`'s registry in `backbones.builder`, and
the project's errors in `backbones.errors`.

The names below are imported on first use, so that `backbones.errors` (imported by every
package and the command-line tools) does not load torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "arch": ("Arch", "StageArch", "StagePlan", "SWITCHES", "VARIANTS", "RELEASED", "Variant", "feature_grids",
             "resolve_arch", "stage_plans"),
    "builder": ("MODEL_FACTORIES", "create_model", "list_models", "load_pretrained", "efficientformerv2_s0",
                "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l"),
    "checkpoint": ("LoadReport", "infer_arch", "is_deploy_state_dict", "load_checkpoint", "model_metadata",
                   "read_checkpoint", "read_state_dict", "save_checkpoint", "to_project_keys"),
    "efficientformer_v2": ("EfficientFormerV2", "pretrained_cfg_for"),
    "errors": ("CheckpointError", "EfficientFormerV2Error"),
    "model_info": ("ModelInfo", "checkpoint_info", "model_from_checkpoint"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from .arch import (RELEASED, SWITCHES, VARIANTS, Arch, StageArch, StagePlan, Variant, feature_grids,
                       resolve_arch, stage_plans)
    from .builder import (MODEL_FACTORIES, create_model, efficientformerv2_l, efficientformerv2_s0,
                          efficientformerv2_s1, efficientformerv2_s2, list_models, load_pretrained)
    from .checkpoint import (LoadReport, infer_arch, is_deploy_state_dict, load_checkpoint, model_metadata,
                             read_checkpoint, read_state_dict, save_checkpoint, to_project_keys)
    from .efficientformer_v2 import EfficientFormerV2, pretrained_cfg_for
    from .errors import CheckpointError, EfficientFormerV2Error
    from .model_info import ModelInfo, checkpoint_info, model_from_checkpoint


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
