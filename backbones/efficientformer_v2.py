"""EfficientFormerV2 ("Rethinking Vision Transformers for MobileNet Size and Speed", Li et al.).

The architecture is data: an `Arch` lists, per stage, the width, one FFN expansion ratio per
block and how many trailing blocks carry multi-head self-attention. The four released variants
and any searched network are built from such a description by the same code.

Order of this file: blocks -> stage -> stage layout and architecture (`StagePlan`, `Arch`) ->
model -> variant table -> factories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .layers import ConvNorm, LayerScale, OffsetAttentionBias, grid_size, resize_bilinear

__all__ = ["Arch", "StageArch", "StagePlan", "SWITCHES", "ATTENTION_STAGES", "DOWNSAMPLING", "stage_plans",
           "feature_grids", "EfficientFormerV2", "VARIANTS", "efficientformerv2_s0",
           "efficientformerv2_s1", "efficientformerv2_s2", "efficientformerv2_l"]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class ConvMlp(nn.Module):
    """Unified FFN: 1x1 conv-BN-GELU, 3x3 depth-wise conv-BN-GELU, 1x1 conv-BN."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, 1)
        self.act1 = act_layer()
        self.mid = ConvNorm(hidden, hidden, 3, padding=1, groups=hidden)
        self.act2 = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = ConvNorm(hidden, dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.mid(self.act1(self.fc1(x))))
        return self.drop2(self.fc2(self.drop1(x)))

    def fuse(self) -> "ConvMlp":
        """Deploy form, in place: conv-BN units folded. Returns self."""
        for m in (self.fc1, self.mid, self.fc2):
            m.fuse()
        return self


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
                x = resize_bilinear(x, in_hw, align_corners=False)
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


DOWNSAMPLING = ("dual", "attention", "conv")


class Downsample(nn.Module):
    """Halves the grid into a stage: a stride-2 conv-BN ("conv"), the downsampling attention
    ("attention"), or both added (the dual-path attention downsampling, "dual").

    Args:
        in_dim, out_dim: channels. resolution: input grid side at the training size (attention).
        mode: "conv", "attention" or "dual". attention_bias, local_v: of the attention path.
    """

    def __init__(self, in_dim: int, out_dim: int, resolution: int = 0, mode: str = "conv",
                 attention_bias: bool = True, local_v: bool = True) -> None:
        super().__init__()
        if mode not in DOWNSAMPLING:
            raise ValueError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, not {mode!r}")
        self.conv = ConvNorm(in_dim, out_dim, 3, stride=2, padding=1) if mode != "attention" else None
        self.attn = Attention2dDownsample(in_dim, out_dim, resolution, attention_bias=attention_bias,
                                          local_v=local_v) if mode != "conv" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is None:
            return self.conv(x)
        if self.conv is None:
            return self.attn(x)
        return self.conv(x) + self.attn(x)


class EfficientFormerV2Block(nn.Module):
    """Residual block: optional MHSA (token mixer) then the unified FFN, each layer-scaled.

    Args:
        dim: channels. mlp_ratio: FFN expansion. attention: carry an MHSA. resolution: token
        grid side at the training size. attn_stride: 2 for stride attention. drop, drop_path,
        layer_scale_init: regularisation and init. attention_options: switches of the MHSA
        (attention_bias, talking_heads, local_v).
    """

    def __init__(self, dim: int, mlp_ratio: float, attention: bool = False, resolution: int = 7,
                 attn_stride: int = 1, drop: float = 0.0, drop_path: float = 0.0,
                 layer_scale_init: float = 1e-5, attention_options: Mapping[str, bool] | None = None) -> None:
        super().__init__()
        if attention:
            self.token_mixer = Attention2d(dim, resolution, stride=attn_stride, **(attention_options or {}))
            self.ls1 = LayerScale(dim, layer_scale_init)
            self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.token_mixer = None
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.ls2 = LayerScale(dim, layer_scale_init)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))

    @torch.no_grad()
    def fuse(self) -> "EfficientFormerV2Block":
        """Deploy form, in place (idempotent): each layer scale folded into the conv-BN that ends
        its branch, then the branches fused. Returns self."""
        if self.token_mixer is not None and isinstance(self.ls1, LayerScale):
            self.token_mixer.proj.scale_output(self.ls1.gamma)
            self.ls1 = nn.Identity()
        if isinstance(self.ls2, LayerScale):
            self.mlp.fc2.scale_output(self.ls2.gamma)
            self.ls2 = nn.Identity()
        if self.token_mixer is not None:
            self.token_mixer.fuse()
        self.mlp.fuse()
        return self


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------
class EfficientFormerV2Stage(nn.Module):
    """Optional downsampling into the stage, then its blocks (the last ones with attention).

    Args:
        in_dim, dim: input and stage channels. mlp_ratios: one FFN expansion per block.
        num_attention: trailing blocks with MHSA. plan: where the stage sits (`StagePlan`: its
        downsampling, grids and attention stride). drop_path: one rate per block. drop,
        layer_scale_init: as in the blocks. attention_options: MHSA switches.
    """

    def __init__(self, in_dim: int, dim: int, mlp_ratios: Sequence[float], num_attention: int,
                 plan: "StagePlan", drop_path: Sequence[float], drop: float = 0.0,
                 layer_scale_init: float = 1e-5, attention_options: Mapping[str, bool] | None = None) -> None:
        super().__init__()
        options = dict(attention_options or {})
        if plan.downsample is None:
            self.downsample = None
        else:
            self.downsample = Downsample(in_dim, dim, plan.in_grid, mode=plan.downsample,
                                         attention_bias=options.get("attention_bias", True),
                                         local_v=options.get("local_v", True))
        depth = len(mlp_ratios)
        self.blocks = nn.Sequential(*[
            EfficientFormerV2Block(dim, mlp_ratios[i], attention=i >= depth - num_attention,
                                   resolution=plan.grid, attn_stride=plan.attn_stride, drop=drop,
                                   drop_path=drop_path[i], layer_scale_init=layer_scale_init,
                                   attention_options=options)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


# --------------------------------------------------------------------------------------------
# Architecture description
# --------------------------------------------------------------------------------------------
ATTENTION_STAGES = (2, 3)  # stages 3 and 4 (0-based 2, 3) may carry MHSA


@dataclass(frozen=True)
class StagePlan:
    """Where a stage sits in the network, the same for every width and depth: the single
    description of the stage layout that the model, the supernet and the latency table use.

    index: 0..3. stride: of its feature map (4, 8, 16, 32). in_grid: token-grid side at its
    input (before downsampling) for the training input size; grid: inside the stage.
    downsample: None (stage 1), "conv", "attention" or "dual". attention: whether its blocks may
    carry MHSA. attn_stride: 2 where that MHSA is stride attention; attn_grid: the grid its
    queries and keys live on.
    """

    index: int
    stride: int
    in_grid: int
    grid: int
    downsample: str | None
    attention: bool
    attn_stride: int

    @property
    def attn_grid(self) -> int:
        return grid_size(self.grid, self.attn_stride)


def stage_plans(img_size: int = 224, stride_attention: bool = True, downsampling: str = "dual") -> tuple[StagePlan, ...]:
    """The four `StagePlan`s of EfficientFormerV2 at a training input side `img_size`: a stride-4
    stem; stages 2-4 downsampled by a stride-2 conv, except stage 4 (`downsampling`: the
    dual-path attention downsampling by default); MHSA possible in stages 3 and 4, strided in
    stage 3 when `stride_attention`."""
    if downsampling not in DOWNSAMPLING:
        raise ValueError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, not {downsampling!r}")
    grid = grid_size(grid_size(img_size, 2), 2)
    plans = []
    for i in range(4):
        in_grid = grid
        if i > 0:
            grid = grid_size(grid, 2)
        downsample = None if i == 0 else (downsampling if i == 3 else "conv")
        plans.append(StagePlan(i, 2 ** (i + 2), in_grid, grid, downsample, i in ATTENTION_STAGES,
                               2 if i == 2 and stride_attention else 1))
    return tuple(plans)


def feature_grids(height: int, width: int) -> list[tuple[int, int]]:
    """(h, w) token grid of each stage's output for an input of height x width (any size)."""
    h, w = grid_size(grid_size(height, 2), 2), grid_size(grid_size(width, 2), 2)
    out = [(h, w)]
    for _ in range(3):
        h, w = grid_size(h, 2), grid_size(w, 2)
        out.append((h, w))
    return out


@dataclass(frozen=True)
class StageArch:
    """One stage: `width` channels, one FFN expansion ratio per block (the depth is their number),
    and `attention` trailing blocks that carry MHSA before their FFN (stages 3 and 4 only)."""

    width: int
    expansions: tuple[float, ...]
    attention: int = 0

    @property
    def depth(self) -> int:
        return len(self.expansions)


# design switches of the paper's Section 3 (Tables 1 and 7): name -> accepted values; the first
# value is the paper's choice and the default
SWITCHES: dict[str, tuple[Any, ...]] = {
    "attention_bias": (True, False),      # learned offset bias in the attention logits (Table 7)
    "talking_heads": (True, False),       # 1x1 convs across heads around the softmax (Sec. 3.3)
    "local_v": (True, False),             # 3x3 depth-wise conv on V (locality in V, Sec. 3.3)
    "stride_attention": (True, False),    # stage-3 MHSA on a stride-2 grid, else full resolution (Sec. 3.4)
    "downsampling": DOWNSAMPLING,         # stage 3->4: conv + attention (dual), attention, conv (Sec. 3.5)
}
_ARCH_KEYS = ("widths", "depths", "expansions", "attention", "stem_width", "drop_path_rate")


@dataclass(frozen=True)
class Arch:
    """Architecture of an EfficientFormerV2 network: four stages, a stem width and the design
    switches of the paper's Section 3 (defaults: the paper's choices, see `SWITCHES`).

    Build from a dict with `Arch.from_dict({"widths": [...], "expansions": [[...], ...],
    "attention": [0, 0, 2, 2]})` ("depths" optional, checked against the expansions), or on top of
    a variant: `Arch.from_dict({"base": "s1", "attention_bias": False})`.
    """

    stages: tuple[StageArch, ...]
    stem_width: int = 0  # 0: half of the first stage width
    drop_path_rate: float = 0.0
    attention_bias: bool = True
    talking_heads: bool = True
    local_v: bool = True
    stride_attention: bool = True
    downsampling: str = "dual"

    def __post_init__(self) -> None:
        if len(self.stages) != 4:
            raise ValueError(f"EfficientFormerV2 has 4 stages, the architecture gives {len(self.stages)}")
        for name, accepted in SWITCHES.items():
            value = getattr(self, name)
            if value not in accepted or type(value) is not type(accepted[0]):
                raise ValueError(f"architecture switch {name}={value!r} is not accepted; use one of "
                                 f"{', '.join(map(repr, accepted))}")
        for i, s in enumerate(self.stages):
            if s.width <= 0 or s.depth < 1:
                raise ValueError(f"stage {i + 1}: width must be > 0 and depth >= 1, got width "
                                 f"{s.width} and {s.depth} blocks")
            if any(e <= 0 for e in s.expansions):
                raise ValueError(f"stage {i + 1}: expansion ratios must be > 0, got {list(s.expansions)}")
            if not 0 <= s.attention <= s.depth:
                raise ValueError(f"stage {i + 1}: {s.attention} attention blocks but only {s.depth} blocks")
            if i not in ATTENTION_STAGES and s.attention:
                raise ValueError(f"stage {i + 1}: attention blocks are only possible in stages 3 and 4")
        if self.stem_width == 0:
            object.__setattr__(self, "stem_width", self.stages[0].width // 2)

    @property
    def widths(self) -> list[int]:
        return [s.width for s in self.stages]

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.stages]

    @property
    def switches(self) -> dict[str, Any]:
        """The design switches and their values."""
        return {name: getattr(self, name) for name in SWITCHES}

    def non_default_switches(self) -> dict[str, Any]:
        """The switches that differ from the paper's choice."""
        return {k: v for k, v in self.switches.items() if v != SWITCHES[k][0]}

    @property
    def attention_options(self) -> dict[str, bool]:
        """Keyword arguments of the attention modules."""
        return {"attention_bias": self.attention_bias, "talking_heads": self.talking_heads,
                "local_v": self.local_v}

    def plans(self, img_size: int = 224) -> tuple[StagePlan, ...]:
        """The stage layout (`stage_plans`) of this architecture at a training input side."""
        return stage_plans(img_size, self.stride_attention, self.downsampling)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
        """From `to_dict()` output, or `{"base": variant, ...overrides}`; unknown keys or values are
        errors that name them and list the accepted ones."""
        d = dict(d)
        accepted = ("base",) + _ARCH_KEYS + tuple(SWITCHES)
        unknown = sorted(set(d) - set(accepted))
        if unknown:
            raise ValueError(f"unknown architecture keys {unknown}; accepted: {', '.join(accepted)}")
        base = d.pop("base", None)
        if base is not None:
            if not isinstance(base, str):
                raise ValueError(f"architecture 'base' must be a variant name ({', '.join(VARIANTS)}), "
                                 f"not {base!r}")
            base_dict = resolve_arch(base).to_dict()
            if "expansions" in d and "depths" not in d:
                base_dict.pop("depths")
            if "widths" in d and "stem_width" not in d:
                base_dict.pop("stem_width")  # half the new first width
            d = {**base_dict, **d}
        missing = [k for k in ("widths", "expansions") if k not in d]
        if missing:
            raise ValueError(f"architecture needs {missing[0]!r}: widths (4 ints) and expansions "
                             "(4 lists, one ratio per block), or a 'base' variant")
        try:
            widths = [int(w) for w in d["widths"]]
            expansions = [tuple(e) for e in d["expansions"]]
            if not all(isinstance(r, (int, float)) and not isinstance(r, bool) for e in expansions for r in e):
                raise TypeError("expansion ratios must be numbers")
            attention = [int(a) for a in d.get("attention", [0, 0, 0, 0])]
            depths = [int(n) for n in d["depths"]] if "depths" in d else None
            stem_width, drop_path_rate = int(d.get("stem_width", 0)), float(d.get("drop_path_rate", 0.0))
        except (TypeError, ValueError):
            raise ValueError("architecture: widths and attention take 4 ints, expansions 4 lists of ratios "
                             "(one per block), stem_width an int and drop_path_rate a number; got "
                             f"{ {k: d[k] for k in _ARCH_KEYS if k in d} }") from None
        if not len(widths) == len(expansions) == len(attention):
            raise ValueError("widths, expansions and attention must each have one entry per stage")
        if depths is not None and depths != [len(e) for e in expansions]:
            raise ValueError(f"depths {depths} disagree with the number of expansion "
                             f"ratios per stage {[len(e) for e in expansions]}")
        stages = tuple(StageArch(w, e, a) for w, e, a in zip(widths, expansions, attention))
        switches = {k: d[k] for k in SWITCHES if k in d}
        return cls(stages, stem_width, drop_path_rate, **switches)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "depths": self.depths,
                "expansions": [list(s.expansions) for s in self.stages],
                "attention": [s.attention for s in self.stages],
                "stem_width": self.stem_width, "drop_path_rate": self.drop_path_rate, **self.switches}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class ClassifierForward:
    """`forward_features`, `forward_head` and `set_distilled_training` of a network with `stem`,
    `stages`, `norm`, `head`, `head_dist` and `distilled_training`: the plain model's, shared by
    the supernet (its elastic parts have the same names) and the latency table's head entry."""

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (head, distillation head) logits separately."""
        self.distilled_training = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x) if self.norm is not None else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x = x.mean((2, 3), keepdim=True).flatten(1)  # the 4-D global mean XNNPACK delegates
        if pre_logits:
            return x
        logits = self.head(x)
        if self.head_dist is None:
            return logits
        logits_dist = self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2


class EfficientFormerV2(ClassifierForward, nn.Module):
    """EfficientFormerV2 classifier or multi-scale backbone, built from an architecture.

    Args:
        arch: an `Arch`, a dict for `Arch.from_dict`, or a variant name ("s0", "s1", "s2", "l").
        num_classes: classes of the head (0: no head, `forward` returns pooled features).
        distillation: add the distillation head (DeiT); in eval the two heads are averaged.
        drop_path_rate: stochastic depth, rising linearly over blocks (None: the arch's value).
        drop_rate: dropout inside the FFNs.
        img_size: training input side; sets the grid of the attention-bias tables. Any input
            size works at run time.
        features_only: return the stage outputs (strides 4, 8, 16, 32) instead of logits.
        out_indices: which stages `features_only` returns.
        layer_scale_init: initial value of the layer scales.
    """

    def __init__(self, arch: Arch | Mapping[str, Any] | str, num_classes: int = 1000,
                 distillation: bool = True, drop_path_rate: float | None = None, drop_rate: float = 0.0,
                 img_size: int = 224, features_only: bool = False,
                 out_indices: Iterable[int] = (0, 1, 2, 3), layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        arch = resolve_arch(arch)
        self.arch = arch
        self.num_classes = num_classes
        self.distillation = distillation
        self.distilled_training = False
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise ValueError(f"out_indices must be stage indices in 0..3, got {self.out_indices}")
        self.img_size = img_size
        dpr_max = arch.drop_path_rate if drop_path_rate is None else drop_path_rate
        self.drop_path_rate = dpr_max
        total = sum(arch.depths)
        dpr = [dpr_max * i / max(total - 1, 1) for i in range(total)]

        stem = arch.stem_width
        self.stem = nn.Sequential()
        self.stem.add_module("conv1", ConvNorm(3, stem, 3, stride=2, padding=1))
        self.stem.add_module("act1", nn.GELU())
        self.stem.add_module("conv2", ConvNorm(stem, arch.widths[0], 3, stride=2, padding=1))
        self.stem.add_module("act2", nn.GELU())

        stages, prev, start = [], arch.widths[0], 0
        self.feature_info = []
        for s, plan in zip(arch.stages, arch.plans(img_size)):
            stages.append(EfficientFormerV2Stage(
                prev, s.width, s.expansions, s.attention, plan, drop_path=dpr[start:start + s.depth],
                drop=drop_rate, layer_scale_init=layer_scale_init, attention_options=arch.attention_options))
            prev, start = s.width, start + s.depth
            self.feature_info.append(dict(num_chs=s.width, reduction=plan.stride, module=f"stages.{plan.index}"))
        self.stages = nn.ModuleList(stages)
        self.num_features = prev

        if features_only:
            self.norm = self.head = self.head_dist = None
        else:
            self.norm = nn.BatchNorm2d(prev)
            self.head = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
            self.head_dist = (nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()) \
                if distillation else None
        self.apply(self._init_weights)
        self.register_load_state_dict_post_hook(_refresh_deploy_caches)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- timm-style interface ----------------------------------------------------------------
    def get_classifier(self) -> nn.Module | None:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head(s) for `num_classes` classes (fresh weights)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        self.num_classes = num_classes
        like = self.stem.conv1.conv.weight  # the new heads on the model's device and dtype
        self.head = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype) \
            if num_classes > 0 else nn.Identity()
        if self.head_dist is not None:
            self.head_dist = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype) \
                if num_classes > 0 else nn.Identity()
        for m in (self.head, self.head_dist):
            if m is not None:
                self._init_weights(m)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stages in `out_indices` (strides 4, 8, 16, 32)."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices) and self.features_only:
                break
        return outs

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    # -- deployment ----------------------------------------------------------------------------
    @torch.no_grad()
    def fuse(self) -> "EfficientFormerV2":
        """Deploy form, in place: BatchNorm folded into convolutions, layer scales folded into
        the last conv of their branch, attention biases precomputed for the training grid and the
        two heads merged into one. Outputs equal the unfused eval-mode model. Returns self.

        Every part with a deploy form has a `fuse()` that returns the module to use in its place
        (itself, changed in place), the convention of `timm.utils.reparameterize_model`, which
        gives the same outputs (it leaves the heads unmerged and the final norm unfolded)."""
        self.eval()
        for m in list(self.modules()):
            if m is not self and isinstance(m, (EfficientFormerV2Block, Attention2dDownsample, ConvNorm)):
                m.fuse()
        if self.head_dist is not None and isinstance(self.head, nn.Linear):
            merged = nn.Linear(self.num_features, self.num_classes, device=self.head.weight.device,
                               dtype=self.head.weight.dtype)
            merged.weight.copy_((self.head.weight + self.head_dist.weight) / 2)
            merged.bias.copy_((self.head.bias + self.head_dist.bias) / 2)
            self.head, self.head_dist = merged, None
        if isinstance(self.norm, nn.BatchNorm2d) and isinstance(self.head, nn.Linear):
            # the final norm is per channel and commutes with the mean pooling: fold it in the head
            scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
            shift = self.norm.bias - self.norm.running_mean * scale
            self.head.bias.add_(self.head.weight @ shift)
            self.head.weight.mul_(scale)
            self.norm = nn.Identity()
        return self

    @property
    def is_fused(self) -> bool:
        """Whether this model is in deploy form (`fuse()`d): no BatchNorm left but, when there is
        no head to fold it into (num_classes=0), the final norm."""
        headless = not isinstance(self.head, nn.Linear)
        return not any(isinstance(m, nn.BatchNorm2d) for name, m in self.named_modules()
                       if not (headless and name == "norm"))

    def refresh_deploy_caches(self) -> None:
        """Deploy form: compute the attention biases precomputed by `fuse()` anew from the current
        weights. Runs after every `load_state_dict` (a hook), so fused weights loaded into a fused
        model give that model's outputs."""
        for m in self.modules():
            if isinstance(m, (Attention2d, Attention2dDownsample)):
                m.refresh_cache()

    def shape_generic(self) -> "EfficientFormerV2":
        """Deploy form (after `fuse()`) whose code path does not depend on the input size: for
        graphs exported with symbolic height and width. Outputs are unchanged. Returns self."""
        attention = [m for m in self.modules() if isinstance(m, (Attention2d, Attention2dDownsample))]
        if not all(m.fused for m in attention):
            raise RuntimeError("shape_generic() applies to the deploy form: call fuse() first")
        for m in attention:
            m.shape_generic()
        return self


def _refresh_deploy_caches(model: EfficientFormerV2, incompatible_keys: Any) -> None:
    """`load_state_dict` post-hook: the deploy form's precomputed biases follow the loaded weights."""
    model.refresh_deploy_caches()


def resolve_arch(arch: Arch | Mapping[str, Any] | str) -> Arch:
    """An `Arch` from an Arch, a dict, or a variant name (s0, s1, s2, l or efficientformerv2_*)."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        key = arch.lower().removeprefix("efficientformerv2_")
        if key not in VARIANTS:
            raise ValueError(f"unknown EfficientFormerV2 variant {arch!r}; known: {sorted(VARIANTS)}")
        return VARIANTS[key]
    if isinstance(arch, Mapping):
        return Arch.from_dict(arch)
    raise TypeError(f"arch must be an Arch, a dict or a variant name, not {type(arch).__name__}")


# --------------------------------------------------------------------------------------------
# Variant table (paper Table 12; expansion ratios per block as released)
# --------------------------------------------------------------------------------------------
def _arch(widths: Sequence[int], expansions: Sequence[Sequence[float]], attention: Sequence[int],
          drop_path_rate: float) -> Arch:
    return Arch(tuple(StageArch(w, tuple(e), a) for w, e, a in zip(widths, expansions, attention)),
                drop_path_rate=drop_path_rate)


VARIANTS: dict[str, Arch] = {
    "s0": _arch([32, 48, 96, 176],
                [[4, 4], [4, 4], [4, 3, 3, 3, 4, 4], [4, 3, 3, 4]], [0, 0, 2, 2], 0.0),
    "s1": _arch([32, 48, 120, 224],
                [[4] * 3, [4] * 3, [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4]], [0, 0, 2, 2], 0.0),
    "s2": _arch([32, 64, 144, 288],
                [[4] * 4, [4] * 4, [4, 4] + [3] * 6 + [4] * 4, [4, 4, 3, 3, 3, 3, 4, 4]], [0, 0, 4, 4], 0.02),
    "l": _arch([40, 80, 192, 384],
               [[4] * 5, [4] * 5, [4] * 4 + [3] * 7 + [4] * 4, [4, 4, 4] + [3] * 4 + [4] * 3], [0, 0, 6, 6], 0.1),
}


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------
def efficientformerv2_s0(**kwargs: Any) -> EfficientFormerV2:
    """EfficientFormerV2-S0 (3.6M parameters, 0.40 GMACs at 224)."""
    return EfficientFormerV2(VARIANTS["s0"], **kwargs)


def efficientformerv2_s1(**kwargs: Any) -> EfficientFormerV2:
    """EfficientFormerV2-S1 (6.2M parameters, 0.65 GMACs at 224)."""
    return EfficientFormerV2(VARIANTS["s1"], **kwargs)


def efficientformerv2_s2(**kwargs: Any) -> EfficientFormerV2:
    """EfficientFormerV2-S2 (12.7M parameters, 1.25 GMACs at 224)."""
    return EfficientFormerV2(VARIANTS["s2"], **kwargs)


def efficientformerv2_l(**kwargs: Any) -> EfficientFormerV2:
    """EfficientFormerV2-L (26.3M parameters, 2.56 GMACs at 224)."""
    return EfficientFormerV2(VARIANTS["l"], **kwargs)
