"""EfficientFormerV2 ("Rethinking Vision Transformers for MobileNet Size and Speed", Li et al.).

The network built from an architecture description (`backbones.arch`: `Arch`, `VARIANTS`); the
four released variants and any searched network are built by the same code. The model follows
timm's model contract (`pretrained_cfg`, `forward_intermediates`, `prune_intermediate_layers`,
`reset_classifier`, `set_grad_checkpointing`, `group_matcher`, `no_weight_decay`), scripts with
TorchScript and traces with torch.fx and torch.compile.

Order of this file: blocks -> stage -> model; the attention token mixers are in
`backbones.layers`, the factories (one per `backbones.arch.RELEASED`), the registry and weight
loading in `backbones.builder`, which imports this file (never the reverse).
"""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from .arch import DOWNSAMPLING, HUB_TAG, Arch, StagePlan, find_variant, resolve_arch
from .dense_bias import set_bias_mode
from .layers import Attention2d, Attention2dDownsample, ConvNorm, LayerScale

__all__ = ["ConvMlp", "Downsample", "EfficientFormerV2Block", "EfficientFormerV2Stage", "ClassifierForward",
           "EfficientFormerV2", "pretrained_cfg_for"]


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
        self.grad_checkpointing = False  # set by the model's set_grad_checkpointing()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        # TorchScript cannot script the checkpoint function; without autograd it saves nothing
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class ClassifierForward:
    """`forward_features`, `forward_head` and `set_distilled_training` of a network with `stem`,
    `stages`, `norm`, `head`, `head_dist` and `distilled_training`: the plain model's, shared by
    the supernet (its elastic parts have the same names) and the latency table's head entry.
    `global_pool` is "avg" (timm's name) or "" (no pooling: `forward_head` returns the map)."""

    global_pool = "avg"  # a class default, so the supernet and the latency table share it

    def set_distilled_training(self, enable: bool = True) -> None:
        """In training mode, return (head, distillation head) logits separately."""
        self.distilled_training = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x) if self.norm is not None else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        if self.global_pool == "avg":
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
        bias_mode: "offset" (default: the attention-bias tables are resampled in offset space to
            the grid of the input) or "dense" (the official detection/segmentation backbones'
            bias: tables at the grids of `img_size`, then the dense training resolution, resized
            bicubically as N x N matrices; `backbones.dense_bias`).
    """

    __jit_unused_properties__ = ["is_fused"]  # Python-side state, not part of a scripted model

    def __init__(self, arch: Arch | Mapping[str, Any] | str, num_classes: int = 1000,
                 distillation: bool = True, drop_path_rate: float | None = None, drop_rate: float = 0.0,
                 img_size: int = 224, features_only: bool = False,
                 out_indices: Iterable[int] = (0, 1, 2, 3), layer_scale_init: float = 1e-5,
                 bias_mode: str = "offset") -> None:
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
        self.num_features = self.head_hidden_size = prev
        self.global_pool = "avg"
        # the stages `forward` returns in features_only mode, as TorchScript-typed attributes
        self._take_indices: List[int] = list(self.out_indices)
        self._last_index = max(self.out_indices)
        # timm's data and weights configuration (`timm.data.resolve_model_data_config`)
        self.pretrained_cfg = self.default_cfg = pretrained_cfg_for(arch, img_size, distillation)

        if features_only:
            self.norm = self.head = self.head_dist = None
        else:
            self.norm = nn.BatchNorm2d(prev)
            self.head = nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()
            self.head_dist = (nn.Linear(prev, num_classes) if num_classes > 0 else nn.Identity()) \
                if distillation else None
        self.apply(self._init_weights)
        if bias_mode != "offset":
            set_bias_mode(self, bias_mode, img_size)
        self.register_load_state_dict_post_hook(_refresh_deploy_caches)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- timm's model contract ------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module | None:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head(s) for `num_classes` classes (fresh weights, on the model's device and
        dtype); 0 leaves identities (`forward` returns pooled features). `global_pool`: "avg" or
        "" (no pooling; with `num_classes=0` the model returns the final feature map)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', not {global_pool!r}")
            self.global_pool = global_pool
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
                m.train(self.training)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (less
        memory, the same gradients; the stem and the downsampling layers are not recomputed)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning rates (timm's `group_parameters`): the stem,
        then one group per stage, the final norm last; the heads fall into the last group. timm's
        grouping of this network, fine or coarse alike."""
        return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)", None), (r"^norm", (99999,))]}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory exempts from weight decay besides the 1-D ones: the
        attention-bias tables, as in timm's model. (The Lightning recipe follows the official
        training instead and decays them: `classification.optim`.)"""
        return {name for name, _ in self.named_parameters() if "attention_biases" in name}

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs, timm's semantics.

        Args:
            x: images (B, 3, H, W), any H and W.
            indices: stages to return: None all, an int n the last n, a list those (negative
                counts from the end).
            norm: apply the final norm to the last stage's output (where the model has one).
            stop_early: run no stage after the last one asked for.
            output_fmt: "NCHW" only.
            intermediates_only: return only the list of stage outputs.
        Returns:
            the list of stage outputs (strides 4, 8, 16, 32), or (final features, that list); the
            final features are normed when the last stage ran.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', not {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        final = len(self.stages) - 1
        x, intermediates = self._run_stages(x, take_indices, max_index if stop_early else final, norm)
        if intermediates_only:
            return intermediates
        if not stop_early or max_index == final:
            x = self._final_norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of `indices` (timm's semantics); `prune_norm` replaces
        the final norm by an identity, `prune_head` the heads (`reset_classifier(0, '')`). A
        features_only model then returns the `indices` stages. Returns the absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm and self.norm is not None:
            self.norm = nn.Identity()
        if prune_head and not self.features_only:
            self.reset_classifier(0, "")
        if self.features_only:
            self.out_indices = tuple(take_indices)
            self._take_indices, self._last_index = list(take_indices), max_index
        return take_indices

    def _run_stages(self, x: torch.Tensor, take_indices: List[int], last: int,
                    norm: bool) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Stem and the stages up to `last`; the outputs of `take_indices` (the last stage's
        normed if `norm`)."""
        x = self.stem(x)
        final = len(self.stages) - 1
        intermediates: List[torch.Tensor] = []
        # no break and no slicing: TorchScript unrolls the loop over the stages
        for i, stage in enumerate(self.stages):
            if i <= last:
                x = stage(x)
                if i in take_indices:
                    intermediates.append(self._final_norm(x) if norm and i == final else x)
        return x, intermediates

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        return self.norm(x)

    def forward(self, x: torch.Tensor):
        if self.head is None:  # features_only (TorchScript resolves the test statically)
            return self._run_stages(x, self._take_indices, self._last_index, False)[1]
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


def pretrained_cfg_for(arch: Arch | Mapping[str, Any] | str, img_size: int = 224,
                       distillation: bool = True) -> dict[str, Any]:
    """timm's `pretrained_cfg` of a network: the eval transform of the paper (resize the shorter
    side to img_size / 0.95, bicubic, centre crop, ImageNet mean and std), the names of the
    classifier and first convolution, and, for a released variant, its hub weights
    (`hf_hub_id`, 1000 ImageNet classes). `input_size` is the training side `img_size`; any
    input size runs (`fixed_input_size` False)."""
    arch = resolve_arch(arch)
    variant = find_variant(arch)
    return {
        "url": "",
        "hf_hub_id": variant.hf_hub_id if variant is not None else None,
        "architecture": variant.model_name if variant is not None else None,
        "tag": HUB_TAG if variant is not None else None,
        "num_classes": 1000,
        "input_size": (3, img_size, img_size),
        "pool_size": None,
        "fixed_input_size": False,
        "crop_pct": 0.95,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "classifier": ("head", "head_dist") if distillation else "head",
        "first_conv": "stem.conv1.conv",
        "license": "apache-2.0",
    }
