"""Primitives shared by the EfficientFormerV2 family: conv-BN units that fold for deployment,
layer scale, and the resolution-free relative-offset attention bias."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ConvNorm(nn.Module):
    """Conv2d followed by BatchNorm2d; `fuse()` folds the norm into the convolution.

    Args:
        in_chs, out_chs: channels. kernel_size, stride, padding, groups: as in nn.Conv2d.
        bias: whether the convolution has its own bias (the reference layers do).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=bias)
        self.bn: nn.Module = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> "ConvNorm":
        """Deploy form, in place (idempotent): the norm folded into the convolution. Returns self."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()
        return self

    @torch.no_grad()
    def scale_output(self, scale: torch.Tensor) -> None:
        """Multiply the (fused) output channel-wise by `scale`, folding a layer scale in."""
        self.fuse()
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.conv.bias.mul_(scale)


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch (initialised small)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def bilinear_weights(out_size: int, in_size: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """(out_size, in_size) matrix of the 1-D linear interpolation `F.interpolate` computes, as
    hat-function weights max(0, 1 - |src(i) - j|) built from tensor ops only: the sizes may be
    symbolic in an exported graph (ONNX, CoreML enumerated shapes), where a resize op with a
    computed output size does not convert."""
    dst = torch.arange(out_size, device=like.device, dtype=like.dtype)
    src = torch.arange(in_size, device=like.device, dtype=like.dtype)
    last_dst, last_src = dst[-1:], src[-1:]  # out_size - 1, in_size - 1 as tensors
    if align_corners:
        pos = dst * (last_src / last_dst.clamp(min=1.0))
    else:  # half-pixel centres, clamped to the edge samples as F.interpolate does
        pos = torch.minimum(((dst + 0.5) * ((last_src + 1.0) / (last_dst + 1.0)) - 0.5).clamp(min=0.0), last_src)
    return (1.0 - (pos[:, None] - src[None, :]).abs()).clamp(min=0.0)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=...)` of a (..., H, W) tensor as two
    matrix products with `bilinear_weights` (equal up to float rounding; exportable with
    symbolic sizes)."""
    rows = bilinear_weights(size[0], x.shape[-2], align_corners, x)
    cols = bilinear_weights(size[1], x.shape[-1], align_corners, x)
    return rows @ x @ cols.transpose(0, 1)


def grid_size(size: int, stride: int) -> int:
    """Output length of a 3x3 (or 1x1) convolution with padding k//2 and the given stride."""
    return (size - 1) // stride + 1


class OffsetAttentionBias(nn.Module):
    """Learned attention bias per head, a function of the absolute token offset (|dy|, |dx|).

    The table is stored as (num_heads, R*R) for a key grid of R x R tokens (the training grid),
    entry index |dy| * R + |dx|, the layout of the reference checkpoints. On another key grid
    (H, W) the table is resized in offset space (bilinear, corners aligned, so offset 0 and the
    largest offset keep their values); on the training grid it is used unchanged. Queries may
    sit on a grid with `query_stride` (the downsampling attention), query i at key 2i.

    Args:
        num_heads: heads. resolution: side R of the training key grid. query_stride: 1 or 2.
    """

    def __init__(self, num_heads: int, resolution: int, query_stride: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.resolution = resolution
        self.query_stride = query_stride
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        # deploy form: the bias at the training grid, precomputed by fuse()
        self.register_buffer("cached", None, persistent=False)
        # deploy form for symbolic-size export (`shape_generic()`): no branch on the grid size
        self.always_resample = False

    def table(self, key_hw: tuple[int, int]) -> torch.Tensor:
        """Bias table (heads, H, W) over offsets 0..H-1, 0..W-1."""
        r = self.resolution
        table = self.attention_biases.view(self.num_heads, r, r)
        if self.always_resample or tuple(key_hw) != (r, r):
            table = resize_bilinear(table, tuple(key_hw), align_corners=True)
        return table

    def forward(self, query_hw: tuple[int, int], key_hw: tuple[int, int]) -> torch.Tensor:
        """Bias of shape (heads, Hq*Wq, Hk*Wk)."""
        train_grid = (self.resolution, self.resolution)
        if self.cached is not None and tuple(key_hw) == train_grid:
            return self.cached
        device = self.attention_biases.device
        s = self.query_stride
        qy = torch.arange(query_hw[0], device=device) * s
        qx = torch.arange(query_hw[1], device=device) * s
        ky = torch.arange(key_hw[0], device=device)
        kx = torch.arange(key_hw[1], device=device)
        dy = (qy[:, None] - ky[None, :]).abs()  # (Hq, Hk)
        dx = (qx[:, None] - kx[None, :]).abs()  # (Wq, Wk)
        table = self.table(key_hw)
        # index (Hq, Wq, Hk, Wk) -> flat offset in the (H, W) table
        idx = dy[:, None, :, None] * key_hw[1] + dx[None, :, None, :]
        nq, nk = query_hw[0] * query_hw[1], key_hw[0] * key_hw[1]
        return table.flatten(1)[:, idx.reshape(-1)].view(self.num_heads, nq, nk)

    @torch.no_grad()
    def fuse(self) -> "OffsetAttentionBias":
        """Deploy form: the bias at the training grid computed once. Returns self."""
        r = self.resolution
        q = grid_size(r, self.query_stride)
        self.cached = None  # computed anew from the current table (also after a weight load)
        self.cached = self.forward((q, q), (r, r)).detach().clone()
        return self

    def shape_generic(self) -> None:
        """Deploy form for graphs exported with symbolic height/width: drop the cache and always
        resample the table (the identity at the training grid), so that no code path depends on
        the grid size."""
        self.cached = None
        self.always_resample = True

