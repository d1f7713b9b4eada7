"""The official release's dense attention bias, as a mode of the project's EfficientFormerV2.

The snap-research release trains its detection and segmentation backbones with attention-bias
tables of their own (`attention_biases_seg`), one per attention (the downsampling one included),
over the absolute offsets of the grid that attention has at a dense training resolution (800 for
COCO, 512 for ADE20K), started from zero. At run time the table is expanded to the N x N matrix
over that grid and the matrix is resized bicubically to the feature map's query x key token
counts: a function of the token counts only, unlike the project's own bias
(`backbones.layers.OffsetAttentionBias`), which resamples the offset table to the actual grid.

Two modes of one network (`EfficientFormerV2(..., bias_mode=...)`):

- "offset" (default): the project's offset-table resampling; ImageNet tables load as they are.
- "dense": the official dense bias; `img_size` is then the dense training resolution. Official
  dense weights (and weights saved from a dense-mode model) load exactly into this mode, and the
  loaders switch a model to it by themselves when a checkpoint holds such tables
  (`match_bias_mode`).

Depends on torch only (and `backbones.layers`).
"""
from __future__ import annotations

import math
import re
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, UsageError
from .layers import Attention2d, Attention2dDownsample, OffsetAttentionBias, grid_size, offset_index

__all__ = ["BIAS_MODES", "DENSE_TABLE", "DenseAttentionBias", "bias_mode", "set_bias_mode",
           "checkpoint_bias_mode", "match_bias_mode"]

BIAS_MODES = ("offset", "dense")
DENSE_TABLE = "attention_biases_seg"  # the official parameter name, kept in the project's layout too
_OFFSET_TABLE = "attention_biases"
BiasMode = Literal["offset", "dense"]


class DenseAttentionBias(nn.Module):
    """The official dense attention bias: a table (num_heads, R*R) over the absolute offsets
    (|dy|, |dx|) of an R x R key grid (entry |dy| * R + |dx|, the official layout), expanded to
    the (heads, Nq, Nk) matrix of the training grid (queries every `query_stride` keys) and
    resized bicubically (corners not aligned) to the actual query x key token counts.

    Args:
        num_heads: heads. resolution: side R of the training key grid. query_stride: 1 or 2.
        table: an existing parameter to take over (its values are replaced by zeros of the new
            shape), so that an optimizer built before a mode switch still holds it.
    """

    def __init__(self, num_heads: int, resolution: int, query_stride: int = 1,
                 table: nn.Parameter | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.resolution = resolution
        self.query_stride = query_stride
        zeros = torch.zeros(num_heads, resolution * resolution)
        if table is None:
            table = nn.Parameter(zeros)
        else:
            table.data = zeros.to(device=table.device, dtype=table.dtype)
        self.attention_biases_seg = table
        self.always_resample = False  # the offset bias's deploy switch; nothing to switch here

    def matrix(self) -> torch.Tensor:
        """(heads, Nq, Nk) bias over the training grid (queries on the strided grid)."""
        r = self.resolution
        q = grid_size(r, self.query_stride)
        idx = offset_index((q, q), (r, r), self.query_stride, self.attention_biases_seg.device)
        return self.attention_biases_seg[:, idx].view(self.num_heads, q * q, r * r)

    def forward(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> torch.Tensor:
        """Bias of shape (heads, Hq*Wq, Hk*Wk)."""
        size = (query_hw[0] * query_hw[1], key_hw[0] * key_hw[1])
        return F.interpolate(self.matrix().unsqueeze(0), size=size, mode="bicubic", align_corners=False).squeeze(0)

    def fuse(self) -> "DenseAttentionBias":
        """Deploy form: nothing to precompute (the matrix is resized for every input size)."""
        return self

    def shape_generic(self) -> None:
        raise NotImplementedError("the dense attention bias resizes its matrix to the token counts of each input; "
                                  "export with symbolic sizes is supported in bias_mode='offset' only")


def _bias_owners(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, attention module, stage index) of every attention that carries a bias."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (Attention2d, Attention2dDownsample)) and m.pos_bias is not None:
            stage = re.match(r"(?:.*\.)?stages\.(\d+)\.", name + ".")
            out.append((name, m, int(stage.group(1)) if stage else -1))
    return out


def bias_mode(model: nn.Module) -> BiasMode:
    """"dense" when the model's attentions carry the official dense bias, else "offset"."""
    owners = _bias_owners(model)
    return "dense" if owners and isinstance(owners[0][1].pos_bias, DenseAttentionBias) else "offset"


def set_bias_mode(model: nn.Module, mode: BiasMode, img_size: int) -> None:
    """Give every attention of an `EfficientFormerV2` the bias of `mode` ("offset" or "dense")
    for the training input side `img_size` (the grids of the official code at that resolution:
    each attention's grid, the downsampling one included), in place. The bias parameters keep
    their identity (an optimizer built before still holds them); their values start from zero,
    as the official dense tables do, until weights are loaded. Deploy-form (fused) models are
    refused."""
    if mode not in BIAS_MODES:
        raise UsageError(f"bias_mode must be one of {', '.join(BIAS_MODES)}, not {mode!r}")
    if getattr(model, "is_fused", False):
        raise ValueError("set the bias mode before fuse(): the deploy form precomputes the bias")
    plans = model.arch.plans(img_size)
    for _, attn, stage in _bias_owners(model):
        plan = plans[stage]
        if isinstance(attn, Attention2dDownsample):
            grid, stride = plan.in_grid, 2  # keys on the stage's input grid, queries on the halved one
        else:
            grid, stride = grid_size(plan.grid, plan.attn_stride), 1
            attn.attn_grid = grid
        old = attn.pos_bias
        table = getattr(old, DENSE_TABLE if isinstance(old, DenseAttentionBias) else _OFFSET_TABLE)
        if mode == "dense":
            attn.pos_bias = DenseAttentionBias(old.num_heads, grid, stride, table=table)
        else:
            new = OffsetAttentionBias(old.num_heads, grid, stride)
            table.data = torch.zeros_like(new.attention_biases, device=table.device, dtype=table.dtype)
            new.attention_biases = table
            attn.pos_bias = new.to(table.device)
    model.img_size = img_size


def checkpoint_bias_mode(state_dict: Mapping[str, torch.Tensor]) -> tuple[BiasMode, int] | None:
    """The bias mode of a project-layout state dict and the training input side its tables were
    made for (None without bias tables): "dense" for official dense tables (`DENSE_TABLE`),
    "offset" for the project's (and timm's) tables. The side is one whose grids are the tables':
    the downsampling table covers the stage-4 input grid (1/16 of the input), a stage-4 MHSA table
    1/32, a stage-3 one 1/32 with stride attention (else 1/16)."""
    dense = any(k.endswith(DENSE_TABLE) for k in state_dict)
    suffix = DENSE_TABLE if dense else "pos_bias." + _OFFSET_TABLE
    tables = {k: v for k, v in state_dict.items() if k.endswith(suffix) and v.dim() == 2}
    if not tables:
        return None
    strided = any(k.startswith("stages.2.") and ".stride_conv." in k for k in state_dict)
    for prefix, per_side in (("stages.3.downsample.", 16), ("stages.3.blocks.", 32),
                             ("stages.2.blocks.", 32 if strided else 16)):
        for k, v in tables.items():
            side = math.isqrt(v.shape[-1])
            if k.startswith(prefix) and side > 0 and side * side == v.shape[-1]:
                return ("dense" if dense else "offset"), per_side * side
    raise CheckpointError(f"attention-bias tables of unknown place or shape: {sorted(tables)[:3]}")


def match_bias_mode(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                    keep_dense: bool = False) -> str | None:
    """Switch `model` (an `EfficientFormerV2`) to the bias mode and grids of a project-layout
    state dict before it is loaded: official dense tables switch it to "dense" at their
    resolution, offset tables to "offset" (unless `keep_dense`: a dense-mode model starting
    from ImageNet weights, whose offset tables the official recipe leaves unused). Returns a
    short note of what changed, or None."""
    found = checkpoint_bias_mode(state_dict)
    if found is None:
        return None
    mode, size = found
    current = bias_mode(model)
    if mode == "offset":
        if current == "offset" or keep_dense:
            return None  # offset tables of another grid are resampled on loading
    elif current == "dense" and size == model.img_size:
        return None
    set_bias_mode(model, mode, size)
    return f"attention bias '{mode}' at img_size {size} (the checkpoint's)"
