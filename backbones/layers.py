"""Primitives shared by the EfficientFormerV2 family (the network and the supernet): conv-BN units
that fold for deployment, layer scale, the resolution-free relative-offset attention bias, and the
attention token mixers built on them (`Attention2d`, `Attention2dDownsample`), each with its
training forward and its deploy form (`fuse()`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
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


def offset_index(query_hw: tuple[int, int], key_hw: tuple[int, int], query_stride: int,
                 device: torch.device) -> torch.Tensor:
    """Flat index (Hq*Wq*Hk*Wk,) into an (Hk, Wk) table over absolute offsets: query (i, j) sits at
    key position (i, j) * query_stride, and the pair's entry is |dy| * Wk + |dx|."""
    qy = torch.arange(query_hw[0], device=device) * query_stride
    qx = torch.arange(query_hw[1], device=device) * query_stride
    ky = torch.arange(key_hw[0], device=device)
    kx = torch.arange(key_hw[1], device=device)
    dy = (qy[:, None] - ky[None, :]).abs()  # (Hq, Hk)
    dx = (qx[:, None] - kx[None, :]).abs()  # (Wq, Wk)
    return (dy[:, None, :, None] * key_hw[1] + dx[None, :, None, :]).reshape(-1)


# a leaf for torch.fx (timm's feature extraction): which table it returns depends on the grid size,
# control flow that symbolic tracing cannot follow; as a leaf the traced graph works at any size
@register_notrace_module
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
        idx = offset_index(query_hw, key_hw, self.query_stride, self.attention_biases.device)
        nq, nk = query_hw[0] * query_hw[1], key_hw[0] * key_hw[1]
        return self.table(key_hw).flatten(1)[:, idx].view(self.num_heads, nq, nk)

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


# --------------------------------------------------------------------------------------------
# Attention token mixers
# --------------------------------------------------------------------------------------------
class Attention2d(nn.Module):
    """MHSA on a 2-D token grid with locality in V, talking heads and an offset bias.

    With `stride=2` (stage 3) Q/K/V are computed on a grid halved by a strided depth-wise
    conv and the result is upsampled bilinearly back to the input grid.

    Args:
        dim: channels. resolution: side of the token grid at the training input size (before
        the stride). key_dim, num_heads, attn_ratio: head geometry. stride: 1 or 2.
        attention_bias: learned offset bias added to the attention logits.
        talking_heads: 1x1 convolutions across heads before and after the softmax.
        local_v: a 3x3 depth-wise conv on V added to the attention output (locality in V).
    """

    def __init__(self, dim: int, resolution: int, key_dim: int = 32, num_heads: int = 8,
                 attn_ratio: int = 4, stride: int = 1, act_layer: type[nn.Module] = nn.GELU,
                 attention_bias: bool = True, talking_heads: bool = True, local_v: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim ** -0.5
        self.stride_conv = ConvNorm(dim, dim, 3, stride=2, padding=1, groups=dim) if stride == 2 else None
        qk_dim, v_dim = key_dim * num_heads, self.val_dim * num_heads
        self.q = ConvNorm(dim, qk_dim, 1)
        self.k = ConvNorm(dim, qk_dim, 1)
        self.v = ConvNorm(dim, v_dim, 1)
        self.v_local = ConvNorm(v_dim, v_dim, 3, padding=1, groups=v_dim) if local_v else None
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1) if talking_heads else None
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1) if talking_heads else None
        self.act = act_layer()
        self.proj = ConvNorm(v_dim, dim, 1)
        self.pos_bias = OffsetAttentionBias(num_heads, grid_size(resolution, stride)) if attention_bias else None
        self.attn_grid = grid_size(resolution, stride)
        # deploy form (set by fuse()): the attention scale folded into q, and the attention-logit
        # bias at the training grid precomputed (through the first talking head)
        self.register_buffer("logit_bias", None, persistent=False)
        self.fused = False
        self.generic_resize = False  # set by shape_generic()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self._forward_deploy(x)
        in_hw = x.shape[-2:]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        b, _, h, w = x.shape
        n = h * w
        q = self.q(x).reshape(b, self.num_heads, self.key_dim, n).transpose(-1, -2)
        k = self.k(x).reshape(b, self.num_heads, self.key_dim, n)
        v = self.v(x)
        v_local = self.v_local(v) if self.v_local is not None else None
        v = v.reshape(b, self.num_heads, self.val_dim, n).transpose(-1, -2)
        attn = (q @ k) * self.scale
        if self.pos_bias is not None:
            attn = attn + self.pos_bias((h, w), (h, w))
        if self.talking_head1 is not None:
            attn = self.talking_head1(attn)
        attn = attn.softmax(dim=-1)
        if self.talking_head2 is not None:
            attn = self.talking_head2(attn)
        x = (attn @ v).transpose(-1, -2).reshape(b, -1, h, w)
        if v_local is not None:
            x = x + v_local
        if self.stride_conv is not None:  # a resampling, not MACs of the network (FlopCounterMode skips it)
            x = F.interpolate(x, size=in_hw, mode="bilinear", align_corners=False)
        return self.proj(self.act(x))

    # -- deploy form ---------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> "Attention2d":
        """Deploy form, in place (idempotent): conv-BN units folded, the attention scale folded
        into q, and the logit bias at the training grid passed through the first talking head
        ahead of time: th1(s * q.k + bias) = th1(q'.k) + (W1 bias + b1). Returns self."""
        if self.fused:
            return self
        for m in (self.stride_conv, self.q, self.k, self.v, self.v_local, self.proj):
            if m is not None:
                m.fuse()
        w = self.q.conv.weight
        self.q.scale_output(torch.full((w.shape[0],), self.scale, device=w.device, dtype=w.dtype))
        self.fused = True
        self.refresh_cache()
        return self

    @torch.no_grad()
    def refresh_cache(self) -> None:
        """Deploy form: compute the precomputed logit bias from the current weights (by `fuse()`,
        and anew after a weight load); nothing to do before `fuse()` or after `shape_generic()`."""
        if not self.fused or self.generic_resize:
            return
        if self.pos_bias is not None:
            self.pos_bias.fuse()
        self.logit_bias = self._logit_bias((self.attn_grid, self.attn_grid))

    def shape_generic(self) -> None:
        """No precomputed bias, and the upsampling as matrix products of interpolation weights
        computed in the graph: the graph is the same for every input size (symbolic export)."""
        self.logit_bias = None
        self.generic_resize = True
        if self.pos_bias is not None:
            self.pos_bias.shape_generic()

    def _logit_bias(self, hw: tuple[int, int]) -> torch.Tensor | None:
        """What the deploy form adds to th1(q'.k) on a (h, w) grid: W1 bias + b1 with talking
        heads, the bias itself without; (heads, N, N) or (heads, 1, 1), None if nothing."""
        bias = self.pos_bias(hw, hw) if self.pos_bias is not None else None
        th = self.talking_head1
        if th is None:
            return bias
        if bias is None:
            return th.bias.view(-1, 1, 1)
        return F.conv2d(bias.unsqueeze(0), th.weight, th.bias).squeeze(0)

    def _forward_deploy(self, x: torch.Tensor) -> torch.Tensor:
        in_hw = x.shape[-2:]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        b, _, h, w = x.shape
        # channel-major tokens, batch and heads merged: (B*heads, dim, N); 3-D products (bmm)
        # need no broadcasting copies in runtimes that lower 4-D matmuls with expands
        q = self.q(x).flatten(2).unflatten(1, (self.num_heads, self.key_dim)).flatten(0, 1)
        k = self.k(x).flatten(2).unflatten(1, (self.num_heads, self.key_dim)).flatten(0, 1)
        v = self.v(x)
        v_local = self.v_local(v) if self.v_local is not None else None
        v = v.flatten(2).unflatten(1, (self.num_heads, self.val_dim)).flatten(0, 1)
        if self.logit_bias is not None and (h, w) == (self.attn_grid, self.attn_grid):
            bias = self.logit_bias
        else:
            bias = self._logit_bias((h, w))
        attn = torch.bmm(q.transpose(1, 2), k).unflatten(0, (b, self.num_heads))
        if self.talking_head1 is not None:
            attn = F.conv2d(attn, self.talking_head1.weight)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        if self.talking_head2 is not None:
            attn = self.talking_head2(attn)
        # a reshape, not unflatten: coremltools converts it with symbolic sizes
        x = torch.bmm(v, attn.flatten(0, 1).transpose(1, 2)).reshape(b, -1, h, w)
        if v_local is not None:
            x = x + v_local
        if self.stride_conv is not None:
            if self.generic_resize:
                x = resize_bilinear(x, (in_hw[0], in_hw[1]), align_corners=False)
            else:
                x = F.interpolate(x, size=in_hw, mode="bilinear", align_corners=False)
        return self.proj(self.act(x))


class LocalGlobalQuery(nn.Module):
    """Query of the downsampling attention: strided 1x1 pooling plus a strided depth-wise conv."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(in_dim, in_dim, 3, 2, 1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is None:  # deploy form
            return self.proj(self.local(x))
        return self.proj(self.local(x) + self.pool(x))

    @torch.no_grad()
    def fuse(self) -> "LocalGlobalQuery":
        """Deploy form (idempotent): the strided 1x1 pooling picks the centre tap of the strided
        3x3 depth-wise conv's window, so it folds into that tap's weight (+1). Returns self."""
        if self.pool is not None:
            self.local.weight[:, :, 1, 1] += 1.0
            self.pool = None
        self.proj.fuse()
        return self


class Attention2dDownsample(nn.Module):
    """Attention that halves the grid: queries on the strided grid attend to every input token.

    Args:
        dim, out_dim: input and output channels. resolution: side of the input token grid at the
        training input size. key_dim, num_heads, attn_ratio: head geometry.
        attention_bias: learned offset bias added to the attention logits.
        local_v: a strided 3x3 depth-wise conv on V added to the attention output.
    """

    def __init__(self, dim: int, out_dim: int, resolution: int, key_dim: int = 16, num_heads: int = 8,
                 attn_ratio: int = 4, act_layer: type[nn.Module] = nn.GELU, attention_bias: bool = True,
                 local_v: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = attn_ratio * key_dim
        self.scale = key_dim ** -0.5
        qk_dim, v_dim = key_dim * num_heads, self.val_dim * num_heads
        self.q = LocalGlobalQuery(dim, qk_dim)
        self.k = ConvNorm(dim, qk_dim, 1)
        self.v = ConvNorm(dim, v_dim, 1)
        self.v_local = ConvNorm(v_dim, v_dim, 3, stride=2, padding=1, groups=v_dim) if local_v else None
        self.act = act_layer()
        self.proj = ConvNorm(v_dim, out_dim, 1)
        self.pos_bias = OffsetAttentionBias(num_heads, resolution, query_stride=2) if attention_bias else None
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self._forward_deploy(x)
        b, _, h, w = x.shape
        hq, wq = grid_size(h, 2), grid_size(w, 2)
        q = self.q(x).reshape(b, self.num_heads, self.key_dim, hq * wq).transpose(-1, -2)
        k = self.k(x).reshape(b, self.num_heads, self.key_dim, h * w)
        v = self.v(x)
        v_local = self.v_local(v) if self.v_local is not None else None
        v = v.reshape(b, self.num_heads, self.val_dim, h * w).transpose(-1, -2)
        attn = (q @ k) * self.scale
        if self.pos_bias is not None:
            attn = attn + self.pos_bias((hq, wq), (h, w))
        x = (attn.softmax(dim=-1) @ v).transpose(-1, -2).reshape(b, -1, hq, wq)
        if v_local is not None:
            x = x + v_local
        return self.proj(self.act(x))

    # -- deploy form ---------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> "Attention2dDownsample":
        """Deploy form, in place (idempotent): conv-BN units folded, the attention scale folded
        into the query projection, the query's pooling folded, the bias at the training grid
        precomputed. Returns self."""
        if self.fused:
            return self
        self.q.fuse()
        for m in (self.k, self.v, self.v_local, self.proj):
            if m is not None:
                m.fuse()
        w = self.q.proj.conv.weight
        self.q.proj.scale_output(torch.full((w.shape[0],), self.scale, device=w.device, dtype=w.dtype))
        self.fused = True
        self.refresh_cache()
        return self

    @torch.no_grad()
    def refresh_cache(self) -> None:
        """Deploy form: compute the precomputed bias from the current weights (by `fuse()`, and
        anew after a weight load); nothing to do before `fuse()` or after `shape_generic()`."""
        if self.fused and self.pos_bias is not None and not self.pos_bias.always_resample:
            self.pos_bias.fuse()

    def shape_generic(self) -> None:
        """No precomputed bias: the graph is the same for every input size (symbolic export)."""
        if self.pos_bias is not None:
            self.pos_bias.shape_generic()

    def _forward_deploy(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q = self.q(x)
        hq, wq = q.shape[-2:]
        # channel-major tokens, batch and heads merged: (B*heads, dim, N), 3-D products (bmm)
        q = q.flatten(2).unflatten(1, (self.num_heads, self.key_dim)).flatten(0, 1)
        k = self.k(x).flatten(2).unflatten(1, (self.num_heads, self.key_dim)).flatten(0, 1)
        v = self.v(x)
        v_local = self.v_local(v) if self.v_local is not None else None
        v = v.flatten(2).unflatten(1, (self.num_heads, self.val_dim)).flatten(0, 1)
        attn = torch.bmm(q.transpose(1, 2), k)
        if self.pos_bias is not None:
            attn = (attn.unflatten(0, (-1, self.num_heads)) + self.pos_bias((hq, wq), (h, w))).flatten(0, 1)
        x = torch.bmm(v, attn.softmax(dim=-1).transpose(1, 2))
        x = x.unflatten(0, (-1, self.num_heads)).flatten(1, 2)
        x = x.reshape(x.shape[0], -1, hq, wq)  # a reshape: coremltools converts it with symbolic sizes
        if v_local is not None:
            x = x + v_local
        return self.proj(self.act(x))
