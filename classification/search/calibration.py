"""BatchNorm recalibration and the evaluation loop of sub-networks with inherited weights."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imagefolder import DataError

__all__ = ["Batches", "recalibrate_bn", "evaluate"]

Batches = Iterable[Any]


def _images_targets(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Batches, num_batches: int = 10) -> int:
    """Re-estimate the running statistics of the BatchNorms `model` uses (its current
    sub-network) as a cumulative average; other BatchNorms are left alone. The model is left in
    eval mode.

    Args:
        model: the network (a supernet set to a sub-network).
        batches: image batches, or (images, targets) pairs; None entries are skipped.
        num_batches: at most this many batches are used.

    Returns:
        The number of batches used.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    used: list[_BatchNorm] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _: used.append(mod))
             for m in model.modules() if isinstance(m, _BatchNorm)]
    device = next(model.parameters()).device
    n, momenta = 0, {}
    try:
        for batch in batches:
            if batch is None:
                continue
            x, _ = _images_targets(batch)
            x = x.to(device)
            if n == 0:  # find the BatchNorms of this sub-network, then reset only those
                model.eval()
                model(x[:1])
                for h in hooks:
                    h.remove()
                hooks = []
                for bn in set(used):
                    bn.reset_running_stats()
                    momenta[bn] = bn.momentum
                    bn.momentum = None  # cumulative moving average
                model.train()
            model(x)
            n += 1
            if n >= num_batches:
                break
    finally:
        for h in hooks:
            h.remove()
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        model.eval()
    if n == 0:
        raise DataError("no batch to recalibrate BatchNorm statistics with")
    return n


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, max_batches: int | None = None) -> tuple[float, float]:
    """(top-1 accuracy in percent, mean cross-entropy) of `model` in eval mode.

    Args:
        model: the network to evaluate.
        batches: (images, targets) pairs; None entries are skipped.
        max_batches: stop after this many batches (None: all).
    """
    model.eval()
    device = next(model.parameters()).device
    correct, total, loss = 0, 0, 0.0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        if batch is None:
            continue
        x, y = _images_targets(batch)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    if total == 0:
        raise DataError("no labelled batch to evaluate on")
    return 100.0 * correct / total, loss / total
