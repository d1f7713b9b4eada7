"""Models to deploy: the project's EfficientFormerV2 family (deploy form) or any timm model,
optionally with the model's input normalisation built in."""
from __future__ import annotations

import copy
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones import CheckpointError, EfficientFormerV2, checkpoint_info, create_model, list_models
from backbones.errors import UsageError
from imagefolder import data_config

__all__ = ["build_model", "deploy_form", "is_project_model", "replace_activations", "model_data_config", "ImageInput",
           "FeatureTuple"]


def is_project_model(name: str) -> bool:
    """Whether `name` is one of the project's EfficientFormerV2 variants."""
    return name in list_models()


def _timm_names() -> list[str]:
    import timm
    return timm.list_models()


def _unknown_model(name: str) -> UsageError:
    candidates = sorted(set(list_models()) | set(_timm_names()))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UsageError(f"unknown model {name!r}: use one of {', '.join(list_models())} or a timm model "
                      f"name (timm.list_models()).{hint}")


def build_model(name: str, checkpoint: str | Path | None = None, features: bool = False,
                num_classes: int | None = None) -> nn.Module:
    """An eval-mode model by name: a project variant (optionally with weights from `checkpoint`,
    whose class count, distillation head and training input size are read from the file) or any timm model (random
    weights; timm's `features_only` for `features`). A checkpoint's class names end up in
    `model.pretrained_cfg["label_names"]`.

    Raises:
        ValueError: unknown name, or a checkpoint passed for a timm model.
        backbones.CheckpointError: the checkpoint is of another variant or does not fit.
    """
    if is_project_model(name):
        kwargs: dict = {"features_only": features}
        if checkpoint is not None:
            # class count, distillation head, training size and class names come from the file
            if not features and not checkpoint_info(checkpoint).num_classes:
                if num_classes is None:
                    raise CheckpointError(f"{checkpoint} has no classifier head (a backbone checkpoint): "
                                          "export it with --features, or pass a classifier checkpoint")
                kwargs["num_classes"] = num_classes
            return create_model(name, pretrained=str(checkpoint), **kwargs).eval()
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return create_model(name, **kwargs).eval()
    if checkpoint is not None:
        if name not in _timm_names():
            raise _unknown_model(name)
        raise UsageError(f"--checkpoint is only supported for the project's models ({', '.join(list_models())}); "
                         f"{name!r} is a timm model")
    import timm
    if name not in _timm_names():
        raise _unknown_model(name)
    kwargs = {"features_only": True} if features else {}
    if num_classes is not None and not features:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def deploy_form(model: nn.Module) -> nn.Module:
    """A copy in deploy form: EfficientFormerV2 fused (see `EfficientFormerV2.fuse`), timm models
    re-parameterised where they have such a form; eval mode."""
    model = copy.deepcopy(model).eval()
    if isinstance(model, EfficientFormerV2):
        return model.fuse()
    from timm.utils.model import reparameterize_model
    return reparameterize_model(model)


def _activation_types() -> tuple[type[nn.Module], ...]:
    """Activation modules of torch and timm (gates such as the sigmoid of squeeze-excitation are not
    activations here and stay)."""
    from timm.layers import activations as timm_act
    return (nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.ELU, nn.LeakyReLU, nn.PReLU,
            timm_act.GELU, timm_act.GELUTanh, timm_act.QuickGELU, timm_act.Swish, timm_act.HardSwish,
            timm_act.Mish, timm_act.HardMish, timm_act.PReLU)


def replace_activations(model: nn.Module, activation: type[nn.Module] = nn.ReLU) -> int:
    """Replace every activation module of `model` (GELU, ReLU6, SiLU, hard-swish, ... of torch and
    timm) by `activation()`, in place; returns how many were replaced.

    The paper's Pixel 6 latencies (Sec. 5.1, Table 2) were measured this way, with every model's
    activations set to ReLU; it is a latency protocol: the weights' accuracy does not carry over.
    """
    types = _activation_types()
    replaced = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, types) and type(child) is not activation:
                setattr(parent, name, activation())
                replaced += 1
    return replaced


def model_data_config(model: nn.Module, size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """`imagefolder.data_config` of the network inside the export wrappers (`ImageInput`,
    `FeatureTuple`): its `pretrained_cfg`'s evaluation transform, at `size` where given."""
    inner = model
    while not hasattr(inner, "pretrained_cfg") and isinstance(getattr(inner, "model", None), nn.Module):
        inner = inner.model
    return data_config(inner, size)


class ImageInput(nn.Module):
    """Wraps a model so that it takes RGB images scaled to [0, 1] (pixel / 255) and applies the
    mean/std normalisation itself: the model's own (`model_data_config`) unless given."""

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        if mean is None or std is None:
            config = model_data_config(model)
            mean, std = config["mean"] if mean is None else mean, config["std"] if std is None else std
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor):
        return self.model((x - self.mean) * self.inv_std)


class FeatureTuple(nn.Module):
    """Wraps a features model so that it returns a tuple (exporters name each output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))
