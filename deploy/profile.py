"""Model size and compute: parameters and GMACs (torch.utils.flop_counter). Where a runtime spends
its time is each runtime's `profile` (`deploy.runtimes`)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_gmacs"]


def count_params(model: nn.Module) -> int:
    """All parameters of `model` (including a distillation head, as the paper's figures do)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, resolution: int | tuple[int, int] = 224, batch_size: int = 1) -> float:
    """Multiply-accumulates (in G) of one forward pass at `resolution`, per image.

    Counts what `torch.utils.flop_counter.FlopCounterMode` counts (convolutions, linear layers,
    matmuls including attention) and halves it; runs the model once in eval mode on zeros.
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.zeros(batch_size, 3, h, w, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 2 / batch_size / 1e9
