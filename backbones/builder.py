"""Building models by name, with weights: the factories, the registry and `load_pretrained`.

The role of timm's `_builder`/`_registry`: one factory per released variant
(`backbones.arch.RELEASED`), named after it (`efficientformerv2_s0`, ...), the registry
`create_model` reads, and the weight loading the factories do. This module imports the network
(`backbones.efficientformer_v2`) and the loader (`backbones.checkpoint`); neither imports it.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from .arch import RELEASED, Variant
from .checkpoint import load_checkpoint
from .efficientformer_v2 import EfficientFormerV2
from .errors import CheckpointError, UsageError

__all__ = ["MODEL_FACTORIES", "create_model", "list_models", "load_pretrained",
           *(v.model_name for v in RELEASED)]


def load_pretrained(model: EfficientFormerV2, pretrained: bool | str) -> None:
    """Load the weights `pretrained` names into `model`: True the variant's hub weights
    (`pretrained_cfg["hf_hub_id"]`; heads dropped if the class count differs), a string any spec
    `load_checkpoint` reads (a local file or `hf-hub:ORG/REPO`), False nothing."""
    if pretrained is False or pretrained is None or pretrained == "":
        return
    if pretrained is True:
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        if not hub_id:
            raise UsageError("pretrained=True needs a released variant (s0, s1, s2, l); this architecture "
                             "has no published weights: pass pretrained='FILE' or 'hf-hub:ORG/REPO'")
        same_classes = model.features_only or model.num_classes == model.pretrained_cfg["num_classes"]
        load_checkpoint(model, "hf-hub:" + hub_id, classifier="load" if same_classes else "drop")
    elif isinstance(pretrained, str):
        load_checkpoint(model, pretrained)
    else:
        raise TypeError(f"pretrained must be a bool or a checkpoint spec, not {type(pretrained).__name__}")


def _factory(variant: Variant) -> Callable[..., EfficientFormerV2]:
    def factory(pretrained: bool | str = False, **kwargs: Any) -> EfficientFormerV2:
        model = EfficientFormerV2(variant.arch, **kwargs)
        load_pretrained(model, pretrained)
        return model

    factory.__name__ = factory.__qualname__ = variant.model_name
    factory.__module__ = __name__
    factory.__doc__ = (f"EfficientFormerV2-{variant.key.upper()} ({variant.summary}).\n\n"
                       "Args:\n    pretrained: True for the hub weights, or a checkpoint spec (see "
                       "`load_pretrained`).\n    **kwargs: of `EfficientFormerV2` (num_classes, "
                       "distillation, features_only, ...).")
    return factory


MODEL_FACTORIES: dict[str, Callable[..., EfficientFormerV2]] = {v.model_name: _factory(v) for v in RELEASED}
# efficientformerv2_s0, _s1, _s2, _l as module attributes: importable by name, picklable
globals().update(MODEL_FACTORIES)


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(MODEL_FACTORIES)


def create_model(name: str, pretrained: bool | str = False, **kwargs: Any) -> EfficientFormerV2:
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
        **kwargs: passed to `EfficientFormerV2` (num_classes, distillation, drop_path_rate, ...).
    """
    if name.startswith(("hf-hub:", "local-dir:")):  # a model in timm's Hub format: its config.json says which
        if pretrained not in (False, None, True):
            raise UsageError(f"{name} brings its own weights: pass no other checkpoint")
        from .hub import source_model_kwargs
        arch_name, recorded = source_model_kwargs(name)
        if arch_name not in MODEL_FACTORIES:
            raise CheckpointError(f"{name}: config.json names the architecture {arch_name!r}, which is not one of "
                                  f"{', '.join(list_models())}")
        # as timm's create_model: pretrained=True loads the weights, False builds the network only
        return MODEL_FACTORIES[arch_name](pretrained=name if pretrained else False, **{**recorded, **kwargs})
    if name not in MODEL_FACTORIES:
        raise UsageError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    info = None
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained):
        from .model_info import checkpoint_info, checkpoint_kwargs
        info = checkpoint_info(pretrained)
        kwargs.update(checkpoint_kwargs(info, kwargs))
        pretrained = str(pretrained)
    model = MODEL_FACTORIES[name](pretrained=pretrained, **kwargs)
    if info is not None:
        from .model_info import set_class_names
        set_class_names(model, info.class_names)
    return model
