"""Which parameters get weight decay, and layer-wise learning rates: the one policy of the
classifier and the supernet.

The official EfficientFormerV2 training builds its optimizer with timm's factory, which, for a
model without a `no_weight_decay()` method (the official `EfficientFormerV2` class has none),
exempts exactly the parameters that are one-dimensional or named `*.bias`. In the official layout
these are the normalisation weights and biases and the convolution / linear biases; the
attention-bias tables (heads x offsets) and the layer scales (stored there as dim x 1 x 1) are
decayed. This project stores layer scales one-dimensional (`*.gamma`), so a plain "ndim <= 1" rule
would exempt them; the rule below is written by parameter name and shape so that it selects the
official set on this project's models, the plain network and the supernet alike.
"""
from __future__ import annotations

from typing import Any

from timm.models import group_parameters
from torch import nn

__all__ = ["decays", "layer_ids", "param_groups"]


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether the parameter `name` gets weight decay: everything but biases (`*.bias`) and
    normalisation weights (one-dimensional `*.weight`). Convolution and linear weights,
    attention-bias tables (`*.attention_biases`) and layer scales (`*.gamma`) are decayed.

    Args:
        name: the parameter's name in `named_parameters()`.
        param: the parameter (its number of dimensions tells a norm weight from a layer weight).
    """
    if name.endswith(".bias") or name == "bias":
        return False
    is_weight = name.endswith(".weight") or name == "weight"
    return not (is_weight and param.ndim <= 1)


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Layer index of each parameter for layer-wise learning-rate decay, from the model's
    `group_matcher` (timm's grouping: stem 0, stages 1..4, final norm and heads last); a model
    without one is a single layer (index 0)."""
    if not hasattr(model, "group_matcher"):
        return {name: 0 for name, _ in model.named_parameters()}
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups of `model`'s trainable parameters: one with `weight_decay`
    (see `decays`) and one without; empty groups are left out. With `layer_decay`, one such pair
    per layer (`layer_ids`), each with timm's "lr_scale" `layer_decay ** (last layer - layer)`,
    which timm's schedulers multiply into the learning rate (fine-tuning: the stem moves least).

    Args:
        model: the network (an `EfficientFormerV2`, the supernet, or any module).
        weight_decay: decoupled weight decay of the decayed group.
        layer_decay: per-layer learning-rate decay in (0, 1]; None: one learning rate.
    """
    if layer_decay is None:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (decay if decays(name, param) else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    ids = layer_ids(model)
    last = max(ids.values(), default=0)
    by_key: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = ids.get(name, last), decays(name, param)
        group = by_key.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr_scale": layer_decay ** (last - layer)})
        group["params"].append(param)
    return [by_key[k] for k in sorted(by_key)]
