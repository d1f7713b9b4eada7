"""Which parameters get weight decay: the one policy of the classifier and the supernet.

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

from torch import nn

__all__ = ["decays", "param_groups"]


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups of `model`'s trainable parameters: one with `weight_decay`
    (see `decays`) and one without; empty groups are left out.

    Args:
        model: the network (an `EfficientFormerV2`, the supernet, or any module).
        weight_decay: decoupled weight decay of the decayed group.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
